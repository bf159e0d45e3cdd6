"""Benchmark the custom training loop against Keras `fit` and a matmul.

Prints two ratios for the paper's 10 x 1024 MLP at batch 128:

- loop_vs_fit: examples/s of `inc_tf.train.Trainer` divided by examples/s of
  `keras.Model.fit(jit_compile=True)` on the same model, data and batch size
  (target: >= 1.0);
- loop_vs_matmul: the loop's achieved GFLOP/s (6 * batch * sum of
  fan_in * fan_out per step: forward, input gradient and weight gradient)
  divided by the GFLOP/s of a plain float32 matrix product of a 128 x 1024
  batch with a 1024 x 1024 weight (target: >= 0.7).

Each figure is the median of --repeats timed epochs after one warm-up epoch.
Run: python bench/train_step.py [--examples=10240] [--repeats=3]
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from inc_tf import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import train  # pylint: disable=g-import-not-at-top,wrong-import-position

_EXAMPLES = flags.DEFINE_integer(
    "examples", 10240, "Training examples per timed epoch.", lower_bound=128)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed epochs per method.",
                                lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
_DEPTH = flags.DEFINE_integer("depth", 10, "MLP hidden layers.", lower_bound=1)
_WIDTH = flags.DEFINE_integer("width", 1024, "MLP width.", lower_bound=1)
_JIT = flags.DEFINE_enum("jit_compile", "true", ["true", "false"],
                         "XLA-compile the loop's step.")

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


def _images(num_examples):
  """Return Fashion-MNIST training images when installed, else random ones."""
  try:
    splits = data_lib.load_dataset("fashion_mnist")
    return (splits.x_train[:num_examples], splits.y_train[:num_examples],
            "Fashion-MNIST")
  except (FileNotFoundError, ValueError, OSError):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(num_examples,) + IMAGE_SHAPE).astype("float32"),
            rng.integers(0, NUM_CLASSES, num_examples).astype("int32"),
            "random images")


def _model():
  keras.utils.set_random_seed(0)
  return models.mlp(IMAGE_SHAPE, _DEPTH.value, _WIDTH.value, NUM_CLASSES)


def _time_epochs(run_epoch, repeats):
  run_epoch()  # Warm-up: tracing and XLA compilation.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_epoch()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_loop(x, y):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = _model()
  trainer = train.Trainer(model, strategy, NUM_CLASSES, learning_rate=0.01,
                          momentum=0.9, weight_decay=5e-4,
                          jit_compile=_JIT.value == "true")
  pipeline = data_lib.TrainPipeline(x, y, _BATCH.value, seed=0)
  epochs = iter(range(1, 10**6))
  return _time_epochs(lambda: trainer.train_epoch(pipeline.epoch(next(epochs))),
                      _REPEATS.value), model


def time_fit(x, y):
  model = _model()
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss="mse", jit_compile=True)
  one_hot = np.eye(NUM_CLASSES, dtype="float32")[y]
  dataset = tf.data.Dataset.from_tensor_slices((x, one_hot)).shuffle(
      len(y), seed=0).batch(_BATCH.value).prefetch(tf.data.AUTOTUNE)
  return _time_epochs(lambda: model.fit(dataset, epochs=1, verbose=0),
                      _REPEATS.value)


def matmul_gflops():
  a = tf.random.normal((_BATCH.value, _WIDTH.value))
  b = tf.random.normal((_WIDTH.value, _WIDTH.value))
  reps = 200

  @tf.function
  def products():
    total = tf.zeros((_BATCH.value, _WIDTH.value))
    for _ in tf.range(reps):
      total += tf.matmul(a, b)
    return total

  seconds = _time_epochs(lambda: products().numpy(), _REPEATS.value)
  return 2.0 * _BATCH.value * _WIDTH.value * _WIDTH.value * reps / seconds / 1e9


def training_flops_per_example(model):
  dense_sizes = sum(int(np.prod(layer.kernel.shape)) for layer in model.layers
                    if isinstance(layer, keras.layers.Dense))
  return 6.0 * dense_sizes


def main(argv):
  del argv  # Unused.
  x, y, source = _images(_EXAMPLES.value)
  loop_seconds, model = time_loop(x, y)
  fit_seconds = time_fit(x, y)
  matmul = matmul_gflops()

  examples = len(y)
  loop_rate, fit_rate = examples / loop_seconds, examples / fit_seconds
  loop_gflops = loop_rate * training_flops_per_example(model) / 1e9
  print(f"MLP {_DEPTH.value} x {_WIDTH.value}, batch {_BATCH.value}, "
        f"{examples} {source} per epoch, median of {_REPEATS.value} epochs, "
        f"loop XLA {_JIT.value}")
  print(f"loop: {loop_rate:.0f} examples/s, {loop_gflops:.1f} GFLOP/s")
  print(f"keras fit(jit_compile=True): {fit_rate:.0f} examples/s")
  print(f"matmul {_BATCH.value}x{_WIDTH.value} @ {_WIDTH.value}x{_WIDTH.value}:"
        f" {matmul:.1f} GFLOP/s")
  print(f"loop_vs_fit {loop_rate / fit_rate:.2f} (target >= 1.0)")
  print(f"loop_vs_matmul {loop_gflops / matmul:.2f} (target >= 0.7)")


if __name__ == "__main__":
  app.run(main)
