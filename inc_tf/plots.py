"""Figures of a run's collapse measurements, drawn from its run directory.

Each measurement family gets one figure in the layout of Rangamani et al.,
"Feature Learning in Deep Classifiers through Intermediate Neural Collapse"
(ICML 2023): the x axis is the probe point index, one line per measured
epoch, and a green vertical line at the final epoch's collapse onset.

| family | panels | paper |
| --- | --- | --- |
| `nc1` | NC1 traces (log), within / between fractions with epsilon | Fig. 2 |
| `nc2` | max_angle, equiangularity, equinorm, etf_distance | Fig. 3 |
| `nc3` | alignment (epoch 0 as the random baseline), weight_top_sv_cv | Fig. 4 |
| `nc4` | ncc_agreement and ncc_accuracy, train and test | Fig. 5 |
| `ranks` | final weight spectra, feature and weight stable ranks | Fig. 6 |
| `training` | loss, accuracy and learning rate per epoch | |
| `nc1_cdnv` | nc1 and cdnv (log) | |

The module uses `matplotlib.figure.Figure` directly (no pyplot state) and
imports TensorFlow only inside `write_tensorboard_images`, so figures can be
redrawn on a machine without TensorFlow.
"""

import io
import logging as std_logging
import os

import matplotlib
from matplotlib import figure as mpl_figure
from matplotlib import lines as mpl_lines
from matplotlib import ticker
from absl import logging

# Re-exported so that callers drawing a run need only this module.
from inc_tf.rundir import Run, load_run  # pylint: disable=unused-import
from inc_tf.table import format_final_table  # pylint: disable=unused-import

# fontTools logs every font subsetting step of a PDF save at INFO level, and
# absl shows INFO by default.
std_logging.getLogger("fontTools").setLevel(std_logging.WARNING)

FAMILIES = ("nc1", "nc2", "nc3", "nc4", "ranks", "training", "nc1_cdnv")

CAPTIONS = {
    "nc1": "NC1: within-class variability",
    "nc2": "NC2: class means and the simplex ETF",
    "nc3": "NC3: feature-weight alignment",
    "nc4": "NC4: nearest class centre",
    "ranks": "Weight spectra and stable ranks",
    "training": "Training curves",
    "nc1_cdnv": "NC1 and class-distance normalised variance",
}

# Sized for a paper column: one 3.5 in wide panel per run, fonts >= 7 pt.
PANEL_WIDTH = 3.5  # Inches.
PANEL_HEIGHT = 1.5  # Inches.
SAVE_DPI = 200
TENSORBOARD_DPI = 100
# Matplotlib rc settings of every inc_tf figure, `etf_experiment`'s included.
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "lines.linewidth": 1.0,
    "lines.markersize": 2.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    # TrueType fonts keep the PDF's text editable and searchable.
    "pdf.fonttype": 42,
}

# Beyond this many probe points the layer names no longer fit under the axis.
MAX_NAMED_TICKS = 24
# Epochs named in a legend; the colour map places the others.
MAX_LEGEND_EPOCHS = 6

ONSET_COLOR = "tab:green"
ONSET_GID = "collapse_onset"
EPSILON_GID = "epsilon"
_NOTE_COLOR = "darkgreen"
_TEST_COLOR = "0.35"
_BASELINE_COLOR = "0.55"


# Colours and legends.


def _epoch_colors(epochs):
  """Map each epoch to a viridis colour, early dark blue to late green-yellow.

  The bright top of viridis is cut because it is hard to see on white.
  """
  cmap = matplotlib.colormaps["viridis"]
  if len(epochs) == 1:
    return {epochs[0]: cmap(0.0)}
  return {e: cmap(0.85 * i / (len(epochs) - 1)) for i, e in enumerate(epochs)}


