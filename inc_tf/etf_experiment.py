r"""Command: train with the top layers fixed to simplex ETFs, for several counts.

Reproduces Fig. 7 of Rangamani et al., "Feature Learning in Deep Classifiers
through Intermediate Neural Collapse" (ICML 2023): one model is trained per
value of `--etf_layer_counts`, with that many top weight layers fixed to
simplex ETFs (`inc_tf.etf.FixTopLayersToETF`), and the final accuracies are
plotted against the number of layers trained.

    python -m inc_tf.etf_experiment \
        --flagfile=configs/etf_fashion_mnist_mlp.cfg --workdir=runs/etf_fmnist

The command takes every flag of `python -m inc_tf.main` (`--etf_layers` is
replaced per run) plus:

- `--etf_layer_counts`: comma-separated numbers of fixed top layers, e.g.
  `0,1,2,3`. 0 is the unconstrained network.
- `--unconstrained_onset`: collapse onset (probe point index) of the
  unconstrained network, drawn as a vertical line. Defaults to the final
  training-split onset of the `etf_0` run when 0 is in the list.

Layers trained = total weight layers (Dense and Conv2D, classifier included)
- etf_layers. Probe point `l` is the input of weight layer `l + 1`, so with
`layers trained >= onset` every fixed layer consumes features that were
collapsed in the unconstrained network: the vertical line sits at
`layers trained = onset`.

Run `n` trains in `<workdir>/etf_<n>/`, a full run directory. Running the
command again resumes unfinished runs from their checkpoints and returns
finished ones from their files without training. After each run the command
rewrites, in `<workdir>`:

- `etf_summary.jsonl`: one object per run: `etf_layers`, `layers_trained`,
  `total_weight_layers`, `final_train_accuracy`, `final_test_accuracy`,
  `diverged`, `onset`, `workdir`.
- `etf_summary.txt`: the same as a table.
- `etf_accuracy.png`, `etf_accuracy.pdf`: accuracy against layers trained.
"""

import dataclasses
import json
import math
import os
import sys

from absl import app
from absl import flags
from absl import logging
import matplotlib
from matplotlib import figure as mpl_figure

from inc_tf import flags as flags_lib
from inc_tf import plots
from inc_tf import records

flags_lib.define_flags()

SUMMARY_JSONL = "etf_summary.jsonl"
SUMMARY_TABLE = "etf_summary.txt"
FIGURE_NAME = "etf_accuracy"
ONSET_GID = "unconstrained_onset"
ONSET_COLOR = plots.ONSET_COLOR

SPLIT_COLORS = {"train": "tab:blue", "test": "tab:orange"}
FIGURE_SIZE = (3.5, 2.4)  # Inches: one paper column.
SAVE_DPI = plots.SAVE_DPI

_ETF_LAYER_COUNTS = flags.DEFINE_list(
    "etf_layer_counts", None,
    "Comma-separated numbers of top weight layers fixed to simplex ETFs, one "
    "run each, e.g. 0,1,2,3,4,5,6,7,8,9,10 for the paper's 10 x 1024 MLP. 0 is "
    "the unconstrained network. Each value must be an integer >= 0.")
_UNCONSTRAINED_ONSET = flags.DEFINE_integer(
    "unconstrained_onset", None,
    "Collapse onset (probe point index, 0 = network input) of the "
    "unconstrained network, marked with a vertical line at that many layers "
    "trained. Defaults to the final training-split onset of the etf_0 run "
    "when 0 is in --etf_layer_counts.", lower_bound=0)


def parse_layer_counts(values):
  """Parse `--etf_layer_counts` into sorted unique integers.

  Args:
    values: strings or integers, e.g. `["0", "2", "1"]`.

  Returns:
    A tuple of distinct integers >= 0 in increasing order.

  Raises:
    ValueError: if the list is empty or a value is not an integer >= 0.
  """
  if not values:
    raise ValueError(
        "--etf_layer_counts is missing or empty. Pass comma-separated numbers "
        "of fixed top layers, e.g. --etf_layer_counts=0,1,2.")
  counts = set()
  for value in values:
    try:
      count = int(str(value).strip())
    except ValueError:
      count = -1
    if count < 0:
      raise ValueError(
          f"Invalid --etf_layer_counts entry {value!r}: each entry must be an "
          f"integer >= 0, e.g. --etf_layer_counts=0,1,2.")
    counts.add(count)
  return tuple(sorted(counts))


