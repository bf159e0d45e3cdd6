"""inc_tf: train deep classifiers and measure intermediate neural collapse.

The two public entry points for users who bring their own features or models:

- `inc_tf.metrics.layer_metrics`: every collapse metric of one probe point from
  in-memory NumPy arrays.
- `inc_tf.measure`: every collapse metric of every probe point of a Keras
  functional classifier, streamed over `tf.data` datasets.
"""


def measure(*args, **kwargs):
  """Measure every probe point of a Keras classifier. See `inc_tf.measurement.measure`."""
  # Imported lazily so that `import inc_tf` (and the report command) works
  # without importing TensorFlow.
  from inc_tf import measurement
  return measurement.measure(*args, **kwargs)