def _legend_epochs(epochs):
  """Return at most `MAX_LEGEND_EPOCHS` epochs, the first and last included."""
  if len(epochs) <= MAX_LEGEND_EPOCHS:
    return list(epochs)
  step = (len(epochs) - 1) / (MAX_LEGEND_EPOCHS - 1)
  return [epochs[round(i * step)] for i in range(MAX_LEGEND_EPOCHS)]


def _epoch_label(epoch, baseline):
  if baseline and epoch == 0:
    return "epoch 0 (random init)"
  return "epoch %d" % epoch


def _add_legend(ax, *groups, title=None):
  """Add the one legend of `ax` right of it, outside the data.

  Each group of handles gets its own column of that legend. Two separate
  legends stacked beside a short panel can overlap, so no axes gets a
  second one. The constrained layout makes room for the legend.

  Args:
    ax: The axes.
    *groups: Sequences of legend handles, one column each; empty ones are
      left out.
    title: Legend title, or None.
  """
  groups = [list(group) for group in groups if group]
  if not groups:
    return
  rows = max(len(group) for group in groups)
  handles = []
  for group in groups:
    # Blank entries fill up the shorter columns, because matplotlib fills a
    # multi-column legend column by column.
    blanks = [mpl_lines.Line2D([], [], linestyle="none", label="")
              for _ in range(rows - len(group))]
    handles.extend(group + blanks)
  ax.legend(handles=handles, title=title, loc="upper left", ncols=len(groups),
            bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
            handlelength=2.2, columnspacing=1.0)


def _epoch_handles(epochs, colors, baseline=False):
  handles = []
  for epoch in _legend_epochs(epochs):
    if baseline and epoch == 0:
      handles.append(mpl_lines.Line2D([], [], color=_BASELINE_COLOR,
                                      linestyle="--",
                                      label=_epoch_label(epoch, True)))
    else:
      marker = "." if len(epochs) <= MAX_LEGEND_EPOCHS else None
      handles.append(mpl_lines.Line2D([], [], color=colors[epoch],
                                      marker=marker, label="epoch %d" % epoch))
  return handles


def _style_handles(styles):
  """Return legend proxies for `(label, linestyle, color)` triples."""
  return [mpl_lines.Line2D([], [], color=color, linestyle=linestyle,
                           label=label) for label, linestyle, color in styles]


# Lines.


def _plot_series(ax, indices, values, log, **line_kwargs):
  """Plot one line, leaving out non-positive values on a log axis.

  Returns:
    Whether anything was drawn.
  """
  if log:
    pairs = [(i, v) for i, v in zip(indices, values) if v > 0]
    indices = [i for i, _ in pairs]
    values = [v for _, v in pairs]
  if not indices:
    return False
  line_kwargs.setdefault("marker", ".")
  ax.plot(indices, values, **line_kwargs)
  return True


def _plot_epochs(ax, run, key, epochs, colors, log=False, split="train",
                 baseline=False, **line_kwargs):
  """Plot `key` along the probe points, one line per epoch.

  Args:
    ax: Axes to draw into.
    run: The `Run`.
    key: Metric name.
    epochs: Epochs to draw, increasing.
    colors: Dict from epoch to colour.
    log: Whether the y axis is logarithmic.
    split: "train" or "test".
    baseline: Whether epoch 0 is drawn as the grey dashed random baseline.
    **line_kwargs: Passed to `Axes.plot`.

  Returns:
    Whether any line was drawn.
  """
  drawn = False
  # Markers only clutter many overlapping lines. The final epoch, whose
  # onset the green line marks, is drawn thicker.
  line_kwargs.setdefault("marker",
                         "." if len(epochs) <= MAX_LEGEND_EPOCHS else None)
  for epoch in epochs:
    indices, values = run.series(key, epoch, split)
    kwargs = dict(line_kwargs, color=colors[epoch])
    if epoch == epochs[-1] and len(epochs) > 1:
      kwargs.setdefault("linewidth", 1.5)
    if baseline and epoch == 0:
      kwargs.update(color=_BASELINE_COLOR, linestyle="--")
    drawn |= _plot_series(ax, indices, values, log, **kwargs)
  return drawn


