"""Tests for inc_tf.etf_experiment: counts, summaries, table, figure, command."""

import contextlib
import dataclasses
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from inc_tf import config as config_lib
from inc_tf import etf_experiment
from inc_tf import plots
from tests.test_report import REPO


def _summary(etf_layers, train, test, total=5, diverged=False, onset=None):
  return {
      "etf_layers": etf_layers,
      "layers_trained": None if total is None else total - etf_layers,
      "total_weight_layers": total,
      "final_train_accuracy": train,
      "final_test_accuracy": test,
      "diverged": diverged,
      "onset": onset,
      "workdir": f"runs/etf_{etf_layers}",
  }


def _sweep():
  return [
      _summary(2, 0.9, 0.7),
      _summary(0, 1.0, 0.875, onset=3),
      _summary(1, 0.99, 0.85),
      _summary(3, None, None, total=None, diverged=True),
  ]


def test_parse_counts_sorts_and_dedups():
  assert etf_experiment.parse_layer_counts(["3", " 0", "1", "3"]) == (0, 1, 3)


@pytest.mark.parametrize("values", [[], None, ["a"], ["1", "-2"], ["1.5"]])
def test_parse_counts_rejects(values):
  with pytest.raises(ValueError, match="etf_layer_counts"):
    etf_experiment.parse_layer_counts(values)


def test_check_counts_mlp_limit():
  config = config_lib.RunConfig(model="mlp", depth=3)
  etf_experiment.check_layer_counts(config, (0, 1, 4))
  with pytest.raises(ValueError, match=r"\[5\].*depth 3 has 4 weight layers"):
    etf_experiment.check_layer_counts(config, (0, 5))


def test_check_counts_mlp_square_first_layer():
  config = config_lib.RunConfig(model="mlp", depth=3, width=16,
                                dataset="fashion_mnist")
  etf_experiment.check_layer_counts(config, (0, 4), input_features=16)
  etf_experiment.check_layer_counts(config, (0, 3), input_features=784)
  with pytest.raises(ValueError, match=(
      r"\[4\]: fixing all 4 weight layers .* 784 x 16 for fashion_mnist "
      r"images.*at most 3")):
    etf_experiment.check_layer_counts(config, (0, 4), input_features=784)


def test_check_counts_convnet_limit():
  config = config_lib.RunConfig(model="convnet", depth=3)
  etf_experiment.check_layer_counts(config, (0, 1))
  with pytest.raises(ValueError, match="only Dense layers"):
    etf_experiment.check_layer_counts(config, (2,))


def test_run_config_for_subdirectory():
  base = config_lib.RunConfig(workdir="/tmp/sweep", etf_layers=7)
  config = etf_experiment.run_config_for(base, 2)
  assert config.etf_layers == 2
  assert config.workdir == "/tmp/sweep/etf_2"
  assert dataclasses.replace(config, etf_layers=7, workdir="/tmp/sweep") == base


def test_summary_record_from_result():
  result = type("Result", (), dict(
      workdir="w", final_train_accuracy=0.5, final_test_accuracy=float("nan"),
      diverged=False, onset=4, total_weight_layers=11))()
  record = etf_experiment.summary_record(3, "runs/etf_3", result)
  assert record["layers_trained"] == 8
  assert record["total_weight_layers"] == 11
  assert record["final_train_accuracy"] == 0.5
  assert record["final_test_accuracy"] is None
  assert record["onset"] == 4
  assert record["workdir"] == "runs/etf_3"
  assert record["diverged"] is False


def test_fill_layers_trained_for_diverged():
  summaries = _sweep()
  etf_experiment.fill_layers_trained(summaries)
  assert summaries[3]["total_weight_layers"] == 5
  assert summaries[3]["layers_trained"] == 2


@pytest.mark.parametrize("override,expected", [(None, 3), (6, 6)])
def test_unconstrained_onset_source(override, expected):
  assert etf_experiment.unconstrained_onset(_sweep(), override) == expected


