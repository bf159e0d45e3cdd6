"""Tests for inc_tf.report and inc_tf.table on hand-written run directories."""

import os
import subprocess
import sys

from absl import app
import pytest

from inc_tf import report
from inc_tf import rundir
from inc_tf import table
from tests.test_plots import NOT_COLLAPSING
from tests.test_plots import write_lines
from tests.test_plots import write_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "inc_tf.report", *args],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=False)


@pytest.fixture(name="run_dir")
def fixture_run_dir(tmp_path):
  workdir = str(tmp_path / "run")
  write_run(workdir)
  return workdir


def table_rows(text):
  """Return the data rows of a final table, split into cells."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("-----"))
  rows = []
  for line in lines[start + 1:]:
    if not line[:5].strip().isdigit():
      break
    rows.append(line.split())
  return rows


def test_table_rows(run_dir):
  text = table.format_final_table(rundir.load_run(run_dir))

  lines = text.splitlines()
  rows = table_rows(text)
  assert lines[0] == "Final epoch 10: fashion_mnist / mlp 5x64 / 10 epochs"
  assert lines[1].split()[:4] == ["index", "layer", "within_fraction", "nc1"]
  assert "ncc_accuracy (test)" in lines[1]
  assert len(rows) == 6
  # Index, layer, within_fraction, nc1 = within / between at 0.15 of 30.
  assert rows[3][:4] == ["3", "dense_3", "0.15", "0.176"]
  # ncc_accuracy on the test split is 0.05 below train: 0.95 - 0.5 * 0.15.
  assert rows[3][9] == "0.825"


def test_table_onset_line(run_dir):
  text = table.format_final_table(rundir.load_run(run_dir))

  assert text.splitlines()[-1] == (
      "Collapse onset at epoch 10 (epsilon = 0.2): probe point 3 (dense_3); "
      "3 of 6 probe points collapsed.")


def test_table_no_onset(tmp_path):
  workdir = str(tmp_path / "run")
  write_run(workdir, final_fractions=NOT_COLLAPSING)

  text = table.format_final_table(rundir.load_run(workdir))

  assert text.splitlines()[-1] == (
      "No collapse onset at epoch 10 (epsilon = 0.2): within_fraction at "
      "the last probe point is 0.3.")


def test_table_null_as_dash(run_dir):
  run = rundir.load_run(run_dir)
  run.records[("train", 10, 2)]["cdnv"] = None

  rows = table_rows(table.format_final_table(run))

  assert rows[2][4] == "-"


def test_table_incomplete_epoch(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = write_run(workdir)
  write_lines(os.path.join(workdir, "metrics.jsonl"),
              [r for r in metrics if r["epoch"] < 10 or r["index"] < 4])
  write_lines(os.path.join(workdir, "onset.jsonl"), [])

  text = table.format_final_table(rundir.load_run(workdir))

  assert table_rows(text)[5][2:] == ["-"] * len(table.COLUMNS)
  assert text.splitlines()[-1].startswith(
      "Collapse onset at epoch 10 unknown")


def test_report_writes_figures(run_dir):
  text = report.report(workdir=run_dir, families=("nc1", "nc4"))

  figures_dir = os.path.join(run_dir, "figures")
  paths = [os.path.join(figures_dir, name) for name in
           ("nc1.png", "nc1.pdf", "nc4.png", "nc4.pdf")]
  assert text.splitlines()[:4] == paths
  for path in paths:
    assert os.path.getsize(path) > 1000
  assert "Collapse onset at epoch 10" in text
  assert len(table_rows(text)) == 6


def test_report_out_dir(run_dir, tmp_path):
  out_dir = str(tmp_path / "elsewhere")

  report.report(workdir=run_dir, out_dir=out_dir, families=("nc3",))

  assert sorted(os.listdir(out_dir)) == ["nc3.pdf", "nc3.png"]


def test_report_compare(tmp_path):
  first = str(tmp_path / "collapse")
  second = str(tmp_path / "no_collapse")
  write_run(first)
  write_run(second, final_fractions=NOT_COLLAPSING)

  text = report.report(compare=[first, second], families=("nc3",))

  compare_dir = os.path.join(first, "figures", "compare")
  assert sorted(os.listdir(compare_dir)) == ["nc3.pdf", "nc3.png"]
  assert text.count("Final epoch 10:") == 2
  assert "No collapse onset at epoch 10" in text


def test_report_needs_one_source(run_dir):
  with pytest.raises(app.UsageError, match="exactly one"):
    report.report(workdir=run_dir, compare=[run_dir, run_dir])
  with pytest.raises(app.UsageError, match="exactly one"):
    report.report()


def test_report_compare_needs_two(run_dir):
  with pytest.raises(app.UsageError, match="at least two"):
    report.report(compare=[run_dir])


def test_report_no_metrics(tmp_path):
  empty = str(tmp_path / "empty")
  os.makedirs(empty)

  with pytest.raises(report.RunDirectoryError, match="metrics.jsonl"):
    report.report(workdir=empty)


def test_cli_prints_table(run_dir):
  result = run_cli("--workdir=" + run_dir, "--families=nc1")

  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0] == os.path.join(run_dir, "figures",
                                                       "nc1.png")
  assert "Collapse onset at epoch 10" in result.stdout


def test_cli_missing_workdir(tmp_path):
  missing = str(tmp_path / "nowhere")

  result = run_cli("--workdir=" + missing)

  assert result.returncode == 1
  assert missing in result.stderr
  assert "python -m inc_tf.main" in result.stderr
  assert "Traceback" not in result.stderr


def test_no_tensorflow_import():
  code = ("import sys; from inc_tf import plots, report, rundir, table; "
          "print('tensorflow' in sys.modules)")

  result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          check=False)

  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False"


def test_cli_two_sources_one_line(run_dir):
  result = run_cli("--workdir=" + run_dir, "--compare=a,b")

  assert result.returncode == 1
  assert result.stderr.splitlines()[-1].startswith(
      "Error: Pass exactly one of --workdir=DIR or --compare=DIR1,DIR2; got ")
  # absl prints the module docstring before an uncaught app.UsageError.
  assert "Redraw the figures" not in result.stderr