class _MinorLogFormatter(ticker.LogFormatter):
  """Label the minor ticks matplotlib chooses to label, as "0.03" or "40".

  A log axis spanning less than about a decade has one major tick or none,
  and matplotlib's default minor labels ("4 x 10^1") are hard to read.
  """

  def __init__(self):
    super().__init__(labelOnlyBase=False)

  def __call__(self, x, pos=None):
    return "%g" % x if super().__call__(x, pos) else ""


def _set_metric_axis(ax, label, log=False, drawn=True, ylim=None):
  """Label the y axis, set its scale and mark a panel with no data."""
  ax.set_ylabel(label)
  if log:
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(_MinorLogFormatter())
  if ylim is not None:
    ax.set_ylim(*ylim)
  if not drawn:
    ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center",
            va="center", color="0.4")


# Probe-point axes.


def _finish_probe_axes(run, axes):
  """Set probe-point ticks and mark the final epoch's collapse onset.

  The bottom axes gets "index layer" tick labels when there are at most
  `MAX_NAMED_TICKS` probe points, integer indices otherwise. Every axes gets
  the green onset line, or the first one a note in its left title when
  there is no onset.

  Args:
    run: The `Run`.
    axes: Axes whose x axis is the probe index, top to bottom.
  """
  indices = run.indices()
  names = run.layer_names()
  final_epoch = run.final_epoch("train")
  if final_epoch is None:
    onset, epsilon = None, run.epsilon()
  else:
    onset, epsilon = run.onset(final_epoch, "train")

  for position, ax in enumerate(axes):
    bottom = position == len(axes) - 1
    if indices:
      ax.set_xlim(indices[0] - 0.5, indices[-1] + 0.5)
    if len(indices) <= MAX_NAMED_TICKS:
      ax.set_xticks(indices)
      if bottom:
        ax.set_xticklabels(["%d %s" % (i, names[i]) for i in indices],
                           rotation=90)
        ax.set_xlabel("probe point (index, consuming layer)")
    else:
      ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
      if bottom:
        ax.set_xlabel("probe point index")
    if not bottom:
      ax.tick_params(labelbottom=False)

    if onset is not None:
      line = ax.axvline(onset, color=ONSET_COLOR, linewidth=1.5, zorder=1)
      line.set_gid(ONSET_GID)

  if onset is None and axes:
    if final_epoch is None:
      note = "no training-split measurement"
    elif not run.onset_known(final_epoch, "train"):
      measured = sum(run.record(i, final_epoch, "train") is not None
                     for i in indices)
      note = ("onset unknown: epoch %d measured at %d of %d probe points" %
              (final_epoch, measured, len(indices)))
    else:
      note = "no collapse onset at epoch %d (epsilon = %g)" % (final_epoch,
                                                               epsilon)
    # Above the panel, where it hides no data.
    axes[0].set_title(note, loc="left", fontsize=7, color=_NOTE_COLOR)


# One drawing function per family. Each draws one run into a column of axes,
# top to bottom, and `_PANELS` gives the number of axes it needs.