def test_unconstrained_onset_unknown():
  assert etf_experiment.unconstrained_onset(_sweep()[2:]) is None


def test_format_table_rows():
  summaries = _sweep()
  etf_experiment.fill_layers_trained(summaries)
  lines = etf_experiment.format_table(summaries, onset=3).splitlines()
  assert lines[0].split() == ["etf_layers", "layers_trained", "train_accuracy",
                              "test_accuracy", "note"]
  assert lines[1].split() == ["0", "5", "1.0000", "0.8750", "unconstrained"]
  assert lines[2].split() == ["1", "4", "0.9900", "0.8500"]
  assert lines[3].split() == ["2", "3", "0.9000", "0.7000"]
  assert lines[4].split() == ["3", "2", "-", "-", "diverged"]
  assert "probe point 3" in lines[5]
  assert "layers_trained >= 3" in lines[5]


def test_format_table_without_onset():
  text = etf_experiment.format_table(_sweep()[2:3])
  assert "onset: unknown" in text


def test_format_table_no_collapse():
  text = etf_experiment.format_table(_sweep(), onset=None)
  assert "onset: none, because the etf_0 run" in text


def test_figure_lines_and_onset():
  figure = etf_experiment.draw_figure(_sweep(), onset=3)
  ax = figure.axes[0]
  lines = {line.get_label(): line for line in ax.get_lines()}
  onset_lines = [line for line in ax.get_lines()
                 if line.get_gid() == etf_experiment.ONSET_GID]
  np.testing.assert_array_equal(lines["train"].get_xdata(), [3, 4, 5])
  np.testing.assert_array_equal(lines["train"].get_ydata(), [0.9, 0.99, 1.0])
  np.testing.assert_array_equal(lines["test"].get_ydata(), [0.7, 0.85, 0.875])
  assert len(onset_lines) == 1
  assert list(onset_lines[0].get_xdata()) == [3, 3]
  assert ax.get_xlabel() == "layers trained"


def test_figure_uses_plots_style(monkeypatch):
  monkeypatch.setitem(plots.STYLE, "axes.labelsize", 5.0)

  figure = etf_experiment.draw_figure(_sweep(), onset=3)

  assert figure.axes[0].xaxis.label.get_fontsize() == 5.0


def test_figure_without_onset():
  figure = etf_experiment.draw_figure(_sweep(), onset=None)
  gids = [line.get_gid() for line in figure.axes[0].get_lines()]
  assert etf_experiment.ONSET_GID not in gids


def test_figure_names_diverged_runs():
  summaries = _sweep()
  etf_experiment.fill_layers_trained(summaries)
  figure = etf_experiment.draw_figure(summaries)
  labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
  assert "diverged: 2" in labels


