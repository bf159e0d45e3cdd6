r"""Command: train one run per learning rate and measure the best one.

Rangamani et al. (ICML 2023, Appendix A) choose each model's learning rate
with a logarithmic sweep between 1e-4 and 0.25 and measure the run with the
best final-epoch test accuracy. This command does the same:

    python -m inc_tf.sweep --flagfile=configs/fashion_mnist_mlp.cfg \
        --workdir=runs/sweep_fmnist_mlp --sweep_num_rates=8

The command takes every flag of `python -m inc_tf.main` (`--lr` is replaced
per member) plus the `--sweep_*` flags below. The rates are
`np.geomspace(sweep_lr_min, sweep_lr_max, sweep_num_rates)`: log-uniformly
spaced, both ends included, the same on every call, so the member index `i`
names the same rate in every process of a cluster job. The default 25 rates
over [1e-4, 0.25] include, to the digits published, the reference rates
0.005 (SVHN MLP), 0.0096 (SVHN ResNet-34), 0.0184 (MNIST ResNet-18) and
0.094 (Fashion-MNIST ResNet-18).

Member `i` trains in `<workdir>/lr_<i>_<rate:.3g>/`, a full run directory.
A member whose loss becomes NaN or infinite is recorded as diverged in its
`diverged.json`, and the sweep goes on. Running the command again resumes
unfinished members from their checkpoints, returns finished ones without
training, and skips diverged ones (delete `diverged.json` to retry one).

With `--sweep_measure_all=false` (the default) members measure only epoch 0
(if `--measure_epochs` lists it) and the final epoch. That is enough to rank
them and to draw the final-epoch figures. `--sweep_measure_all` keeps every
epoch of `--measure_epochs`. The summary prints the command that retrains
the best rate with every measured epoch.

On a cluster, `--sweep_index=i` trains only member `i` (one array task each)
and `--collect` builds the summary from the files of the members, listing
those not finished yet as missing or unfinished. Without either flag the
command trains every member in order.

Outputs in `<workdir>`, rewritten after each member and by `--collect`:

- `sweep_summary.jsonl`: one object per member: `index`, `lr`, `status`
  ("finished", "diverged", "unfinished" or "missing"), `epochs_completed`,
  `final_train_accuracy`, `final_test_accuracy`, `onset` (final-epoch
  training-split collapse onset), `best`, `workdir`.
- `sweep_summary.txt`: the same as a table, naming the best member: the
  highest final-epoch test accuracy among finished members, the smaller rate
  on a tie.

Once every member has finished or diverged, the best member's figures are
drawn into its `figures/` folder and its final measurement table is printed.
"""

import dataclasses
import json
import math
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from inc_tf import flags as flags_lib
from inc_tf import records

flags_lib.define_flags()

SUMMARY_JSONL = "sweep_summary.jsonl"
SUMMARY_TABLE = "sweep_summary.txt"
DIVERGED_FILE = "diverged.json"

FINISHED = "finished"
DIVERGED = "diverged"
UNFINISHED = "unfinished"
MISSING = "missing"

_LR_MIN = flags.DEFINE_float(
    "sweep_lr_min", 1e-4,
    "Smallest learning rate of the sweep (peak rate after warm-up, as "
    "--lr). Range: > 0 and <= --sweep_lr_max.", lower_bound=0.0)
_LR_MAX = flags.DEFINE_float(
    "sweep_lr_max", 0.25,
    "Largest learning rate of the sweep. Range: >= --sweep_lr_min.",
    lower_bound=0.0)
_NUM_RATES = flags.DEFINE_integer(
    "sweep_num_rates", 25,
    "Number of learning rates, log-uniformly spaced from --sweep_lr_min to "
    "--sweep_lr_max with both ends included; 1 runs --sweep_lr_min only. "
    "The default 25 over [1e-4, 0.25] contains 0.005, 0.0096, 0.0184 and "
    "0.094, the paper's rates of the SVHN MLP and the ResNets. Range: >= 1.",
    lower_bound=1)
_INDEX = flags.DEFINE_integer(
    "sweep_index", None,
    "Train only the member with this 0-based index, as one task of a "
    "cluster array job, and write no summary. Range: 0 .. "
    "--sweep_num_rates - 1. Default: train every member.", lower_bound=0)
_COLLECT = flags.DEFINE_bool(
    "collect", False,
    "Train nothing: build the summary from the members' run directories, "
    "after the --sweep_index tasks have run.")