def _draw_nc1(run, axes):
  top, bottom = axes
  epochs = run.epochs("train")
  colors = _epoch_colors(epochs)

  drawn = False
  for key, linestyle in (("trace_within", ":"), ("trace_between", "--"),
                         ("trace_total", "-")):
    drawn |= _plot_epochs(top, run, key, epochs, colors, log=True,
                          linestyle=linestyle)
  _set_metric_axis(top, "trace", log=True, drawn=drawn)
  _add_legend(top, _epoch_handles(epochs, colors), _style_handles([
      ("trace_within", ":", "k"), ("trace_between", "--", "k"),
      ("trace_total", "-", "k")]))

  drawn = False
  for key, linestyle in (("within_fraction", ":"), ("between_fraction", "--")):
    drawn |= _plot_epochs(bottom, run, key, epochs, colors,
                          linestyle=linestyle)
  final_epoch = run.final_epoch("train")
  test_drawn = _plot_series(
      bottom, *run.series("within_fraction", final_epoch, "test"), log=False,
      color=_TEST_COLOR, linestyle=":", marker="x")
  epsilon = run.onset(final_epoch, "train")[1] if epochs else run.epsilon()
  line = bottom.axhline(epsilon, color="tab:red", linewidth=0.8,
                        linestyle="-.")
  line.set_gid(EPSILON_GID)
  _set_metric_axis(bottom, "fraction of trace_total", drawn=drawn,
                   ylim=(0.0, 1.02))
  styles = [("within_fraction", ":", "k"), ("between_fraction", "--", "k"),
            ("epsilon = %g" % epsilon, "-.", "tab:red")]
  if test_drawn:
    styles.append(("within_fraction,\ntest, epoch %d" % final_epoch, ":",
                   _TEST_COLOR))
  _add_legend(bottom, _style_handles(styles))
  _finish_probe_axes(run, axes)


def _draw_nc2(run, axes):
  epochs = run.epochs("train")
  colors = _epoch_colors(epochs)
  for ax, key in zip(axes, ("max_angle", "equiangularity", "equinorm",
                            "etf_distance")):
    drawn = _plot_epochs(ax, run, key, epochs, colors, log=True)
    _set_metric_axis(ax, key, log=True, drawn=drawn)
  _add_legend(axes[0], _epoch_handles(epochs, colors))
  _finish_probe_axes(run, axes)


def _draw_nc3(run, axes):
  epochs = run.epochs("train")
  colors = _epoch_colors(epochs)
  drawn = _plot_epochs(axes[0], run, "alignment", epochs, colors,
                       baseline=True)
  _set_metric_axis(axes[0], "alignment", drawn=drawn, ylim=(0.0, 1.02))
  drawn = _plot_epochs(axes[1], run, "weight_top_sv_cv", epochs, colors,
                       log=True, baseline=True)
  _set_metric_axis(axes[1], "weight_top_sv_cv", log=True, drawn=drawn)
  _add_legend(axes[0], _epoch_handles(epochs, colors, baseline=True))
  _finish_probe_axes(run, axes)


def _draw_nc4(run, axes):
  epochs = run.epochs("train")
  colors = _epoch_colors(epochs)
  for ax, key in zip(axes, ("ncc_agreement", "ncc_accuracy")):
    drawn = _plot_epochs(ax, run, key, epochs, colors)
    test_epochs = [e for e in run.epochs("test") if e in colors]
    drawn |= _plot_epochs(ax, run, key, test_epochs, colors, split="test",
                          linestyle="--")
    _set_metric_axis(ax, key, drawn=drawn, ylim=(0.0, 1.02))
  _add_legend(axes[0], _epoch_handles(epochs, colors))
  _add_legend(axes[1], _style_handles([("train", "-", "k"),
                                       ("test", "--", "k")]))
  _finish_probe_axes(run, axes)


