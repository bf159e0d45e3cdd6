"""The measurement callback: collapse metrics of every probe point."""

import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from inc_tf import measurement
from inc_tf import metrics as metrics_lib
from inc_tf import probe as probe_lib
from inc_tf import records


class CollapseMeasurement(keras.callbacks.Callback):
  """Measure NC1-NC4, ranks and spectra at every probe point.

  Hooks: `on_train_begin` builds the probe model. It also measures epoch 0
  (the initialisation) when training starts from scratch and 0 is
  requested. `on_epoch_end(epoch)` measures after epoch `epoch + 1`, because
  Keras passes a 0-based index, when that epoch is requested.

  Writes, per measured epoch, one `metrics.jsonl` record per split and probe
  point, one `onset.jsonl` record per split, and a TensorBoard scalar per
  metric and probe point (the singular-value spectrum as a histogram), all
  tagged through `records.metric_tag`.

  The model runs in inference mode; features are streamed batch by batch
  and never held in memory together.

  Args:
    train_data: `tf.data.Dataset` of `(images, labels)` batches of the
      training split, in a fixed order.
    test_data: The same for the test split, or None.
    num_classes: Number of classes C.
    epochs: Epochs to measure (0 is the initialisation).
    workdir: Run directory that receives the files.
    epsilon: Within-class fraction threshold of the collapse onset.
    strategy: The `tf.distribute.Strategy` the model was built under.
    max_covariance_dim: Widest features for which `p x p` matrices are formed.
    writer: A `tf.summary` writer, or None to skip TensorBoard.
  """

  def __init__(self, train_data, test_data, num_classes, epochs, workdir,
               epsilon=0.2, strategy=None, max_covariance_dim=4096,
               writer=None):
    super().__init__()
    if not 0.0 < epsilon < 1.0:
      raise ValueError(
          f"epsilon must be in (0, 1), got {epsilon}; the paper uses 0.2.")
    if any(e < 0 for e in epochs):
      raise ValueError(f"Measured epochs must be >= 0, got {sorted(epochs)}.")
    self.train_data = train_data
    self.test_data = test_data
    self.num_classes = num_classes
    self.epochs = frozenset(int(e) for e in epochs)
    self.workdir = workdir
    self.epsilon = epsilon
    self.strategy = strategy
    self.max_covariance_dim = max_covariance_dim
    self.writer = writer
    self._measurement = None
    self._onsets = {}

  def on_train_begin(self, logs=None):
    # One StreamingMeasurement per run keeps its traced passes, so later
    # epochs are not traced again.
    self._measurement = measurement.StreamingMeasurement(
        self.model, num_classes=self.num_classes, strategy=self.strategy,
        max_covariance_dim=self.max_covariance_dim,
        probe=probe_lib.build_probe(self.model))
    self._onsets = {}
    if self.params.get("initial_epoch", 0) == 0 and 0 in self.epochs:
      self.measure_epoch(0)

  def on_epoch_end(self, epoch, logs=None):
    if epoch + 1 in self.epochs:
      self.measure_epoch(epoch + 1)

  def measure_epoch(self, epoch):
    """Measure every probe point now and write the records of `epoch`."""
    start = time.time()
    results = self._measurement.measure(self.train_data, self.test_data)

    metric_records, onset_records = [], []
    for split, points in results.items():
      for point in points:
        record = {"epoch": epoch, "split": split, "layer": point["layer"],
                  "index": point["index"]}
        record.update({key: point.get(key) for key in metrics_lib.METRIC_KEYS})
        metric_records.append(record)
      onset = metrics_lib.collapse_onset(
          [point.get("within_fraction") for point in points], self.epsilon)
      self._onsets[(epoch, split)] = onset
      onset_records.append({"epoch": epoch, "split": split,
                            "epsilon": self.epsilon, "onset": onset})

    records.append_jsonl(os.path.join(self.workdir, "metrics.jsonl"),
                         metric_records)
    records.append_jsonl(os.path.join(self.workdir, "onset.jsonl"),
                         onset_records)
    if self.writer is not None:
      self._write_tensorboard(epoch, metric_records, onset_records)

    train_points = results["train"]
    logging.info(
        "Measured epoch %d in %.1f s: onset %s (train), %s (test); "
        "within_fraction at the classifier input %.4g.", epoch,
        time.time() - start, self._onsets.get((epoch, "train")),
        self._onsets.get((epoch, "test")),
        _or_nan(train_points[-1].get("within_fraction")))

  def _write_tensorboard(self, epoch, metric_records, onset_records):
    with self.writer.as_default(step=epoch):
      for record in metric_records:
        for key in metrics_lib.METRIC_KEYS:
          value = record.get(key)
          if value is None:
            continue
          tag = records.metric_tag(record["split"], key, record["index"],
                                   record["layer"])
          if np.ndim(value) == 0:
            if np.isfinite(value):
              tf.summary.scalar(tag, float(value))
          else:
            tf.summary.histogram(tag, np.asarray(value, np.float64))
      for record in onset_records:
        # -1 stands for "no onset" because a scalar cannot be missing.
        onset = record["onset"]
        tf.summary.scalar(f"{record['split']}/onset",
                          -1 if onset is None else onset)
    self.writer.flush()

  def final_onset(self):
    """Return the training-split onset of the last measured epoch, or None."""
    path = os.path.join(self.workdir, "onset.jsonl")
    train = [r for r in records.read_jsonl(path) if r.get("split") == "train"]
    if not train:
      return None
    return max(train, key=lambda r: r["epoch"]).get("onset")


def _or_nan(value):
  return float("nan") if value is None else value
