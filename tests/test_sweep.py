"""Tests for inc_tf.sweep: rates, member directories, summaries, command."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

from inc_tf import config as config_lib
from inc_tf import sweep
from tests.test_readers import write_idx
from tests.test_report import REPO

FLAGS = flags.FLAGS

# The sweep's flags and its rates: geomspace gives 0.001, 0.316 and 100, and
# the last makes the MSE loss overflow within the first epoch.
SWEEP_FLAGS = ("--sweep_lr_min=0.001", "--sweep_lr_max=100",
               "--sweep_num_rates=3")
RATES = tuple(sweep.learning_rates(0.001, 100, 3))


def _write_tiny_mnist(folder, per_class=20, test_per_class=5, side=8):
  """Write MNIST-format IDX files of a separable 10-class toy problem.

  Class c has a bright row c mod `side` and a bright column c div `side`
  on a noisy background, so a small MLP learns it within two epochs.
  """
  rng = np.random.default_rng(0)
  os.makedirs(folder, exist_ok=True)
  for split, count in (("train", per_class), ("t10k", test_per_class)):
    labels = np.repeat(np.arange(10, dtype=np.uint8), count)
    images = rng.integers(0, 60, size=(len(labels), side, side),
                          dtype=np.uint8)
    for i, label in enumerate(labels):
      images[i, label % side, :] = 255
      images[i, :, label // side] = 200
    write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte"), images)
    write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte"), labels)
  return folder


def _base_config(data_dir, workdir):
  return config_lib.RunConfig(
      dataset="mnist", data_dir=str(data_dir), model="mlp", depth=2, width=16,
      epochs=2, batch_size=32, lr=0.01, weight_decay=5e-4, warmup_epochs=1,
      lr_decay=0.2, lr_decay_steps=1, measure_epochs=(),
      eval_batch_size=100, checkpoint_every=1, workdir=str(workdir),
      jit_compile="false")


def _flagfile_text(config):
  """Return an absl flagfile that sets every field of `config` but `lr`."""
  lines = ["# Tiny sweep written by the test."]
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.name == "lr" or value is None:
      continue
    if isinstance(value, tuple):
      value = ",".join(map(str, value))
    lines.append(f"--{field.name}={value}")
  return "\n".join(lines) + "\n"


def _history_lines(workdir):
  path = os.path.join(workdir, "history.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return len(f.read().splitlines())


def _without_workdir(rows):
  return [{k: v for k, v in row.items() if k != "workdir"} for row in rows]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return _write_tiny_mnist(str(tmp_path_factory.mktemp("tiny_mnist")))


@pytest.fixture(scope="module")
def swept(data_dir, tmp_path_factory):
  """Run one three-rate sweep and return `(base_config, members, rows)`."""
  from tests import conftest  # pylint: disable=g-import-not-at-top
  base = _base_config(data_dir, tmp_path_factory.mktemp("sweep"))
  sweep_members = sweep.members(base, RATES)
  rows, _ = sweep.run_sweep(base, sweep_members,
                            strategy=conftest._strategy(["/cpu:0"]),
                            flags_text_for=sweep.member_flags_text)
  return base, sweep_members, rows


# Rates, members and flags.


def test_rates_log_uniform():
  rates = sweep.learning_rates(1e-4, 0.25, 5)
  assert len(rates) == 5
  assert rates[0] == pytest.approx(1e-4)
  assert rates[-1] == pytest.approx(0.25)
  np.testing.assert_allclose(np.diff(np.log(rates)), np.log(2500) / 4)
  assert all(isinstance(rate, float) for rate in rates)


def test_default_grid_contains_paper_rates():
  rates = sweep.learning_rates(1e-4, 0.25, 25)
  for published in (0.005, 0.0096, 0.0184, 0.094):
    assert min(abs(rate / published - 1) for rate in rates) < 5e-3


def test_rates_single():
  assert sweep.learning_rates(0.01, 0.1, 1) == [pytest.approx(0.01)]


@pytest.mark.parametrize("lr_min,lr_max,num", [
    (0.0, 0.1, 3), (0.2, 0.1, 3), (1e-3, 0.1, 0)])
def test_rates_reject(lr_min, lr_max, num):
  with pytest.raises(ValueError, match="sweep"):
    sweep.learning_rates(lr_min, lr_max, num)


def test_member_dir_names():
  assert sweep.member_dir("/s", 0, 1e-4) == "/s/lr_0_0.0001"
  assert sweep.member_dir("/s", 3, 0.0123456) == "/s/lr_3_0.0123"
  assert sweep.member_dir("/s", 7, 1e6) == "/s/lr_7_1e+06"


def test_members_keep_epoch_zero_only():
  base = config_lib.RunConfig(workdir="/s", measure_epochs=(0, 10, 50),
                              epochs=100)
  members = sweep.members(base, [0.01, 0.1])
  assert [m.config.measure_epochs for m in members] == [(0,), (0,)]
  assert [m.config.lr for m in members] == [0.01, 0.1]
  assert members[1].config.workdir == "/s/lr_1_0.1"
  assert dataclasses.replace(members[0].config, lr=base.lr, workdir="/s",
                             measure_epochs=(0, 10, 50)) == base


def test_members_measure_all():
  base = config_lib.RunConfig(workdir="/s", measure_epochs=(10, 50))
  members = sweep.members(base, [0.01], measure_all=True)
  assert members[0].config.measure_epochs == (10, 50)
  assert sweep.members(base, [0.01])[0].config.measure_epochs == ()


def test_member_flags_text_replaces_rate():
  config = config_lib.RunConfig(lr=0.0123, measure_epochs=(0,),
                                workdir="/s/lr_2_0.0123")
  lines = sweep.member_flags_text(config).splitlines()
  assert [l for l in lines if l.startswith("--lr=")] == ["--lr=0.0123"]
  assert [l for l in lines if l.startswith("--measure_epochs=")] == [
      "--measure_epochs=0"]
  assert "--workdir=/s/lr_2_0.0123" in lines
  assert any(l.startswith("--lr_decay=") for l in lines)


# Summaries from synthetic rows.


def _row(index, test, status=sweep.FINISHED):
  return {"index": index, "lr": 10.0 ** (index - 3), "status": status,
          "epochs_completed": 5, "final_train_accuracy": 1.0,
          "final_test_accuracy": test, "onset": 2, "best": False,
          "workdir": f"/s/lr_{index}"}


def test_mark_best_highest_test():
  rows = [_row(0, 0.5), _row(1, 0.8), _row(2, 0.9, sweep.DIVERGED),
          _row(3, 0.7)]
  best = sweep.mark_best(rows)
  assert best["index"] == 1
  assert [r["best"] for r in rows] == [False, True, False, False]


def test_mark_best_tie_smaller_rate():
  rows = [_row(2, 0.8), _row(1, 0.8)]
  assert sweep.mark_best(rows)["index"] == 1


def test_mark_best_none_finished():
  rows = [_row(0, None, sweep.MISSING), _row(1, 0.5, sweep.UNFINISHED)]
  assert sweep.mark_best(rows) is None
  assert not any(r["best"] for r in rows)


def test_format_table_rows():
  rows = [_row(0, 0.5), _row(1, 0.8), _row(2, None, sweep.MISSING)]
  rows[2]["final_train_accuracy"] = None
  sweep.mark_best(rows)
  lines = sweep.format_table(rows).splitlines()
  assert lines[0].split() == ["index", "lr", "train_accuracy",
                              "test_accuracy", "epochs", "status", "workdir"]
  assert lines[1].split() == ["0", "0.001", "1.0000", "0.5000", "5",
                              "finished", "/s/lr_0"]
  assert lines[2].split() == ["1", "0.01", "1.0000", "0.8000", "5",
                              "finished", "(best)", "/s/lr_1"]
  assert lines[3].split() == ["2", "0.1", "-", "-", "5", "missing", "/s/lr_2"]
  assert lines[4] == ("Best: member 1, lr 0.01, final test accuracy 0.8000, "
                      "in /s/lr_1.")
  assert lines[5] == "Not finished: members 2."


def test_rerun_command():
  command = sweep.rerun_command(_row(1, 0.8), (0, 10, 50))
  assert command == ("python -m inc_tf.main --flagfile=/s/lr_1/flags.txt "
                     "--measure_epochs=0,10,50 --workdir=/s/lr_1_full")


# A real sweep on tiny data.


def test_sweep_statuses(swept):
  _, _, rows = swept
  assert [r["index"] for r in rows] == [0, 1, 2]
  assert [r["lr"] for r in rows] == list(RATES)
  assert [r["status"] for r in rows] == ["finished", "finished", "diverged"]
  assert [r["epochs_completed"] for r in rows[:2]] == [2, 2]


def test_sweep_accuracies(swept):
  _, _, rows = swept
  for row in rows[:2]:
    assert 0.0 <= row["final_train_accuracy"] <= 1.0
    assert 0.0 <= row["final_test_accuracy"] <= 1.0
  assert rows[2]["final_test_accuracy"] is None


def test_sweep_best(swept):
  _, _, rows = swept
  # 0.001 barely moves the weights in two epochs; 0.316 learns the toy task.
  assert rows[1]["final_test_accuracy"] > 0.5
  assert rows[1]["final_test_accuracy"] > rows[0]["final_test_accuracy"]
  assert [r["best"] for r in rows] == [False, True, False]


def test_sweep_diverged_marker(swept):
  _, members, _ = swept
  marker = sweep.read_diverged_marker(members[2].config.workdir)
  assert marker["lr"] == RATES[2]
  assert "non-finite" in marker["message"]
  assert marker["config"]["lr"] == RATES[2]


def test_sweep_summary_files(swept):
  base, _, rows = swept
  with open(os.path.join(base.workdir, sweep.SUMMARY_JSONL),
            encoding="utf-8") as f:
    written = [json.loads(line) for line in f]
  assert written == rows
  with open(os.path.join(base.workdir, sweep.SUMMARY_TABLE),
            encoding="utf-8") as f:
    table = f.read()
  assert table == sweep.format_table(rows)
  best = [r for r in rows if r["best"]][0]
  assert f"Best: member {best['index']}," in table


def test_member_workdirs_and_flags(swept):
  _, members, rows = swept
  for member, row in zip(members, rows):
    assert row["workdir"] == member.config.workdir
    with open(os.path.join(row["workdir"], "flags.txt"),
              encoding="utf-8") as f:
      assert f"--lr={member.lr!r}" in f.read().splitlines()


def test_rerun_does_not_retrain(swept):
  from tests import conftest  # pylint: disable=g-import-not-at-top
  base, members, rows = swept
  marker = os.path.join(members[2].config.workdir, sweep.DIVERGED_FILE)
  before = [_history_lines(m.config.workdir) for m in members]
  marker_time = os.stat(marker).st_mtime_ns
  again, _ = sweep.run_sweep(base, members,
                             strategy=conftest._strategy(["/cpu:0"]))
  assert [_history_lines(m.config.workdir) for m in members] == before
  assert os.stat(marker).st_mtime_ns == marker_time
  assert again == rows


def test_marker_other_settings_rejected(swept):
  from inc_tf import train  # pylint: disable=g-import-not-at-top
  _, members, _ = swept
  member = members[2]
  changed = dataclasses.replace(member.config, weight_decay=0.1)
  marker = sweep.read_diverged_marker(member.config.workdir)
  with pytest.raises(ValueError, match="weight_decay: 0.0005 there, 0.1 now"):
    sweep.check_marker_matches(marker, changed, train.RESUMABLE_FIELDS)
  sweep.check_marker_matches(
      marker, dataclasses.replace(member.config, checkpoint_every=7),
      train.RESUMABLE_FIELDS)


def test_collect_lists_missing(swept, tmp_path):
  base, _, _ = swept
  other = dataclasses.replace(base, workdir=str(tmp_path))
  rows, table = sweep.collect(other, sweep.members(other, RATES))
  assert [r["status"] for r in rows] == ["missing"] * 3
  assert "Not finished: members 0, 1, 2." in table
  assert "Best: none yet" in table


# The command: --sweep_index tasks, then --collect.


def _run_command(argv, monkeypatch):
  from tests import conftest  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sweep, "default_strategy",
                      lambda: conftest._strategy(["/cpu:0"]))
  try:
    FLAGS(["sweep"] + argv)
    return sweep.main(["sweep"])
  finally:
    FLAGS.unparse_flags()


def test_index_then_collect_match(swept, data_dir, tmp_path, monkeypatch,
                                  capsys):
  # Members 0 and 2 come from the module's sweep, as if two array tasks had
  # finished; the command trains member 1, then collects all three.
  _, members, rows = swept
  cluster = tmp_path / "cluster"
  for index in (0, 2):
    shutil.copytree(members[index].config.workdir,
                    cluster / os.path.basename(members[index].config.workdir))
  flagfile = tmp_path / "tiny.cfg"
  flagfile.write_text(_flagfile_text(_base_config(data_dir, cluster)))
  common = [f"--flagfile={flagfile}", *SWEEP_FLAGS]

  assert _run_command(common + ["--sweep_index=1"], monkeypatch) == 0
  assert not os.path.exists(cluster / sweep.SUMMARY_JSONL)
  assert _run_command(common + ["--sweep_index=2"], monkeypatch) == 0
  assert _run_command(common + ["--collect"], monkeypatch) == 0
  output = capsys.readouterr().out

  with open(cluster / sweep.SUMMARY_JSONL, encoding="utf-8") as f:
    collected = [json.loads(line) for line in f]
  assert _without_workdir(collected) == _without_workdir(rows)
  assert [r["workdir"] for r in collected] == [
      str(cluster / f"lr_{i}_{rate:.3g}") for i, rate in enumerate(RATES)]
  assert "Best: member 1," in output
  assert "Retrain the best rate" in output
  figures = cluster / f"lr_1_{RATES[1]:.3g}" / "figures"
  assert any(name.endswith(".png") for name in os.listdir(figures))


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "inc_tf.sweep", *args],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=False)


def test_index_out_of_range(tmp_path):
  result = _run_cli(*SWEEP_FLAGS, "--sweep_index=3", f"--workdir={tmp_path}")

  assert result.returncode == 1
  assert result.stderr == (
      "Error: Invalid --sweep_index 3: the sweep has 3 rates, so pass "
      "0 .. 2.\n")


def test_collect_error_one_line(tmp_path):
  member = tmp_path / f"lr_0_{RATES[0]:.3g}"
  member.mkdir()
  (member / sweep.DIVERGED_FILE).write_text("{")

  result = _run_cli(*SWEEP_FLAGS, "--collect", f"--workdir={tmp_path}")

  # Progress log lines come first; the error is the last line.
  last_line = result.stderr.splitlines()[-1]
  assert result.returncode == 1
  assert last_line.startswith(
      f"Error: {member / sweep.DIVERGED_FILE} is not valid JSON (")
  assert last_line.endswith("Delete it to retrain the member.")
  assert not re.search(r"^E\d{4} ", result.stderr, re.MULTILINE)