def _draw_spectra(run, ax):
  """Draw the final epoch's weight spectra, collapsed layers in red."""
  epoch = run.final_epoch("train")
  onset = run.onset(epoch, "train")[0] if epoch is not None else None
  spectra = []
  for index in run.indices():
    record = run.record(index, epoch, "train") or {}
    values = record.get("weight_singular_values")
    if values:
      spectra.append((index, values))

  before = [i for i, _ in spectra if onset is None or i < onset]
  after = [i for i, _ in spectra if onset is not None and i >= onset]
  colors = {}
  for group, cmap_name in ((before, "Blues"), (after, "Reds")):
    cmap = matplotlib.colormaps[cmap_name]
    for position, index in enumerate(group):
      # Darker is deeper; the palest quarter of each map is hard to see.
      colors[index] = cmap(0.35 + 0.6 * (position + 1) / len(group))

  drawn = False
  for index, values in spectra:
    drawn |= _plot_series(ax, list(range(1, len(values) + 1)), values,
                          log=True, color=colors[index], marker=None)
  ax.set_xlabel("singular value index (epoch %s)" % epoch, labelpad=1)
  _set_metric_axis(ax, "weight_singular_values", log=True, drawn=drawn)

  handles = []
  if before:
    label = ("all layers (no onset)" if onset is None else
             "before onset\n(index %d-%d)" % (before[0], before[-1]))
    handles.append(mpl_lines.Line2D([], [], color=colors[before[-1]],
                                    label=label))
  if after:
    handles.append(mpl_lines.Line2D(
        [], [], color=colors[after[-1]],
        label="collapsed\n(index %d-%d)" % (after[0], after[-1])))
  _add_legend(ax, handles, title="darker = deeper")


def _draw_ranks(run, axes):
  _draw_spectra(run, axes[0])
  epochs = run.epochs("train")
  colors = _epoch_colors(epochs)
  for ax, key in zip(axes[1:], ("feature_stable_rank", "weight_stable_rank")):
    drawn = _plot_epochs(ax, run, key, epochs, colors, log=True)
    _set_metric_axis(ax, key, log=True, drawn=drawn)
  _add_legend(axes[1], _epoch_handles(epochs, colors))
  _finish_probe_axes(run, axes[1:])


def _history_series(history, key):
  epochs, values = [], []
  for record in history:
    value = record.get(key)
    if isinstance(value, (int, float)):
      epochs.append(record["epoch"])
      values.append(float(value))
  return epochs, values


def _draw_training(run, axes):
  if run.history is None:
    for ax in axes:
      ax.set_axis_off()
    axes[0].text(0.5, 0.5, "no history.jsonl", transform=axes[0].transAxes,
                 ha="center", va="center")
    return
  loss_ax, accuracy_ax, lr_ax = axes
  marker = "." if len(run.history) <= 50 else None

  drawn = _plot_series(loss_ax, *_history_series(run.history, "loss"),
                       log=True, color="k", marker=marker)
  _set_metric_axis(loss_ax, "loss", log=True, drawn=drawn)

  drawn = False
  for key, linestyle in (("train_accuracy", "-"), ("test_accuracy", "--")):
    drawn |= _plot_series(
        accuracy_ax, *_history_series(run.history, key), log=False,
        color="tab:blue", linestyle=linestyle, marker=marker, label=key)
  _set_metric_axis(accuracy_ax, "accuracy", drawn=drawn, ylim=(0.0, 1.02))
  if drawn:
    _add_legend(accuracy_ax, accuracy_ax.get_lines())

  drawn = _plot_series(lr_ax, *_history_series(run.history, "learning_rate"),
                       log=True, color="tab:orange", marker=marker)
  _set_metric_axis(lr_ax, "learning_rate", log=True, drawn=drawn)
  lr_ax.set_xlabel("epoch")
  for ax in axes[:-1]:
    ax.tick_params(labelbottom=False)
  for ax in axes:
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _draw_nc1_cdnv(run, axes):
  epochs = run.epochs("train")
  colors = _epoch_colors(epochs)
  final_epoch = run.final_epoch("train")
  test_drawn = False
  for ax, key in zip(axes, ("nc1", "cdnv")):
    drawn = _plot_epochs(ax, run, key, epochs, colors, log=True)
    test = _plot_series(ax, *run.series(key, final_epoch, "test"), log=True,
                        color=_TEST_COLOR, linestyle=":", marker="x")
    test_drawn |= test
    _set_metric_axis(ax, key, log=True, drawn=drawn or test)
  _add_legend(axes[0], _epoch_handles(epochs, colors))
  if test_drawn:
    _add_legend(axes[1], _style_handles([
        ("train", "-", "k"),
        ("test, epoch %d" % final_epoch, ":", _TEST_COLOR)]))
  _finish_probe_axes(run, axes)


