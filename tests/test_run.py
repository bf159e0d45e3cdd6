"""Tests of whole training runs: resume, divergence, run-directory checks."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from inc_tf import config as config_lib
from inc_tf import metrics
from inc_tf import records
from inc_tf import train
from tests.test_data import make_mnist_folder

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Interrupt(Exception):
  pass


class _InterruptAfter(keras.callbacks.Callback):
  """Raise at the end of one epoch, before its history line and checkpoint."""

  def __init__(self, epoch):
    super().__init__()
    self.epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    if epoch + 1 == self.epoch:
      raise _Interrupt(f"interrupted after epoch {self.epoch}")


@pytest.fixture(name="tiny_config")
def fixture_tiny_config(tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  make_mnist_folder(data_dir, train_per_class=12, test_per_class=4)
  return config_lib.RunConfig(
      dataset="mnist", data_dir=str(data_dir), model="mlp", depth=2, width=16,
      epochs=4, batch_size=32, lr=0.02, weight_decay=1e-3, lr_decay=0.5,
      lr_decay_steps=2, measure_epochs=(0, 2, 3), checkpoint_every=2,
      eval_batch_size=64, workdir=str(tmp_path / "run"), jit_compile="false")


def _without_seconds(history):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _read(workdir, name):
  return records.read_jsonl(os.path.join(workdir, name))


def _assert_records_close(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for key in a:
      if isinstance(a[key], (float, list)) and a[key] is not None:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
      else:
        assert a[key] == b[key], key


def test_resume_equals_uninterrupted(tiny_config, tmp_path, one_replica):
  straight = dataclasses.replace(tiny_config, workdir=str(tmp_path / "a"))
  train.run(straight, strategy=one_replica)

  resumed = dataclasses.replace(tiny_config, workdir=str(tmp_path / "b"))
  with pytest.raises(_Interrupt):
    train.run(resumed, strategy=one_replica,
              extra_callbacks=[_InterruptAfter(3)])
  # Epoch 3 was measured before the interruption but not checkpointed.
  assert max(r["epoch"] for r in _read(resumed.workdir, "metrics.jsonl")) == 3
  result = train.run(resumed, strategy=one_replica)

  assert result.epochs_completed == 4
  for name in ("history.jsonl", "metrics.jsonl", "onset.jsonl"):
    got = _without_seconds(_read(resumed.workdir, name))
    want = _without_seconds(_read(straight.workdir, name))
    _assert_records_close(got, want)
  keys = [(r["epoch"], r["split"], r["index"])
          for r in _read(resumed.workdir, "metrics.jsonl")]
  assert len(keys) == len(set(keys))


def test_finished_run_is_not_retrained(tiny_config, one_replica):
  tiny_config = dataclasses.replace(tiny_config, epochs=2, measure_epochs=())
  first = train.run(tiny_config, strategy=one_replica)
  lines = len(_read(tiny_config.workdir, "history.jsonl"))
  second = train.run(tiny_config, strategy=one_replica)
  assert len(_read(tiny_config.workdir, "history.jsonl")) == lines
  assert second.final_test_accuracy == first.final_test_accuracy


def test_nonfinite_loss_names_epoch_and_keeps_files(tiny_config, one_replica):
  config = dataclasses.replace(tiny_config, lr=1e12, warmup_epochs=0,
                               measure_epochs=(0,))
  with pytest.raises(train.NonFiniteLossError, match=r"epoch 1, step \d+ of 4"):
    train.run(config, strategy=one_replica)
  measured = _read(config.workdir, "metrics.jsonl")
  assert {r["epoch"] for r in measured} == {0}
  assert _read(config.workdir, "history.jsonl") == []


def test_other_run_in_workdir_is_rejected(tiny_config, one_replica):
  config = dataclasses.replace(tiny_config, epochs=1, measure_epochs=())
  train.run(config, strategy=one_replica)
  before = open(os.path.join(config.workdir, "history.jsonl")).read()
  with pytest.raises(ValueError, match=r"other settings \(lr: 0.02 there, 0.5 now\)"):
    train.run(dataclasses.replace(config, lr=0.5), strategy=one_replica)
  assert open(os.path.join(config.workdir, "history.jsonl")).read() == before


def test_two_replica_run_matches_one(tiny_config, tmp_path, one_replica,
                                     two_replicas):
  one = dataclasses.replace(tiny_config, epochs=2, measure_epochs=(),
                            workdir=str(tmp_path / "one"))
  two = dataclasses.replace(one, workdir=str(tmp_path / "two"))
  train.run(one, strategy=one_replica)
  train.run(two, strategy=two_replicas)
  _assert_records_close(_without_seconds(_read(two.workdir, "history.jsonl")),
                        _without_seconds(_read(one.workdir, "history.jsonl")))
  _assert_records_close(_read(two.workdir, "metrics.jsonl"),
                        _read(one.workdir, "metrics.jsonl"))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed "
                    "(make test installs it when run as root with apt)")
def test_main_on_real_fashion_mnist(tmp_path):
  workdir = tmp_path / "run"
  command = [
      sys.executable, "-m", "inc_tf.main",
      "--flagfile=configs/demo_fashion_mnist_mlp.cfg",
      "--examples_per_class=30", "--test_examples_per_class=50",
      "--depth=3", "--width=32", "--epochs=2",
      "--measure_epochs=0,1", f"--workdir={workdir}"]
  completed = subprocess.run(command, cwd=REPO, capture_output=True,
                             text=True, timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert "No collapse onset" in completed.stdout or "onset" in completed.stdout

  measured = records.read_jsonl(str(workdir / "metrics.jsonl"))
  assert {(r["epoch"], r["split"]) for r in measured} == {
      (e, s) for e in (0, 1, 2) for s in ("train", "test")}
  train_final = [r for r in measured if r["epoch"] == 2 and r["split"] == "train"]
  assert [r["index"] for r in train_final] == [0, 1, 2, 3]
  assert [r["layer"] for r in train_final] == ["dense_1", "dense_2", "dense_3",
                                               "classifier"]
  for record in train_final:
    assert set(metrics.METRIC_KEYS) <= set(record)
    assert record["trace_total"] == pytest.approx(
        record["trace_within"] + record["trace_between"], rel=1e-9)
    assert record["within_fraction"] + record["between_fraction"] == (
        pytest.approx(1.0))
    assert 0.0 <= record["ncc_accuracy"] <= 1.0
  assert train_final[-1]["self_duality"] is not None
  assert train_final[0]["self_duality"] is None

  onsets = records.read_jsonl(str(workdir / "onset.jsonl"))
  assert [(r["epoch"], r["split"]) for r in onsets] == [
      (e, s) for e in (0, 1, 2) for s in ("train", "test")]
  assert all(r["epsilon"] == 0.2 for r in onsets)
  history = records.read_jsonl(str(workdir / "history.jsonl"))
  assert [r["epoch"] for r in history] == [1, 2]
  assert set(history[0]) == {"epoch", "loss", "train_accuracy",
                             "test_accuracy", "learning_rate", "seconds"}

  accumulator = event_accumulator.EventAccumulator(
      str(workdir / "tensorboard"), size_guidance={"tensors": 0, "images": 0})
  accumulator.Reload()
  tags = accumulator.Tags()
  tag = records.metric_tag("train", "within_fraction", 3, "classifier")
  assert tag in tags["tensors"]
  logged = {e.step: float(tf.make_ndarray(e.tensor_proto))
            for e in accumulator.Tensors(tag)}
  assert logged[2] == pytest.approx(train_final[-1]["within_fraction"],
                                    rel=1e-6)
  assert "train/loss" in tags["tensors"]
  assert records.metric_tag("train", "weight_singular_values", 0,
                            "dense_1") in tags["tensors"]
  assert "figures/nc1" in tags["tensors"] or "figures/nc1" in tags["images"]
  assert (workdir / "figures" / "nc1.png").exists()
  with open(workdir / "config.json") as f:
    assert json.load(f)["width"] == 32
  flags_text = (workdir / "flags.txt").read_text()
  assert "--width=32" in flags_text
  assert f"--workdir={workdir}" in flags_text


def test_test_subset_is_balanced(tiny_config, one_replica):
  config = dataclasses.replace(tiny_config, epochs=1, measure_epochs=(),
                               test_examples_per_class=2)
  result = train.run(config, strategy=one_replica)
  # 2 images of each of 10 classes: accuracy is a multiple of 1/20.
  assert result.final_test_accuracy * 20 == pytest.approx(
      round(result.final_test_accuracy * 20))


def test_test_subset_too_large_names_option(tiny_config, one_replica):
  config = dataclasses.replace(tiny_config, test_examples_per_class=5)
  with pytest.raises(ValueError, match=r"4 test examples, fewer than "
                     r"test_examples_per_class=5"):
    train.run(config, strategy=one_replica)


def test_failed_start_does_not_lock_workdir(tiny_config, one_replica):
  bad = dataclasses.replace(tiny_config, epochs=1, measure_epochs=(),
                            test_examples_per_class=5)
  with pytest.raises(ValueError, match="test_examples_per_class=5"):
    train.run(bad, strategy=one_replica)
  assert not os.path.exists(os.path.join(bad.workdir, "config.json"))

  fixed = dataclasses.replace(bad, test_examples_per_class=2)
  result = train.run(fixed, strategy=one_replica)
  assert result.epochs_completed == 1
