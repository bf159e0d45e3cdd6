"""Tests for inc_tf.plots and inc_tf.rundir on hand-written run directories."""

import itertools
import json
import logging
import os

import matplotlib.image
from matplotlib import legend as mpl_legend
from matplotlib.backends import backend_agg
import pytest

from inc_tf import plots
from inc_tf import rundir

EPOCHS = (0, 5, 10)
LAYERS = ("dense", "dense_1", "dense_2", "dense_3", "dense_4", "logits")
# within_fraction at the final epoch: below 0.2 from probe point 3 on.
COLLAPSING = (0.9, 0.7, 0.5, 0.15, 0.08, 0.03)
# The last point is still above 0.2, so there is no onset.
NOT_COLLAPSING = (0.9, 0.8, 0.7, 0.6, 0.5, 0.3)
EPSILON = 0.2
FLAGS = ("--dataset=fashion_mnist", "--model=mlp", "--depth=5", "--width=64",
         "--epochs=10", "--epsilon=0.2")


def metric_record(epoch, split, index, final_fraction):
  """Return one plausible metrics.jsonl record that collapses with training."""
  progress = epoch / EPOCHS[-1]
  depth = index / (len(LAYERS) - 1)
  within_fraction = 0.95 + (final_fraction - 0.95) * progress
  total = 10.0 * (1 + index)
  within = within_fraction * total
  between = total - within

  # Deep layers late in training get 9 (C - 1) equal top singular values.
  top = 9 if progress * depth > 0.5 else 3
  spectrum = [4.0] * top + [1.0 / (k + 1) for k in range(16 - top)]
  shift = 0.05 if split == "test" else 0.0
  last = index == len(LAYERS) - 1

  return {
      "epoch": epoch, "split": split, "layer": LAYERS[index], "index": index,
      "trace_within": within, "trace_between": between, "trace_total": total,
      "within_fraction": within_fraction,
      "between_fraction": 1.0 - within_fraction,
      "nc1": within / between, "cdnv": 0.5 * within / between,
      "equinorm": 0.5 * within_fraction,
      "equiangularity": 0.3 * within_fraction,
      "max_angle": 0.4 * within_fraction,
      "etf_distance": within_fraction,
      "alignment": 0.2 + 0.7 * progress * depth,
      "weight_top_sv_cv": 0.5 * (1.0 - 0.8 * progress * depth),
      "self_duality": 0.1 if last else None,
      "am_alignment": 0.9 if last else None,
      "ncc_agreement": 1.0 - 0.8 * within_fraction - shift,
      "ncc_accuracy": 0.95 - 0.5 * within_fraction - shift,
      "feature_stable_rank": 1.0 + 50.0 * (1.0 - 0.8 * progress * depth),
      "weight_stable_rank": 2.0 + 30.0 * (1.0 - 0.7 * progress * depth),
      "weight_singular_values": [s / sum(spectrum) for s in spectrum],
  }


def onset_of(fractions):
  onset = None
  for index in reversed(range(len(fractions))):
    if fractions[index] >= EPSILON:
      break
    onset = index
  return onset


def write_lines(path, objects, tail=""):
  with open(path, "w", encoding="utf-8") as f:
    for obj in objects:
      f.write(json.dumps(obj) + "\n")
    f.write(tail)