def check_layer_counts(config, layer_counts, input_features=None):
  """Reject counts that cannot work for the configured model before training.

  Only Dense layers have a simplex ETF, so a ConvNet or ResNet can fix only
  its classifier. An MLP with `depth` hidden layers has `depth + 1` weight
  layers. Its first layer is square only when the images have `width`
  pixels, so a count that fixes it is checked against `input_features`
  when given (`run_sweep` loads the data for that).

  Args:
    config: the base `RunConfig`.
    layer_counts: the parsed counts.
    input_features: pixels per image (height x width x channels) of the
      MLP's input, or None to leave the first layer unchecked.

  Raises:
    ValueError: if a count exceeds what the model allows.
  """
  if config.model == "mlp":
    limit = config.depth + 1
    reason = f"an MLP of depth {config.depth} has {limit} weight layers"
  else:
    limit = 1
    reason = (f"{config.model} has Conv2D layers below its classifier, and "
              f"only Dense layers can be fixed to simplex ETFs")
  if (config.model == "mlp" and input_features is not None
      and input_features != config.width):
    limit = config.depth
    reason = (f"fixing all {config.depth + 1} weight layers of the MLP "
              f"includes its first layer, whose kernel is {input_features} x "
              f"{config.width} for {config.dataset} images, and only square "
              f"hidden kernels have a simplex ETF")
  too_many = [count for count in layer_counts if count > limit]
  if too_many:
    raise ValueError(
        f"Invalid --etf_layer_counts {too_many}: {reason}. Pass counts of at "
        f"most {limit}.")


def run_config_for(base_config, etf_layers):
  """Return the `RunConfig` of the run with `etf_layers` fixed layers."""
  return dataclasses.replace(
      base_config, etf_layers=etf_layers,
      workdir=os.path.join(base_config.workdir, f"etf_{etf_layers}"))


def summary_record(etf_layers, workdir, result):
  """Build the summary of one run from its `inc_tf.train.RunResult`.

  Args:
    etf_layers: number of fixed top layers.
    workdir: the run's directory.
    result: the `RunResult`, or None when the run diverged.

  Returns:
    A JSON-ready dict with the keys listed in the module docstring.
    `layers_trained` and `total_weight_layers` are None for a diverged run
    until `fill_layers_trained` fills them in from the other runs.
  """
  if result is None:
    return {
        "etf_layers": etf_layers, "layers_trained": None,
        "total_weight_layers": None, "final_train_accuracy": None,
        "final_test_accuracy": None, "diverged": True, "onset": None,
        "workdir": workdir,
    }
  return {
      "etf_layers": etf_layers,
      "layers_trained": result.total_weight_layers - etf_layers,
      "total_weight_layers": result.total_weight_layers,
      "final_train_accuracy": _finite_or_none(result.final_train_accuracy),
      "final_test_accuracy": _finite_or_none(result.final_test_accuracy),
      "diverged": bool(result.diverged),
      "onset": result.onset,
      "workdir": workdir,
  }


def _finite_or_none(value):
  if value is None or not math.isfinite(value):
    return None
  return float(value)


def fill_layers_trained(summaries):
  """Fill `layers_trained` of diverged runs from the other runs' total.

  All runs of a sweep share one model, so one known total applies to all.

  Args:
    summaries: list of summary dicts; changed in place.
  """
  totals = {s["total_weight_layers"] for s in summaries
            if s["total_weight_layers"] is not None}
  if len(totals) != 1:
    return
  total = totals.pop()
  for summary in summaries:
    if summary["total_weight_layers"] is None:
      summary["total_weight_layers"] = total
      summary["layers_trained"] = total - summary["etf_layers"]


def unconstrained_onset(summaries, onset_override=None):
  """Return the onset to mark: `onset_override`, else the `etf_layers == 0` run's onset.

  Args:
    summaries: list of summary dicts.
    onset_override: the `--unconstrained_onset` value, or None.

  Returns:
    A probe point index, or None when neither is known.
  """
  if onset_override is not None:
    return onset_override
  for summary in summaries:
    if summary["etf_layers"] == 0:
      return summary["onset"]
  return None


