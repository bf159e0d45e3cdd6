"""Pytest set-up shared by all tests.

Splits the host CPU into two logical devices before TensorFlow initialises, so
tests can run a real `tf.distribute.MirroredStrategy` over two replicas. A
strategy built without explicit devices still uses one CPU replica.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
  del config  # Unused.
  try:
    import tensorflow as tf
  except ImportError:
    return
  cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(
      cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