_PANELS = {
    "nc1": (2, _draw_nc1),
    "nc2": (4, _draw_nc2),
    "nc3": (2, _draw_nc3),
    "nc4": (2, _draw_nc4),
    "ranks": (3, _draw_ranks),
    "training": (3, _draw_training),
    "nc1_cdnv": (2, _draw_nc1_cdnv),
}


# Figures.


def _family_figure(family, runs):
  """Draw one family with one column of panels per run.

  Args:
    family: One of `FAMILIES`.
    runs: `Run`s, one column each, left to right.

  Returns:
    A `matplotlib.figure.Figure`.
  """
  num_panels, draw = _PANELS[family]
  with matplotlib.rc_context(STYLE):
    # The extra 1.3 in per column is room for the legends right of it.
    fig = mpl_figure.Figure(
        figsize=((PANEL_WIDTH + 1.3) * len(runs),
                 PANEL_HEIGHT * num_panels + 1.2),
        layout="constrained")
    if len(runs) == 1:
      fig.suptitle("%s\n%s" % (runs[0].title(), CAPTIONS[family]))
      columns = [fig]
    else:
      # One subfigure per run, so each column has its own title above the
      # panels and the panel titles stay free for the onset notes.
      fig.suptitle(CAPTIONS[family])
      columns = list(fig.subfigures(1, len(runs), squeeze=False)[0])
      names = [run.name for run in runs]
      if len(set(names)) < len(names):
        names = [run.workdir for run in runs]
      for column, run, name in zip(columns, runs, names):
        column.suptitle("%s\n%s" % (name, run.title()))
    axes = [list(c.subplots(num_panels, 1, squeeze=False)[:, 0])
            for c in columns]

    # Shared y axes let the columns of a comparison be read against each
    # other, as in Fig. 8 of Rangamani et al. (networks without collapse).
    for column_axes in axes[1:]:
      for ax, first in zip(column_axes, axes[0]):
        ax.sharey(first)
    for column_axes, run in zip(axes, runs):
      draw(run, column_axes)
  return fig


def _check_families(families):
  unknown = [f for f in families if f not in _PANELS]
  if unknown:
    raise ValueError("Unknown figure families %s; expected names from %s." %
                     (unknown, list(FAMILIES)))


def figures(run, families=FAMILIES):
  """Draw the figure families of one run.

  Args:
    run: A `Run`, from `load_run`.
    families: Names from `FAMILIES` to draw. Defaults to all of them.

  Returns:
    Dict from family name to `matplotlib.figure.Figure`. "training" is left
    out when the run has no history.jsonl.

  Raises:
    ValueError: A name in `families` is not in `FAMILIES`.
  """
  _check_families(families)
  return {family: _family_figure(family, [run]) for family in families
          if family != "training" or run.history is not None}


def compare_figures(runs, families=FAMILIES):
  """Draw figure families with the runs side by side, one column each.

  Args:
    runs: Sequence of `Run`s, left to right.
    families: Names from `FAMILIES` to draw. Defaults to all of them.

  Returns:
    Dict from family name to `matplotlib.figure.Figure`.

  Raises:
    ValueError: `runs` is empty or a name in `families` is not in `FAMILIES`.
  """
  if not runs:
    raise ValueError("compare_figures needs at least one run, got none.")
  _check_families(families)
  return {family: _family_figure(family, list(runs)) for family in families}