def format_table(summaries, onset=None):
  """Format the summaries as a fixed-width text table, one row per run.

  Args:
    summaries: list of summary dicts, in any order; rows are sorted by
      decreasing layers trained (increasing `etf_layers`).
    onset: the unconstrained onset to state under the table, or None.

  Returns:
    The table as a string ending in a newline.
  """
  header = ("etf_layers", "layers_trained", "train_accuracy", "test_accuracy",
            "note")
  rows = []
  for summary in sorted(summaries, key=lambda s: s["etf_layers"]):
    if summary["diverged"]:
      note = "diverged"
    elif summary["etf_layers"] == 0:
      note = "unconstrained"
    else:
      note = ""
    rows.append((
        str(summary["etf_layers"]),
        _format_optional(summary["layers_trained"], "d"),
        _format_optional(summary["final_train_accuracy"], ".4f"),
        _format_optional(summary["final_test_accuracy"], ".4f"),
        note))

  widths = [max(len(row[i]) for row in rows + [header])
            for i in range(len(header))]
  lines = ["  ".join(cell.rjust(width) for cell, width in
                     zip(row[:-1], widths)) + ("  " + row[-1] if row[-1]
                                               else "")
           for row in [header] + rows]
  unconstrained = [s for s in summaries
                   if s["etf_layers"] == 0 and not s["diverged"]]
  if onset is None and unconstrained:
    lines.append("Unconstrained collapse onset: none, because the etf_0 run "
                 "has no collapsed probe point at its final epoch.")
  elif onset is None:
    lines.append("Unconstrained collapse onset: unknown (no etf_0 run and no "
                 "--unconstrained_onset).")
  else:
    lines.append(f"Unconstrained collapse onset: probe point {onset}; runs "
                 f"with layers_trained >= {onset} fix only layers whose input "
                 f"was collapsed.")
  return "\n".join(line.rstrip() for line in lines) + "\n"


def _format_optional(value, spec):
  return "-" if value is None else format(value, spec)


def draw_figure(summaries, onset=None, title=None):
  """Draw final train and test accuracy against the number of layers trained.

  Args:
    summaries: list of summary dicts. Runs without a value (diverged) are
      left out of the lines and named in the legend.
    onset: the unconstrained collapse onset (probe point index), drawn as a
      vertical line at that many layers trained, or None for no line.
    title: axes title, or None.

  Returns:
    A `matplotlib.figure.Figure`. The onset line has gid `ONSET_GID`, and
    each accuracy line has the split ("train", "test") as its label.
  """
  with matplotlib.rc_context(plots.STYLE):
    return _draw_figure(summaries, onset, title)


def _draw_figure(summaries, onset, title):
  figure = mpl_figure.Figure(figsize=FIGURE_SIZE, layout="constrained")
  ax = figure.add_subplot()
  ordered = sorted((s for s in summaries if s["layers_trained"] is not None),
                   key=lambda s: s["layers_trained"])

  for split in ("train", "test"):
    points = [(s["layers_trained"], s[f"final_{split}_accuracy"])
              for s in ordered if s[f"final_{split}_accuracy"] is not None]
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, ys, marker="o", markersize=3, linewidth=1,
              color=SPLIT_COLORS[split], label=split)

  diverged = [s["layers_trained"] for s in ordered if s["diverged"]]
  if diverged:
    ax.plot([], [], linestyle="none", marker="x", color="0.4",
            label="diverged: " + ", ".join(map(str, diverged)))
    for x in diverged:
      ax.axvline(x, color="0.6", linewidth=0.6, linestyle=":")

  if onset is not None:
    ax.axvline(onset, color=ONSET_COLOR, linewidth=1.2, gid=ONSET_GID,
               label=f"unconstrained onset ({onset})")

  ax.set_xlabel("layers trained")
  ax.set_ylabel("final accuracy")
  if ordered:
    ax.set_xticks(sorted({s["layers_trained"] for s in ordered}))
  ax.legend(loc="best")
  if title:
    ax.set_title(title)
  return figure


def write_summary(workdir, summaries, onset=None, title=None):
  """Write `etf_summary.jsonl`, `etf_summary.txt` and the figure to `workdir`.

  Each file is replaced as a whole, so rerunning the command leaves one
  record per run.

  Args:
    workdir: the sweep's directory.
    summaries: list of summary dicts.
    onset: the unconstrained collapse onset, or None.
    title: figure title, or None.

  Returns:
    The table text.
  """
  os.makedirs(workdir, exist_ok=True)
  ordered = sorted(summaries, key=lambda s: s["etf_layers"])
  lines = "".join(json.dumps(s, allow_nan=False) + "\n" for s in ordered)
  records.write_text_atomic(os.path.join(workdir, SUMMARY_JSONL), lines)
  table = format_table(ordered, onset)
  records.write_text_atomic(os.path.join(workdir, SUMMARY_TABLE), table)

  figure = draw_figure(ordered, onset, title)
  with matplotlib.rc_context(plots.STYLE):
    for extension in ("png", "pdf"):
      figure.savefig(os.path.join(workdir, f"{FIGURE_NAME}.{extension}"),
                     dpi=SAVE_DPI)
  return table