def test_write_summary_files(tmp_path):
  summaries = _sweep()
  table = etf_experiment.write_summary(str(tmp_path), summaries, onset=3)
  with open(tmp_path / etf_experiment.SUMMARY_JSONL, encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert [r["etf_layers"] for r in records] == [0, 1, 2, 3]
  assert records[0] == _sweep()[1]
  assert (tmp_path / etf_experiment.SUMMARY_TABLE).read_text() == table
  assert (tmp_path / "etf_accuracy.png").read_bytes()[:4] == b"\x89PNG"
  assert (tmp_path / "etf_accuracy.pdf").read_bytes()[:4] == b"%PDF"
  assert not list(tmp_path.glob(".tmp_*"))


def test_write_summary_replaces(tmp_path):
  etf_experiment.write_summary(str(tmp_path), _sweep())
  etf_experiment.write_summary(str(tmp_path), _sweep()[:2])
  lines = (tmp_path / etf_experiment.SUMMARY_JSONL).read_text().splitlines()
  assert len(lines) == 2


# The command end to end on tiny IDX files.


def _use_one_device(monkeypatch):
  """Make `train.run`'s default strategy a single-CPU one.

  TF 2.21 numbers the collective ops of every MirroredStrategy from the same
  keys, so a two-replica run here could fail with "Shape mismatch in the
  collective instance" after another test's run of a different model.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from inc_tf import train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train, "default_strategy",
                      lambda: tf.distribute.OneDeviceStrategy("/cpu:0"))


def _run_command(workdir, data_dir, counts="2,0"):
  """Run the command's `main` with tiny settings; return its exit code and stdout."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top

  argv = ["etf_experiment", "--dataset=mnist", f"--data_dir={data_dir}",
          "--model=mlp", "--depth=3", "--width=16", "--epochs=1",
          "--batch_size=50", "--lr=0.05", "--eval_batch_size=100",
          "--measure_epochs=", "--jit_compile=false",
          f"--workdir={workdir}", f"--etf_layer_counts={counts}"]
  output = io.StringIO()
  with flagsaver.flagsaver(), pytest.MonkeyPatch.context() as monkeypatch:
    _use_one_device(monkeypatch)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    with contextlib.redirect_stdout(output):
      exit_code = etf_experiment.main(["etf_experiment"])
  return exit_code, output.getvalue()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """Run the command once on tiny IDX files; return (workdir, exit code, stdout)."""
  from tests import test_etf  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("etf_command")
  data_dir = test_etf.write_idx_dataset(root / "data")
  workdir = root / "sweep"
  exit_code, output = _run_command(workdir, data_dir)
  return workdir, data_dir, exit_code, output


def _read_summary(workdir):
  with open(workdir / etf_experiment.SUMMARY_JSONL, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_command_writes_summary(sweep):
  workdir, _, exit_code, output = sweep
  records = _read_summary(workdir)

  assert exit_code == 0
  assert [r["etf_layers"] for r in records] == [0, 2]
  assert [r["layers_trained"] for r in records] == [4, 2]
  for record in records:
    assert 0.0 <= record["final_train_accuracy"] <= 1.0
    assert 0.0 <= record["final_test_accuracy"] <= 1.0
    assert record["diverged"] is False
  assert "unconstrained" in output
  assert (workdir / etf_experiment.SUMMARY_TABLE).read_text() in output
  assert (workdir / "etf_accuracy.png").exists()


def test_command_writes_run_flags(sweep):
  workdir = sweep[0]
  flags_txt = (workdir / "etf_2" / "flags.txt").read_text().splitlines()
  assert "--etf_layers=2" in flags_txt
  assert f"--workdir={workdir / 'etf_2'}" in flags_txt
  assert (workdir / "etf_2" / "history.jsonl").exists()


def test_command_rerun_skips_finished(sweep):
  workdir, data_dir, _, _ = sweep
  history = workdir / "etf_2" / "history.jsonl"
  history_before = history.read_text()
  summary_before = _read_summary(workdir)

  exit_code, _ = _run_command(workdir, data_dir)

  assert exit_code == 0
  assert history.read_text() == history_before
  assert _read_summary(workdir) == summary_before


def test_command_rejects_unsquare_first_layer(tmp_path):
  from tests import test_etf  # pylint: disable=g-import-not-at-top
  data_dir = test_etf.write_idx_dataset(tmp_path / "data")
  workdir = tmp_path / "sweep"

  with pytest.raises(SystemExit, match=(
      r"Error: Invalid --etf_layer_counts \[4\]: fixing all 4 weight layers")):
    _run_command(workdir, data_dir, counts="0,4")
  assert not (workdir / "etf_0").exists()


def test_cli_bad_count_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "inc_tf.etf_experiment",
       "--etf_layer_counts=0,a", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

  assert result.returncode == 1
  assert result.stderr == (
      "Error: Invalid --etf_layer_counts entry 'a': each entry must be an "
      "integer >= 0, e.g. --etf_layer_counts=0,1,2.\n")
