"""Tests for the error output of `python -m inc_tf.main`."""

import re
import subprocess
import sys

from tests import test_etf
from tests.test_report import REPO


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "inc_tf.main", *args],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)


def test_flag_error_one_line(tmp_path):
  result = run_main("--epochs=2", "--measure_epochs=5",
                    f"--workdir={tmp_path}")

  assert result.returncode == 1
  assert result.stderr == (
      "Error: --measure_epochs lists epochs after the last epoch 2: 5. "
      "Remove them or raise --epochs.\n")


def test_unexpected_argument_one_line(tmp_path):
  result = run_main("extra", f"--workdir={tmp_path}")

  assert result.returncode == 1
  assert result.stderr == (
      "Error: unexpected arguments 'extra'. Pass settings as --name=value "
      "flags; see --help.\n")


def test_empty_data_dir_plain_error(tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()

  result = run_main("--dataset=mnist", f"--data_dir={data_dir}",
                    "--epochs=1", f"--workdir={tmp_path / 'run'}")

  last_line = result.stderr.splitlines()[-1]
  assert result.returncode == 1
  assert last_line.startswith(
      f"Error: --data_dir {data_dir} contains none of the mnist files. ")
  assert not (tmp_path / "run").exists()
  assert "Traceback" not in result.stderr
  # absl log lines start with the level letter and the date, e.g. E1204.
  assert not re.search(r"^[EF]\d{4} .*data_dir", result.stderr, re.MULTILINE)


def test_file_as_workdir_plain_error(tmp_path):
  data_dir = test_etf.write_idx_dataset(tmp_path / "data")
  blocker = tmp_path / "afile"
  blocker.write_text("kept\n")

  for workdir in (blocker, blocker / "sub"):
    result = run_main("--dataset=mnist", f"--data_dir={data_dir}",
                      "--epochs=1", f"--workdir={workdir}")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"Error: workdir '{workdir}' ")
  assert blocker.read_text() == "kept\n"


def test_unfixable_etf_layers_leave_no_workdir(tmp_path):
  data_dir = test_etf.write_idx_dataset(tmp_path / "data")
  workdir = tmp_path / "run"

  result = run_main("--dataset=mnist", f"--data_dir={data_dir}",
                    "--model=mlp", "--depth=2", "--width=16", "--epochs=1",
                    "--etf_layers=3", f"--workdir={workdir}")

  assert result.returncode == 1
  assert result.stderr.splitlines()[-1].startswith(
      "Error: Hidden layer 'dense_1' has kernel shape (784, 16)")
  assert not workdir.exists()