def write_run(workdir, final_fractions=COLLAPSING, epochs=EPOCHS,
              history=True, flags=FLAGS):
  """Write metrics.jsonl, onset.jsonl, history.jsonl and flags.txt.

  Returns:
    The metrics records written, in file order.
  """
  os.makedirs(workdir, exist_ok=True)
  metrics, onsets = [], []
  for epoch in epochs:
    for split in ("train", "test"):
      records = [metric_record(epoch, split, i, final_fractions[i])
                 for i in range(len(LAYERS))]
      metrics.extend(records)
      onsets.append({"epoch": epoch, "split": split, "epsilon": EPSILON,
                     "onset": onset_of([r["within_fraction"]
                                        for r in records])})
  write_lines(os.path.join(workdir, "metrics.jsonl"), metrics)
  write_lines(os.path.join(workdir, "onset.jsonl"), onsets)
  if history:
    write_lines(os.path.join(workdir, "history.jsonl"), [
        {"epoch": e, "loss": 2.0 / e, "train_accuracy": 1.0 - 0.5 / e,
         "test_accuracy": 0.9 - 0.5 / e,
         "learning_rate": 0.01 if e <= 5 else 0.002, "seconds": 1.5}
        for e in range(1, epochs[-1] + 1)])
  if flags:
    with open(os.path.join(workdir, "flags.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(flags) + "\n")
  return metrics


def onset_lines(fig):
  return [line for ax in fig.axes for line in ax.lines
          if line.get_gid() == plots.ONSET_GID]


def notes(fig):
  return [ax.get_title(loc="left") for ax in fig.axes
          if ax.get_title(loc="left")]


@pytest.fixture(name="run_dir")
def fixture_run_dir(tmp_path):
  workdir = str(tmp_path / "run")
  write_run(workdir)
  return workdir


@pytest.fixture(name="figs", scope="module")
def fixture_figs(tmp_path_factory):
  """Figures of the collapsing run, drawn once because drawing is slow."""
  workdir = str(tmp_path_factory.mktemp("figs") / "run")
  write_run(workdir)
  return plots.figures(rundir.load_run(workdir))


def test_load_run_reads_files(run_dir):
  run = rundir.load_run(run_dir)

  assert run.epochs("train") == [0, 5, 10]
  assert run.indices() == list(range(6))
  assert run.layer_names()[5] == "logits"
  assert run.onset() == (3, EPSILON)
  assert len(run.history) == 10
  assert run.title() == "fashion_mnist / mlp 5x64 / 10 epochs"


def test_series_skips_null(run_dir):
  run = rundir.load_run(run_dir)

  indices, values = run.series("self_duality", 10)

  assert indices == [5]
  assert values == [0.1]


def test_load_run_keeps_last_duplicate(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = write_run(workdir)
  repeated = dict(metrics[0], nc1=123.0)
  write_lines(os.path.join(workdir, "metrics.jsonl"), metrics + [repeated])

  run = rundir.load_run(workdir)

  assert run.record(0, 0, "train")["nc1"] == 123.0
  assert len(run.records) == len(metrics)


def test_load_run_skips_partial_line(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = write_run(workdir)
  # An interrupted run: the final epoch stops after two probe points, and
  # the third record was cut mid-write.
  complete = [r for r in metrics if r["epoch"] < 10] + [
      r for r in metrics if r["epoch"] == 10 and r["split"] == "train"][:2]
  partial = json.dumps(metrics[-1])[:40]
  write_lines(os.path.join(workdir, "metrics.jsonl"), complete, tail=partial)

  run = rundir.load_run(workdir)

  assert len(run.records) == len(complete)
  assert run.series("nc1", 10)[0] == [0, 1]


def test_load_run_invalid_middle_line(run_dir):
  path = os.path.join(run_dir, "history.jsonl")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  lines[3] = lines[3][:10]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")

  with pytest.raises(ValueError, match="Line 4 of .*history.jsonl"):
    rundir.load_run(run_dir)


def test_onset_recomputed_when_missing(tmp_path):
  workdir = str(tmp_path / "run")
  write_run(workdir)
  write_lines(os.path.join(workdir, "onset.jsonl"), [])

  run = rundir.load_run(workdir)

  assert run.onset() == (3, EPSILON)


def test_onset_unknown_when_incomplete(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = write_run(workdir)
  write_lines(os.path.join(workdir, "metrics.jsonl"),
              [r for r in metrics if r["epoch"] < 10 or r["index"] < 4])
  write_lines(os.path.join(workdir, "onset.jsonl"), [])

  run = rundir.load_run(workdir)

  assert not run.onset_known()
  assert run.onset() == (None, EPSILON)
  assert run.onset_known(5)


def test_title_without_flags(tmp_path):
  workdir = str(tmp_path / "myrun")
  write_run(workdir, flags=())

  run = rundir.load_run(workdir)

  assert run.flags == {}
  assert run.title() == "myrun / 10 epochs"


def test_load_run_missing_workdir(tmp_path):
  missing = str(tmp_path / "nowhere")

  with pytest.raises(FileNotFoundError, match="nowhere.*inc_tf.main"):
    rundir.load_run(missing)


def test_load_run_missing_onset(run_dir):
  os.remove(os.path.join(run_dir, "onset.jsonl"))

  with pytest.raises(FileNotFoundError, match="onset.jsonl"):
    rundir.load_run(run_dir)


def test_load_run_empty_metrics(run_dir):
  write_lines(os.path.join(run_dir, "metrics.jsonl"), [], tail='{"epo')

  with pytest.raises(ValueError, match="no measurement record"):
    rundir.load_run(run_dir)


def test_draw_all_writes_files(run_dir):
  paths = plots.draw_all(run_dir)

  expected = [os.path.join(run_dir, "figures", "%s.%s" % (family, ext))
              for family in plots.FAMILIES for ext in ("png", "pdf")]
  assert sorted(paths) == sorted(expected)
  for path in paths:
    with open(path, "rb") as f:
      header = f.read(8)
    if path.endswith(".png"):
      assert header == b"\x89PNG\r\n\x1a\n"
      assert matplotlib.image.imread(path).shape[2] in (3, 4)
    else:
      assert header.startswith(b"%PDF")


def test_onset_line_at_index(figs):
  for family in ("nc1", "nc2", "nc3", "nc4", "ranks", "nc1_cdnv"):
    lines = onset_lines(figs[family])
    assert lines, family
    for line in lines:
      assert list(line.get_xdata()) == [3, 3]
      assert line.get_color() == plots.ONSET_COLOR
    assert not notes(figs[family])


def test_no_onset_note(tmp_path):
  workdir = str(tmp_path / "run")
  write_run(workdir, final_fractions=NOT_COLLAPSING)

  figs = plots.figures(rundir.load_run(workdir),
                       families=("nc1", "nc2", "ranks"))

  for family in ("nc1", "nc2", "ranks"):
    assert not onset_lines(figs[family]), family
    assert notes(figs[family]) == [
        "no collapse onset at epoch 10 (epsilon = 0.2)"]


def test_one_line_per_epoch(figs):
  ax = figs["nc2"].axes[0]

  data_lines = [line for line in ax.lines if line.get_gid() is None]
  legend = [text.get_text() for text in ax.get_legend().get_texts()]

  assert len(data_lines) == 3
  assert legend == ["epoch 0", "epoch 5", "epoch 10"]
  assert list(data_lines[-1].get_xdata()) == list(range(6))


def test_null_metric_not_zero(run_dir):
  run = rundir.load_run(run_dir)
  for record in run.records.values():
    record["equinorm"] = None if record["index"] < 2 else record["equinorm"]

  ax = plots.figures(run)["nc2"].axes[2]

  assert ax.get_ylabel() == "equinorm"
  for line in ax.lines:
    if line.get_gid() is None:
      assert list(line.get_xdata()) == [2, 3, 4, 5]


def test_nc1_epsilon_line(figs):
  fig = figs["nc1"]
  lines = [line for line in fig.axes[1].lines
           if line.get_gid() == plots.EPSILON_GID]

  assert len(lines) == 1
  assert list(lines[0].get_ydata()) == [EPSILON, EPSILON]
  assert fig.axes[0].get_yscale() == "log"


def test_nc3_random_baseline(figs):
  ax = figs["nc3"].axes[0]
  legend = [text.get_text() for text in ax.get_legend().get_texts()]

  assert legend[0] == "epoch 0 (random init)"


def test_nc4_train_and_test(figs):
  ax = figs["nc4"].axes[0]
  styles = [line.get_linestyle() for line in ax.lines
            if line.get_gid() is None]

  assert styles.count("-") == 3
  assert styles.count("--") == 3


def test_spectra_colour_groups(figs):
  ax = figs["ranks"].axes[0]
  legend = [text.get_text() for text in ax.get_legend().get_texts()]
  reds = [line for line in ax.lines if line.get_color()[0] >
          line.get_color()[2]]

  assert len(ax.lines) == 6
  assert len(reds) == 3
  assert legend == ["before onset\n(index 0-2)", "collapsed\n(index 3-5)"]
  assert ax.get_yscale() == "log"


def test_training_skipped_without_history(tmp_path):
  workdir = str(tmp_path / "run")
  write_run(workdir, history=False)

  figs = plots.figures(rundir.load_run(workdir))

  assert "training" not in figs
  assert set(figs) == set(plots.FAMILIES) - {"training"}


def test_layer_names_as_ticks(figs):
  labels = [t.get_text() for t in figs["nc4"].axes[1].get_xticklabels()]

  assert labels == ["%d %s" % (i, name) for i, name in enumerate(LAYERS)]


def test_title_names_run(figs):
  assert figs["nc1"].get_suptitle() == (
      "fashion_mnist / mlp 5x64 / 10 epochs\nNC1: within-class variability")


def test_interrupted_run_plots(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = write_run(workdir)
  measured = [r for r in metrics if r["epoch"] < 10 or r["index"] < 4]
  write_lines(os.path.join(workdir, "metrics.jsonl"), measured,
              tail=json.dumps(metrics[-1])[:30])
  # The onset of the final epoch was never written.
  write_lines(os.path.join(workdir, "onset.jsonl"), [])

  paths = plots.draw_all(workdir, families=("nc1", "ranks"))

  assert len(paths) == 4
  fig = plots.figures(rundir.load_run(workdir), families=("nc2",))["nc2"]
  assert not onset_lines(fig)
  assert notes(fig) == [
      "onset unknown: epoch 10 measured at 4 of 6 probe points"]
  assert list(fig.axes[0].lines[-1].get_xdata()) == [0, 1, 2, 3]


def test_unknown_family(run_dir):
  with pytest.raises(ValueError, match="nc9"):
    plots.figures(rundir.load_run(run_dir), families=("nc9",))


def test_compare_two_runs(tmp_path):
  first = str(tmp_path / "collapse")
  second = str(tmp_path / "no_collapse")
  write_run(first)
  write_run(second, final_fractions=NOT_COLLAPSING, history=False)

  paths = plots.draw_compare([first, second], families=("nc3", "training"))

  compare_dir = os.path.join(first, "figures", "compare")
  assert sorted(paths) == sorted(
      os.path.join(compare_dir, name) for name in
      ("nc3.png", "nc3.pdf", "training.png", "training.pdf"))
  runs = [rundir.load_run(first), rundir.load_run(second)]
  figs = plots.compare_figures(runs, families=("nc3", "training"))
  fig = figs["nc3"]
  assert [column.get_suptitle() for column in fig.subfigs] == [
      "collapse\nfashion_mnist / mlp 5x64 / 10 epochs",
      "no_collapse\nfashion_mnist / mlp 5x64 / 10 epochs"]
  assert len(onset_lines(fig)) == 2
  assert len(notes(fig)) == 1
  first_column, second_column = (c.axes for c in fig.subfigs)
  assert first_column[0].get_shared_y_axes().joined(first_column[0],
                                                    second_column[0])
  texts = [t.get_text() for ax in figs["training"].axes for t in ax.texts]
  assert texts == ["no history.jsonl"]


def test_finish_run_writes_images(tmp_path, monkeypatch):
  tf = pytest.importorskip("tensorflow")
  workdir = str(tmp_path / "run")
  write_run(workdir)
  draw_figures = plots.figures
  # One family keeps the test fast; figures() is tested on its own.
  monkeypatch.setattr(plots, "figures",
                      lambda run: draw_figures(run, families=("nc4",)))

  paths = plots.finish_run(workdir)

  assert paths == [os.path.join(workdir, "figures", "nc4.png"),
                   os.path.join(workdir, "figures", "nc4.pdf")]
  logdir = os.path.join(workdir, "tensorboard")
  steps = {}
  for name in os.listdir(logdir):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(logdir, name)):
      for value in event.summary.value:
        steps[value.tag] = event.step
  assert steps == {"figures/nc4": 10}


def test_tensorboard_images(figs, tmp_path):
  tf = pytest.importorskip("tensorflow")
  figs = {family: figs[family] for family in ("nc1", "ranks")}
  logdir = str(tmp_path / "tensorboard")

  plots.write_tensorboard_images(figs, logdir, step=10)

  images = {}
  for name in os.listdir(logdir):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(logdir, name)):
      for value in event.summary.value:
        images[value.tag] = (event.step, value.tensor.string_val)
  assert set(images) == {"figures/nc1", "figures/ranks"}
  step, (width, height, png) = images["figures/ranks"]
  fig = figs["ranks"]
  expected_width = round(fig.get_figwidth() * plots.TENSORBOARD_DPI)
  expected_height = round(fig.get_figheight() * plots.TENSORBOARD_DPI)
  decoded = tf.io.decode_png(png).numpy()
  assert step == 10
  assert (int(width), int(height)) == (expected_width, expected_height)
  assert decoded.shape == (expected_height, expected_width, 3)


def legend_and_axes_boxes(fig):
  """Draw `fig` and return the display boxes of its legends and its axes."""
  backend_agg.FigureCanvasAgg(fig).draw()
  renderer = fig.canvas.get_renderer()
  legends = [child.get_window_extent(renderer) for ax in fig.axes
             for child in ax.get_children()
             if isinstance(child, mpl_legend.Legend)]
  axes = [ax.get_window_extent(renderer) for ax in fig.axes]
  return legends, axes


@pytest.mark.parametrize("columns", [1, 2])
def test_nc1_legends_do_not_overlap(tmp_path, columns):
  # Eleven epochs put six epoch entries in the trace panel's legend,
  # beside the three line styles, in a 1.5 in high panel.
  runs = []
  for column in range(columns):
    workdir = str(tmp_path / ("run%d" % column))
    write_run(workdir, epochs=tuple(range(11)))
    runs.append(rundir.load_run(workdir))

  fig = plots.compare_figures(runs, families=("nc1",))["nc1"]
  legends, axes = legend_and_axes_boxes(fig)

  for first, second in itertools.combinations(legends, 2):
    assert not first.overlaps(second)
  for legend, ax in itertools.product(legends, axes):
    assert not legend.overlaps(ax)
  for legend in legends:
    assert fig.bbox.x0 <= legend.x0
    assert legend.x1 <= fig.bbox.x1
  assert len(legends) == 2 * columns


def test_trace_legend_style_column(figs):
  fig = figs["nc1"]
  backend_agg.FigureCanvasAgg(fig).draw()
  texts = fig.axes[0].get_legend().get_texts()
  right_edges = [text.get_window_extent().x1 for text in texts[:3]]
  left_edges = [text.get_window_extent().x0 for text in texts[3:]]

  assert [text.get_text() for text in texts] == [
      "epoch 0", "epoch 5", "epoch 10",
      "trace_within", "trace_between", "trace_total"]
  assert max(right_edges) < min(left_edges)


@pytest.mark.parametrize("families, expected", [
    (("nc3",), "Wrote 1 figure as PNG and PDF"),
    (("nc3", "nc4"), "Wrote 2 figures as PNG and PDF"),
])
def test_save_figures_log_count(figs, tmp_path, caplog, families, expected):
  caplog.set_level(logging.INFO, logger="absl")

  plots.save_figures({f: figs[f] for f in families}, str(tmp_path))

  assert any(r.getMessage().startswith(expected) for r in caplog.records)