def save_figures(figs, out_dir):
  """Write each figure as `<out_dir>/<family>.png` (200 dpi) and `.pdf`.

  Args:
    figs: Dict from family name to `matplotlib.figure.Figure`.
    out_dir: Folder, created if missing.

  Returns:
    The paths written, PNG and PDF of each family in turn.
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  with matplotlib.rc_context(STYLE):
    for family, fig in figs.items():
      png_path = os.path.join(out_dir, family + ".png")
      pdf_path = os.path.join(out_dir, family + ".pdf")
      fig.savefig(png_path, dpi=SAVE_DPI)
      # The layout is in figure coordinates, so the PDF reuses the one the
      # PNG computed instead of running the slow constrained layout again.
      engine = fig.get_layout_engine()
      fig.set_layout_engine("none")
      try:
        fig.savefig(pdf_path)
      finally:
        fig.set_layout_engine(engine)
      paths.extend([png_path, pdf_path])
  logging.info("Wrote %d %s as PNG and PDF to %s", len(figs),
               "figure" if len(figs) == 1 else "figures", out_dir)
  return paths


def draw_all(workdir, out_dir=None, families=FAMILIES):
  """Draw the figures of a run directory and save them as PNG and PDF.

  Args:
    workdir: Run directory with metrics.jsonl and onset.jsonl.
    out_dir: Output folder. Defaults to `<workdir>/figures`.
    families: Names from `FAMILIES` to draw. Defaults to all of them.

  Returns:
    The paths written.
  """
  run = load_run(workdir)
  out_dir = out_dir or os.path.join(workdir, "figures")
  return save_figures(figures(run, families), out_dir)


def draw_compare(workdirs, out_dir=None, families=FAMILIES):
  """Draw the runs of several directories side by side and save the figures.

  Args:
    workdirs: Run directories, one column each.
    out_dir: Output folder. Defaults to `<first workdir>/figures/compare`.
    families: Names from `FAMILIES` to draw. Defaults to all of them.

  Returns:
    The paths written.
  """
  if not workdirs:
    raise ValueError("draw_compare needs at least one run directory, got "
                     "none.")
  runs = [load_run(w) for w in workdirs]
  out_dir = out_dir or os.path.join(workdirs[0], "figures", "compare")
  return save_figures(compare_figures(runs, families), out_dir)


def finish_run(workdir, tensorboard=True):
  """Draw every figure of a finished run, also into its TensorBoard log.

  The training command calls this when a run ends. The images go to
  `<workdir>/tensorboard` at the final measured epoch as step.

  Args:
    workdir: Run directory.
    tensorboard: Whether to write the TensorBoard images, which imports
      TensorFlow.

  Returns:
    The PNG and PDF paths written under `<workdir>/figures`.
  """
  run = load_run(workdir)
  figs = figures(run)
  paths = save_figures(figs, os.path.join(workdir, "figures"))
  if tensorboard:
    step = run.final_epoch("train") or 0
    write_tensorboard_images(figs, os.path.join(workdir, "tensorboard"), step)
  return paths


def render_png(fig, dpi=TENSORBOARD_DPI):
  """Return the PNG encoding of `fig` at `dpi`, as bytes."""
  buffer = io.BytesIO()
  with matplotlib.rc_context(STYLE):
    fig.savefig(buffer, format="png", dpi=dpi)
  return buffer.getvalue()


def write_tensorboard_images(figs, logdir, step, dpi=TENSORBOARD_DPI):
  """Write each figure as a TensorBoard image summary `figures/<family>`.

  Imports TensorFlow here, so the rest of the module works without it.

  Args:
    figs: Dict from family name to `matplotlib.figure.Figure`.
    logdir: TensorBoard log directory; a new event file is written there.
    step: Summary step, usually the final epoch.
    dpi: Resolution of the rendered images, in dots per inch.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for family, fig in figs.items():
      image = tf.io.decode_png(render_png(fig, dpi), channels=3)
      tf.summary.image("figures/" + family, image[tf.newaxis], step=step)
  writer.close()
  logging.info("Wrote %d figure %s to %s at step %d", len(figs),
               "image" if len(figs) == 1 else "images", logdir, step)
