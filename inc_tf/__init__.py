"""inc_tf: train deep classifiers and measure intermediate neural collapse.

The two public entry points for users who bring their own features or models:

- `inc_tf.metrics.layer_metrics`: every collapse metric of one probe point from
  in-memory NumPy arrays.
- `inc_tf.measure`: every collapse metric of every probe point of a Keras
  functional classifier, streamed over `tf.data` datasets.

Submodules are imported on first access, so after `import inc_tf` the call
`inc_tf.metrics.layer_metrics(...)` works without `from inc_tf import
metrics`.
"""

import importlib

# Library modules that `inc_tf.<name>` imports on first access. The command
# line modules (`main`, `sweep`, `etf_experiment`, `report`) define absl
# flags at import, so they are left to `python -m`.
_SUBMODULES = frozenset({
    "callbacks", "config", "data", "etf", "measurement", "metrics", "models",
    "plots", "probe", "readers", "records", "rundir", "schedule", "table",
    "train",
})


def measure(*args, **kwargs):
  """Measure every probe point of a Keras classifier. See `inc_tf.measurement.measure`."""
  # Imported lazily so that `import inc_tf` (and the report command) works
  # without importing TensorFlow.
  from inc_tf import measurement
  return measurement.measure(*args, **kwargs)


def __getattr__(name):
  """Return the submodule `inc_tf.<name>`, imported on first access."""
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
