"""Benchmark one full collapse measurement against one plain inference pass.

For each model, times `inc_tf.measurement.StreamingMeasurement.measure` over
the training and test batches (every probe point, every metric, both splits)
and a plain inference pass over the same batches: a `tf.function` that runs
the model forward (`training=False`) on every batch and keeps only a cheap
reduction of the logits, as `model.predict` would without collecting them.
The inference pass is timed twice, without and with XLA (`jit_compile=True`
on the per-batch forward), and the ratio is printed against both. The
measurement compiles its batch step with XLA as `--jit_compile` says
(default "auto": on, because the benchmark runs one replica).
Both are timed after one warm-up call, so tracing is excluded; the first
(cold) measurement time is printed too. Measurements and inference passes
alternate, and the printed ratio is the median over `--repeats` pairs.
Models are freshly initialised: the cost of the metrics does not depend on
the weights.

Both sides see the same batches. The measurement regroups small batches into
steps of up to 512 rows (`measurement.batch_group`), which the plain
inference pass does not do, so the MLP runs at two batch sizes: 128, where
the regrouping speeds the measurement up, and 1000, the callback's default,
where it does nothing.

Models:

- mlp: the paper's MLP, 10 hidden layers of width 1024, on Fashion-MNIST
  (`--subset` training images, default all 60,000, and the 10,000 test
  images). Every probe point has p <= 1024, so the 1024 x 1024 scatter and
  exact lambda_max are used.
- convnet: the paper's ConvNet, depth 20 and width 128, on Fashion-MNIST
  padded to 32 x 32 (`--conv_subset` training images, default 2,000, and as
  many test images, at most 10,000). Its probe points have p = 8,192 or
  32,768 (above the default `max_covariance_dim` 4096) except the input, so
  they take the Krylov path.

Peak memory: the growth of the process's peak resident set size (Linux
VmHWM, reset through /proc/self/clear_refs before each run) during one
measurement, at two training-set sizes, to show that it does not grow with N.

With `--only=measurement` or `--only=inference` only that side runs, after
one warm-up run, and no ratios or peak memory are printed: a way to profile
one side, for example under `perf record`.

Falls back to random images of the same shape when Fashion-MNIST cannot be
loaded, and says so.

Run: python bench/metric_pass.py [--subset=60000] [--test_subset=10000]
  [--conv_subset=2000] [--models=mlp,convnet] [--batch_sizes=128,1000]
  [--conv_batch_size=128]
  [--repeats=3] [--only=both] [--jit_compile=auto] [--host_scatter=auto]
  [--max_covariance_dim=4096]
  [--max_group=4]
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from bench import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import measurement  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import models  # pylint: disable=g-import-not-at-top,wrong-import-position

_SUBSET = flags.DEFINE_integer(
    "subset", 60000, "Training images for the MLP.", lower_bound=128)
_TEST_SUBSET = flags.DEFINE_integer(
    "test_subset", 10000, "Test images for the MLP.", lower_bound=128)
_JIT = flags.DEFINE_enum(
    "jit_compile", "auto", ["auto", "true", "false"],
    "XLA for the measurement's batch step; see StreamingMeasurement.")
_HOST_SCATTER = flags.DEFINE_enum(
    "host_scatter", "auto", ["auto", "true", "false"],
    "Whether the measurement computes the p x p scatters with host BLAS "
    "beside the next step; see StreamingMeasurement.")
_MAX_COVARIANCE_DIM = flags.DEFINE_integer(
    "max_covariance_dim", 4096, "Widest point whose p x p scatter the "
    "measurement forms (exact lambda_max); wider points use the Krylov "
    "estimate. Below 1024 the whole MLP takes the Krylov path.",
    lower_bound=1)
_MAX_GROUP = flags.DEFINE_integer(
    "max_group", measurement.MAX_GROUP,
    "Most batches per measurement step (measurement.MAX_GROUP); 1 keeps "
    "the caller's batches.", lower_bound=1)
_CONV_SUBSET = flags.DEFINE_integer(
    "conv_subset", 2000, "Training images for the ConvNet; the test split "
    "uses as many, at most 10,000.", lower_bound=128)
_MODELS = flags.DEFINE_list("models", ["mlp", "convnet"],
                            "Models to benchmark: mlp, convnet.")
_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["128", "1000"],
    "Batch sizes of the datasets, each benchmarked in turn: 128 is the "
    "paper's training batch, 1000 the default --eval_batch_size of the "
    "measurement callback. The MLP only.")
_CONV_BATCH = flags.DEFINE_integer(
    "conv_batch_size", 128, "Batch size for the ConvNet.", lower_bound=1)
_ONLY = flags.DEFINE_enum(
    "only", "both", ["both", "measurement", "inference"],
    "After the warm-up, run only measurements or only XLA inference passes, "
    "--repeats times, and print their times without ratios: for a sampling "
    "profiler such as `perf record`, so that its samples come from one side.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Paired runs (inference passes, then one measurement); "
    "the median ratio is reported.", lower_bound=1)

NUM_CLASSES = 10


def _load(pad_to):
  """Return `(x_train, y_train, x_test, y_test, source)`."""
  try:
    splits = data_lib.load_dataset("fashion_mnist", pad_to=pad_to)
    return (splits.x_train, splits.y_train, splits.x_test, splits.y_test,
            "Fashion-MNIST")
  except (FileNotFoundError, ValueError, OSError) as error:
    print(f"Fashion-MNIST not loaded ({error}); using random images.")
    size = pad_to or 28
    rng = np.random.default_rng(0)
    shape = (size, size, 1)
    return (rng.normal(size=(60000,) + shape).astype(np.float32),
            rng.integers(0, NUM_CLASSES, 60000).astype(np.int32),
            rng.normal(size=(10000,) + shape).astype(np.float32),
            rng.integers(0, NUM_CLASSES, 10000).astype(np.int32),
            "random images")


def _seconds(function):
  """Run `function` and return `(wall, cpu)`: elapsed and process CPU seconds."""
  start, start_cpu = time.perf_counter(), time.process_time()
  function()
  return time.perf_counter() - start, time.process_time() - start_cpu


def _spread(values, unit):
  """Format `values` as `median (min-max)` with `unit`."""
  unit = f" {unit}" if unit else ""
  return (f"{statistics.median(values):6.2f}{unit} "
          f"({min(values):.2f}-{max(values):.2f})")


def _peak_rss_growth_mib(function):
  """Run `function` and return how far the peak RSS rose above the RSS before, in MiB."""
  try:
    with open("/proc/self/clear_refs", "w") as clear_refs:
      clear_refs.write("5")
  except OSError:
    return None
  before = _status_kib("VmRSS")
  function()
  return (_status_kib("VmHWM") - before) / 1024


def _status_kib(field):
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise ValueError(f"{field} missing from /proc/self/status.")


def _benchmark(name, model, x_train, y_train, x_test, y_test, batch_size):
  train = data_lib.eval_batches(x_train, y_train, batch_size)
  test = data_lib.eval_batches(x_test, y_test, batch_size)
  choices = {"auto": "auto", "true": True, "false": False}
  streaming = measurement.StreamingMeasurement(
      model, jit_compile=choices[_JIT.value],
      host_scatter=choices[_HOST_SCATTER.value],
      max_covariance_dim=_MAX_COVARIANCE_DIM.value)
  inferences = {xla: inference.inference_pass(model, xla)
                for xla in (False, True)}

  def infer(xla):
    inferences[xla](train).numpy()
    inferences[xla](test).numpy()

  if _ONLY.value == "measurement":
    _run_one_side(name, batch_size, lambda: streaming.measure(train, test))
    return
  if _ONLY.value == "inference":
    _run_one_side(name, batch_size, lambda: infer(True))
    return

  cold = _seconds(lambda: streaming.measure(train, test))[0]
  for xla in (False, True):
    infer(xla)

  # Runs alternate, and each ratio compares a measurement with the inference
  # passes timed right before it, so that slow phases of a shared machine
  # hit both sides of a ratio. CPU seconds are printed too: when another
  # tenant takes a core, wall time nearly doubles but CPU time does not.
  measure_times, infer_times = [], {False: [], True: []}
  for _ in range(_REPEATS.value):
    for xla in (False, True):
      infer_times[xla].append(_seconds(lambda: infer(xla)))  # pylint: disable=cell-var-from-loop
    measure_times.append(_seconds(lambda: streaming.measure(train, test)))

  print(f"{name}: {len(x_train)} train + {len(x_test)} test images, batch "
        f"{batch_size}, measurement jit_compile={_JIT.value}, "
        f"host_scatter={_HOST_SCATTER.value}, "
        f"max_covariance_dim={_MAX_COVARIANCE_DIM.value}, "
        f"max_group={_MAX_GROUP.value}, "
        f"{_REPEATS.value} paired runs (median, min-max)")
  for clock, column in (("wall", 0), ("CPU", 1)):
    for xla in (False, True):
      label = "XLA" if xla else "no XLA"
      print(f"  inference pass, {label:6s}, {clock:4s} seconds: "
            f"{_spread([t[column] for t in infer_times[xla]], 's')}")
    print(f"  full measurement,       {clock:4s} seconds: "
          f"{_spread([t[column] for t in measure_times], 's')}")
    for xla in (False, True):
      ratios = [m[column] / i[column]
                for m, i in zip(measure_times, infer_times[xla])]
      print(f"  ratio measurement / inference ({'XLA' if xla else 'no XLA'}, "
            f"{clock}): {_spread(ratios, '')}")
  print(f"  first measurement, with tracing: {cold:.2f} s wall")

  for size in (len(x_train) // 4, len(x_train)):
    small_train = data_lib.eval_batches(x_train[:size], y_train[:size],
                                        batch_size)
    growth = _peak_rss_growth_mib(
        lambda: streaming.measure(small_train, test))  # pylint: disable=cell-var-from-loop
    text = "n/a (no /proc/self/clear_refs)" if growth is None else (
        f"{growth:.0f} MiB")
    print(f"  peak RSS growth, {size} train images: {text}")


def _run_one_side(name, batch_size, run):
  """Run `run` once to warm up, then `--repeats` times, and print the times.

  The other side never runs, so the samples of a profiler attached to the
  process come from this side only, plus one warm-up run with its tracing.
  Peak memory is not measured.
  """
  cold = _seconds(run)[0]
  times = [_seconds(run) for _ in range(_REPEATS.value)]
  side = "XLA inference" if _ONLY.value == "inference" else "measurement"
  runs = "run" if _REPEATS.value == 1 else "runs"
  print(f"{name}: batch {batch_size}, {side} only, {_REPEATS.value} {runs} "
        f"after one warm-up run (median, min-max)")
  print(f"  wall seconds: {_spread([t[0] for t in times], 's')}")
  print(f"  CPU seconds:  {_spread([t[1] for t in times], 's')}")
  print(f"  warm-up run, with tracing: {cold:.2f} s wall")


def main(argv):
  del argv  # Unused.
  print(f"Devices: {[d.name for d in tf.config.list_logical_devices()]}")
  measurement.MAX_GROUP = _MAX_GROUP.value
  try:
    batch_sizes = [int(size) for size in _BATCH_SIZES.value]
  except ValueError:
    batch_sizes = [0]
  if not batch_sizes or min(batch_sizes) < 1:
    raise app.UsageError(
        f"--batch_sizes must be positive integers separated by commas, got "
        f"{','.join(_BATCH_SIZES.value)!r}; for example --batch_sizes=128,1000.")
  for name in _MODELS.value:
    if name == "mlp":
      x_train, y_train, x_test, y_test, source = _load(pad_to=None)
      subset = _SUBSET.value
      model = models.mlp(x_train.shape[1:], depth=10, width=1024,
                         num_classes=NUM_CLASSES)
      print(f"Data: {source}")
      test_subset = _TEST_SUBSET.value
      for batch_size in batch_sizes:
        _benchmark("mlp 10 x 1024", model, x_train[:subset],
                   y_train[:subset], x_test[:test_subset],
                   y_test[:test_subset], batch_size)
    elif name == "convnet":
      x_train, y_train, x_test, y_test, source = _load(pad_to=32)
      subset = _CONV_SUBSET.value
      model = models.convnet(x_train.shape[1:], depth=20, width=128,
                             num_classes=NUM_CLASSES)
      print(f"Data: {source}")
      _benchmark("convnet depth 20 width 128", model, x_train[:subset],
                 y_train[:subset], x_test[:min(subset, 10000)],
                 y_test[:min(subset, 10000)], _CONV_BATCH.value)
    else:
      raise app.UsageError(f"Unknown model {name!r}; use mlp or convnet.")


if __name__ == "__main__":
  app.run(main)