_MEASURE_ALL = flags.DEFINE_bool(
    "sweep_measure_all", False,
    "Measure every member at each epoch of --measure_epochs. When false, "
    "members measure only epoch 0 (if listed) and the final epoch.")

flags.register_validator(
    "sweep_lr_min", lambda value: value > 0,
    message="--sweep_lr_min must be greater than 0.")
flags.register_validator(
    "sweep_lr_max", lambda value: value > 0,
    message="--sweep_lr_max must be greater than 0.")
flags.register_multi_flags_validator(
    ["sweep_lr_min", "sweep_lr_max"],
    lambda values: values["sweep_lr_min"] <= values["sweep_lr_max"],
    message="--sweep_lr_min must not exceed --sweep_lr_max.")


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of the sweep.

  Attributes:
    index: 0-based position in the sweep, in increasing rate order.
    lr: Peak learning rate.
    config: The member's `RunConfig`.
  """

  index: int
  lr: float
  config: object


def learning_rates(lr_min, lr_max, num_rates):
  """Return `num_rates` log-uniformly spaced rates from `lr_min` to `lr_max`.

  Args:
    lr_min: Smallest rate, > 0.
    lr_max: Largest rate, >= `lr_min`.
    num_rates: Number of rates, >= 1. With 1, the result is `[lr_min]`.

  Returns:
    A list of Python floats in increasing order, both ends included.

  Raises:
    ValueError: An argument is out of range.
  """
  if not lr_min > 0 or not lr_max >= lr_min:
    raise ValueError(
        f"Invalid learning-rate range [{lr_min}, {lr_max}]: pass "
        "0 < --sweep_lr_min <= --sweep_lr_max.")
  if num_rates < 1:
    raise ValueError(
        f"Invalid --sweep_num_rates {num_rates}: pass at least 1.")
  return [float(rate) for rate in np.geomspace(lr_min, lr_max, num_rates)]


def member_dir(workdir, index, lr):
  """Return `<workdir>/lr_<index>_<lr:.3g>`, the run directory of a member."""
  return os.path.join(workdir, f"lr_{index}_{lr:.3g}")


def members(base_config, rates, measure_all=False):
  """Return the `Member` of each rate.

  Args:
    base_config: The `RunConfig` shared by every member; its `workdir` is the
      sweep's directory and its `lr` is replaced.
    rates: Learning rates, as from `learning_rates`.
    measure_all: Whether members measure every epoch of
      `base_config.measure_epochs`; when false they keep only epoch 0 (the
      final epoch is always measured).

  Returns:
    A list of `Member`, in the order of `rates`.
  """
  measure_epochs = base_config.measure_epochs
  if not measure_all:
    measure_epochs = tuple(e for e in measure_epochs if e == 0)
  result = []
  for index, rate in enumerate(rates):
    config = dataclasses.replace(
        base_config, lr=rate, measure_epochs=measure_epochs,
        workdir=member_dir(base_config.workdir, index, rate))
    result.append(Member(index=index, lr=rate, config=config))
  return result


def member_flags_text(config):
  """Return a member's flags.txt: the parsed flags with its own rate.

  `--lr` and `--measure_epochs` are replaced by the member's values, so the
  file reruns exactly that member with `python -m inc_tf.main`.
  """
  replaced = ("--lr=", "--measure_epochs=")
  lines = [line for line in flags_lib.flags_text(config).splitlines()
           if not line.startswith(replaced)]
  lines.append(f"--lr={config.lr!r}")
  lines.append("--measure_epochs=" + ",".join(map(str, config.measure_epochs)))
  return "\n".join(lines) + "\n"


# Member state, read from the run directory alone so that a sweep in one
# process and `--collect` after many processes report the same rows.


def _comparable(config_dict, resumable_fields):
  return {name: value for name, value in config_dict.items()
          if name not in resumable_fields}


def write_diverged_marker(config, message):
  """Record in the member's directory that its loss became non-finite.

  Args:
    config: The member's `RunConfig`.
    message: The `NonFiniteLossError` message.
  """
  os.makedirs(config.workdir, exist_ok=True)
  marker = {"lr": config.lr, "message": message,
            "config": records.to_json_value(dataclasses.asdict(config))}
  records.write_text_atomic(os.path.join(config.workdir, DIVERGED_FILE),
                json.dumps(marker, indent=2, sort_keys=True) + "\n")


def read_diverged_marker(workdir):
  """Return the parsed `diverged.json` of a member, or None if it has none."""
  path = os.path.join(workdir, DIVERGED_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(
          f"{path} is not valid JSON ({e}). Delete it to retrain the "
          "member.") from e


def check_marker_matches(marker, config, resumable_fields):
  """Reject a diverged marker written by a member with other settings.

  Args:
    marker: A parsed `diverged.json`.
    config: The member's current `RunConfig`.
    resumable_fields: Names of fields that may differ, as
      `inc_tf.train.RESUMABLE_FIELDS`.

  Raises:
    ValueError: A setting that changes training differs; the message names
      it and the file to delete.
  """
  stored = _comparable(marker.get("config", {}), resumable_fields)
  current = _comparable(
      records.to_json_value(dataclasses.asdict(config)), resumable_fields)
  differences = sorted(name for name in current
                       if current[name] != stored.get(name))
  if differences:
    details = ", ".join(f"{name}: {stored.get(name)!r} there, "
                        f"{current[name]!r} now" for name in differences)
    path = os.path.join(config.workdir, DIVERGED_FILE)
    raise ValueError(
        f"{path} records a diverged run with other settings ({details}). "
        "Pass a new --workdir, or delete the member's directory to start it "
        "over.")


def _final_onset(workdir, epoch):
  onsets = [r for r in records.read_jsonl(os.path.join(workdir, "onset.jsonl"))
            if r.get("split") == "train" and r.get("epoch") == epoch]
  return onsets[-1].get("onset") if onsets else None


def _finite_or_none(value):
  if value is None or not math.isfinite(value):
    return None
  return float(value)


def member_summary(member):
  """Build a member's summary row from its run directory.

  Args:
    member: A `Member`.

  Returns:
    A JSON-ready dict with the keys listed in the module docstring; `best`
    is False until `mark_best` runs.
  """
  workdir = member.config.workdir
  row = {"index": member.index, "lr": member.lr, "status": MISSING,
         "epochs_completed": 0, "final_train_accuracy": None,
         "final_test_accuracy": None, "onset": None, "best": False,
         "workdir": workdir}

  history = records.read_jsonl(os.path.join(workdir, "history.jsonl"))
  if history:
    last = max(history, key=lambda r: r["epoch"])
    row["epochs_completed"] = int(last["epoch"])
    row["final_train_accuracy"] = _finite_or_none(last.get("train_accuracy"))
    row["final_test_accuracy"] = _finite_or_none(last.get("test_accuracy"))

  if read_diverged_marker(workdir) is not None:
    row["status"] = DIVERGED
  elif row["epochs_completed"] >= member.config.epochs:
    row["status"] = FINISHED
    row["onset"] = _final_onset(workdir, member.config.epochs)
  elif history:
    row["status"] = UNFINISHED
  return row


def mark_best(rows):
  """Set `best` on the finished row with the highest final test accuracy.

  Ties go to the lower index, the smaller rate.

  Args:
    rows: Summary rows; changed in place.

  Returns:
    The best row, or None when no member has finished with a test accuracy.
  """
  best = None
  for row in sorted(rows, key=lambda r: r["index"]):
    row["best"] = False
    if row["status"] != FINISHED or row["final_test_accuracy"] is None:
      continue
    if best is None or row["final_test_accuracy"] > best["final_test_accuracy"]:
      best = row
  if best is not None:
    best["best"] = True
  return best


def format_table(rows):
  """Format the summary rows as a fixed-width table naming the best member.

  Args:
    rows: Summary rows after `mark_best`.

  Returns:
    The table as a string ending in a newline.
  """
  header = ("index", "lr", "train_accuracy", "test_accuracy", "epochs",
            "status", "workdir")
  cells = [header]
  for row in sorted(rows, key=lambda r: r["index"]):
    status = row["status"] + (" (best)" if row["best"] else "")
    cells.append((
        str(row["index"]), f"{row['lr']:.4g}",
        _format_optional(row["final_train_accuracy"]),
        _format_optional(row["final_test_accuracy"]),
        str(row["epochs_completed"]), status, row["workdir"]))

  widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
  lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths))
           .rstrip() for line in cells]

  best = [row for row in rows if row["best"]]
  if best:
    lines.append(
        f"Best: member {best[0]['index']}, lr {best[0]['lr']:.4g}, final test "
        f"accuracy {best[0]['final_test_accuracy']:.4f}, in "
        f"{best[0]['workdir']}.")
  else:
    lines.append("Best: none yet (no member has finished).")
  pending = [str(row["index"]) for row in rows
             if row["status"] in (MISSING, UNFINISHED)]
  if pending:
    lines.append(f"Not finished: members {', '.join(pending)}.")
  return "\n".join(lines) + "\n"


def _format_optional(value):
  return "-" if value is None else f"{value:.4f}"


def write_summary(workdir, rows):
  """Write `sweep_summary.jsonl` and `sweep_summary.txt` to `workdir`.

  Each file is replaced as a whole, so readers never see half of one.

  Args:
    workdir: The sweep's directory.
    rows: Summary rows after `mark_best`.

  Returns:
    The table text.
  """
  os.makedirs(workdir, exist_ok=True)
  ordered = sorted(rows, key=lambda r: r["index"])
  lines = "".join(json.dumps(row, allow_nan=False) + "\n" for row in ordered)
  records.write_text_atomic(os.path.join(workdir, SUMMARY_JSONL), lines)
  table = format_table(ordered)
  records.write_text_atomic(os.path.join(workdir, SUMMARY_TABLE), table)
  return table


def collect(base_config, sweep_members):
  """Build, mark and write the summary of every member from its files.

  Args:
    base_config: The sweep's `RunConfig`; its `workdir` receives the files.
    sweep_members: The list of `Member`.

  Returns:
    `(rows, table)`: the summary rows in index order and the table text.
  """
  rows = [member_summary(member) for member in sweep_members]
  mark_best(rows)
  return rows, write_summary(base_config.workdir, rows)


def run_member(member, strategy=None, flags_text_for=None):
  """Train one member, or skip it when its directory marks it diverged.

  A `NonFiniteLossError` is recorded in the member's `diverged.json` and not
  raised. A finished member returns from `inc_tf.train.run` without training.

  Args:
    member: A `Member`.
    strategy: A `tf.distribute.Strategy`, or None for the default of
      `inc_tf.train.run`.
    flags_text_for: Function from a `RunConfig` to its flags.txt text, or
      None to write none.

  Returns:
    The member's summary row.

  Raises:
    ValueError: The member's directory contains a run with other settings.
  """
  # Imported here so that --help, --collect and the table functions do not
  # start TensorFlow.
  from inc_tf import train  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top

  config = member.config
  marker = read_diverged_marker(config.workdir)
  if marker is not None:
    check_marker_matches(marker, config, train.RESUMABLE_FIELDS)
    logging.info("Sweep member %d (lr %g) diverged before; skipped. Delete %s "
                 "to retrain it.", member.index, member.lr,
                 os.path.join(config.workdir, DIVERGED_FILE))
    return member_summary(member)

  logging.info("Sweep member %d: lr %g in %s.", member.index, member.lr,
               config.workdir)
  flags_text = flags_text_for(config) if flags_text_for else None
  try:
    train.run(config, strategy=strategy, flags_text=flags_text)
  except train.NonFiniteLossError as e:
    logging.warning("Sweep member %d (lr %g) diverged: %s", member.index,
                    member.lr, e)
    write_diverged_marker(config, str(e))
  finally:
    # Frees the member's model and Keras' global state before the next one.
    keras.backend.clear_session()
  return member_summary(member)


def run_sweep(base_config, sweep_members, strategy=None, flags_text_for=None):
  """Train every member in order, rewriting the summary after each.

  Args:
    base_config: The sweep's `RunConfig`; its `workdir` receives the summary.
    sweep_members: The list of `Member`.
    strategy: A `tf.distribute.Strategy` for every member, or None for the
      default of `inc_tf.train.run`.
    flags_text_for: Function from a `RunConfig` to its flags.txt text, or
      None to write none.

  Returns:
    `(rows, table)` as from `collect`.
  """
  for member in sweep_members:
    logging.info("Sweep: member %d of %d.", member.index + 1,
                 len(sweep_members))
    run_member(member, strategy=strategy, flags_text_for=flags_text_for)
    collect(base_config, sweep_members)
  return collect(base_config, sweep_members)


def finish_best(rows):
  """Draw the best member's figures and return its final measurement table.

  Does what the single-run command does at its end: `plots.finish_run`
  writes the figures to `<best workdir>/figures` and into its TensorBoard
  log.

  Args:
    rows: Summary rows after `mark_best`.

  Returns:
    The table text, or None when there is no best member or its measurement
    files cannot be read (logged as a warning).
  """
  # pylint: disable=g-import-not-at-top
  from inc_tf import plots
  from inc_tf import rundir
  from inc_tf import table as table_lib
  # pylint: enable=g-import-not-at-top

  best = [row for row in rows if row["best"]]
  if not best:
    return None
  workdir = best[0]["workdir"]
  try:
    paths = plots.finish_run(workdir)
    table = table_lib.format_final_table(rundir.load_run(workdir))
  except (FileNotFoundError, ValueError) as e:
    logging.warning("Could not draw the figures of the best member in %s: %s",
                    workdir, e)
    return None
  logging.info("Drew %d figure files of the best member into %s.", len(paths),
               os.path.join(workdir, "figures"))
  return table


def rerun_command(row, measure_epochs):
  """Return the command that retrains the best rate with every measurement.

  Args:
    row: The best summary row.
    measure_epochs: The sweep's `--measure_epochs`, as integers.

  Returns:
    A `python -m inc_tf.main` command line that reads the member's flags.txt
    (every flag, its rate included) and trains in a new run directory.
  """
  return (f"python -m inc_tf.main "
          f"--flagfile={os.path.join(row['workdir'], 'flags.txt')} "
          f"--measure_epochs={','.join(map(str, measure_epochs))} "
          f"--workdir={row['workdir']}_full")


def default_strategy():
  """Return `inc_tf.train.default_strategy()`, shared by every member.

  A second MirroredStrategy over the same devices in one process can reuse
  collective instance keys and fail in all-reduce (TF 2.21), so all members
  train under the process-wide one.
  """
  from inc_tf import train  # pylint: disable=g-import-not-at-top
  return train.default_strategy()


def _check_mode(index, collect_only, num_rates):
  if collect_only and index is not None:
    raise ValueError(
        f"--collect and --sweep_index={index} were both given: pass "
        "--sweep_index to train one member, or --collect to summarise.")
  if index is not None and index >= num_rates:
    raise ValueError(
        f"Invalid --sweep_index {index}: the sweep has {num_rates} rates, so "
        f"pass 0 .. {num_rates - 1}.")


def main(argv):
  # User errors end in one "Error: ..." line on stderr and exit status 1, as
  # in `inc_tf.main`.
  if len(argv) > 1:
    sys.exit(f"Error: unexpected arguments {' '.join(argv[1:])!r}. Pass "
             "settings as --name=value flags; see --help.")
  try:
    base_config = flags_lib.config_from_flags(sys.argv)
    _check_mode(_INDEX.value, _COLLECT.value, _NUM_RATES.value)
    rates = learning_rates(_LR_MIN.value, _LR_MAX.value, _NUM_RATES.value)
  except ValueError as e:
    sys.exit(f"Error: {e}")
  sweep_members = members(base_config, rates, _MEASURE_ALL.value)
  logging.info("Sweep over %d learning %s (%s) in %s.", len(rates),
               "rate" if len(rates) == 1 else "rates",
               ", ".join(f"{rate:.3g}" for rate in rates), base_config.workdir)

  try:
    if _INDEX.value is not None:
      row = run_member(sweep_members[_INDEX.value],
                       strategy=default_strategy(),
                       flags_text_for=member_flags_text)
      print(format_table([row]), end="")
      print(f"Run with --collect after every member to write {SUMMARY_TABLE}.")
      return 0
    if _COLLECT.value:
      rows, table = collect(base_config, sweep_members)
    else:
      rows, table = run_sweep(base_config, sweep_members,
                              strategy=default_strategy(),
                              flags_text_for=member_flags_text)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"Error: {e}")

  print(table, end="")
  print(f"Wrote {SUMMARY_JSONL} and {SUMMARY_TABLE} to {base_config.workdir}.")
  if any(row["status"] in (MISSING, UNFINISHED) for row in rows):
    return 0
  best = [row for row in rows if row["best"]]
  final_table = finish_best(rows)
  if final_table is not None:
    print(final_table)
  if best and not _MEASURE_ALL.value:
    print("Retrain the best rate with every --measure_epochs measurement:\n  "
          + rerun_command(best[0], base_config.measure_epochs))
  return 0


if __name__ == "__main__":
  app.run(main)
