"""Time each pass of one collapse measurement against plain inference.

For the MLP with 10 hidden layers of width 1024 on `--subset` Fashion-MNIST
training images, runs one measurement to record the arguments of its
passes, then times, alternating, `--repeats` times each:

- plain XLA inference over the same batches (as in `bench/metric_pass.py`);
- the training passes "sketch" (class sums) and "centred" (sums of squares,
  scatters and NC4 counts), each called alone through
  `StreamingMeasurement._run_pass`.

Prints the minimum wall and process CPU seconds of each, because on a shared
machine other tenants only add time, and the CPU ratio of each pass to
inference. Use it to see which pass a change speeds up; `bench/metric_pass.py`
times the whole measurement.

Run: python bench/measurement_passes.py [--subset=20000] [--batch_size=1000]
  [--repeats=5]
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from bench import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import measurement  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import models  # pylint: disable=g-import-not-at-top,wrong-import-position

_SUBSET = flags.DEFINE_integer(
    "subset", 20000, "Training images.", lower_bound=128, upper_bound=60000)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1000, "Batch size.",
                                   lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs of each pass.",
                                lower_bound=1)

NUM_CLASSES = 10
PASSES = ("sketch", "centred")


def main(argv):
  del argv  # Unused.
  logging.set_verbosity(logging.WARNING)
  splits = data_lib.load_dataset("fashion_mnist")
  train = data_lib.eval_batches(splits.x_train[:_SUBSET.value],
                                splits.y_train[:_SUBSET.value],
                                _BATCH_SIZE.value)
  model = models.mlp(splits.x_train.shape[1:], depth=10, width=1024,
                     num_classes=NUM_CLASSES)
  streaming = measurement.StreamingMeasurement(model)

  # One measurement records the arguments that each pass gets.
  arguments = {}
  run_pass = measurement.StreamingMeasurement._run_pass  # pylint: disable=protected-access

  def recording(self, dataset, kind, *args, **kwargs):
    arguments.setdefault(kind, (args, kwargs))
    return run_pass(self, dataset, kind, *args, **kwargs)

  measurement.StreamingMeasurement._run_pass = recording  # pylint: disable=protected-access
  try:
    streaming.measure(train)
  finally:
    measurement.StreamingMeasurement._run_pass = run_pass  # pylint: disable=protected-access

  infer = inference.inference_pass(model, jit_compile=True)
  runs = {"inference": lambda: infer(train).numpy()}
  for kind in PASSES:
    args, kwargs = arguments[kind]
    runs[kind] = (
        lambda kind=kind, args=args, kwargs=kwargs:
        run_pass(streaming, train, kind, *args, **kwargs))

  for function in runs.values():
    function()
  times = {name: [] for name in runs}
  for _ in range(_REPEATS.value):
    for name, function in runs.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      function()
      times[name].append(
          (time.perf_counter() - start, time.process_time() - start_cpu))

  print(f"mlp 10 x 1024, {_SUBSET.value} training images, batch "
        f"{_BATCH_SIZE.value}, minimum of {_REPEATS.value} alternating runs")
  inference_cpu = min(cpu for _, cpu in times["inference"])
  for name, pairs in times.items():
    wall = min(wall for wall, _ in pairs)
    cpu = min(cpu for _, cpu in pairs)
    print(f"  {name:9s} {wall:6.2f} s wall, {cpu:6.2f} s CPU, "
          f"CPU / inference {cpu / inference_cpu:.2f}")


if __name__ == "__main__":
  app.run(main)