def run_sweep(base_config, layer_counts, onset_override=None, strategy=None,
              flags_text_for=None):
  """Train one run per count and rewrite the summary after each.

  Args:
    base_config: the `RunConfig` shared by every run; its `workdir` is the
      sweep's directory and its `etf_layers` is ignored.
    layer_counts: sorted distinct counts of fixed top layers.
    onset_override: the `--unconstrained_onset` value, or None.
    strategy: a `tf.distribute.Strategy` for every run. Defaults to
      `train.default_strategy()`, the process's one MirroredStrategy.
    flags_text_for: function from a run's `RunConfig` to the text of its
      `flags.txt`, or None to write none.

  Returns:
    The list of summary dicts, sorted by `etf_layers`.
  """
  # Imported here so that --help and the table and figure functions do not
  # start TensorFlow.
  from inc_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from inc_tf import train  # pylint: disable=g-import-not-at-top

  check_layer_counts(base_config, layer_counts)
  if base_config.model == "mlp" and max(layer_counts) > base_config.depth:
    # Otherwise the count that fixes the first layer would fail only when
    # its own run starts, possibly hours after the first one.
    splits = data_lib.load_dataset(
        base_config.dataset, data_dir=base_config.data_dir,
        examples_per_class=1, seed=base_config.seed,
        pad_to=train.pad_size_for(base_config.model, base_config.dataset))
    check_layer_counts(base_config, layer_counts,
                       input_features=math.prod(splits.image_shape))
  if strategy is None:
    strategy = train.default_strategy()
  summaries = []
  for count in layer_counts:
    config = run_config_for(base_config, count)
    logging.info("ETF sweep: run %d of %d, etf_layers=%d, in %s.",
                 len(summaries) + 1, len(layer_counts), count, config.workdir)
    flags_text = flags_text_for(config) if flags_text_for else None
    try:
      result = train.run(config, strategy=strategy, flags_text=flags_text)
    except train.NonFiniteLossError as e:
      logging.warning("ETF sweep: the run with etf_layers=%d diverged: %s",
                      count, e)
      result = None
    summaries.append(summary_record(count, config.workdir, result))
    fill_layers_trained(summaries)
    write_summary(base_config.workdir, summaries,
                  unconstrained_onset(summaries, onset_override),
                  title=_title(base_config))
  return summaries


def _title(config):
  return (f"{config.dataset}, {config.model} {config.depth} x {config.width}, "
          f"{config.epochs} epochs")


def run_flags_text(config):
  """Return a run's flags.txt: the parsed flags with its own `--etf_layers`."""
  lines = [line for line in flags_lib.flags_text(config).splitlines()
           if not line.startswith("--etf_layers=")]
  lines.append(f"--etf_layers={config.etf_layers}")
  return "\n".join(lines) + "\n"


def main(argv):
  # User errors end in one "Error: ..." line on stderr and exit status 1, as
  # in `inc_tf.main`.
  if len(argv) > 1:
    sys.exit(f"Error: unexpected arguments {' '.join(argv[1:])!r}. Pass "
             "settings as --name=value flags; see --help.")
  try:
    base_config = flags_lib.config_from_flags(sys.argv)
    layer_counts = parse_layer_counts(_ETF_LAYER_COUNTS.value)
    check_layer_counts(base_config, layer_counts)
  except ValueError as e:
    sys.exit(f"Error: {e}")
  if base_config.etf_layers:
    logging.warning("Ignored --etf_layers=%d: this command sets it per run "
                    "from --etf_layer_counts.", base_config.etf_layers)

  try:
    summaries = run_sweep(base_config, layer_counts,
                          onset_override=_UNCONSTRAINED_ONSET.value,
                          flags_text_for=run_flags_text)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"Error: {e}")

  onset = unconstrained_onset(summaries, _UNCONSTRAINED_ONSET.value)
  print(format_table(summaries, onset), end="")
  print(f"Wrote {SUMMARY_JSONL}, {SUMMARY_TABLE} and {FIGURE_NAME}.png/.pdf "
        f"to {base_config.workdir}.")
  return 0


if __name__ == "__main__":
  app.run(main)
