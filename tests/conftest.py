"""Pytest set-up shared by all tests.

Splits the host CPU into two logical devices before TensorFlow initialises, so
tests can run a real `tf.distribute.MirroredStrategy` over two replicas.
Because of that split, a strategy built without explicit devices uses both
logical CPUs here; tests pass one of the fixtures below instead.
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


# Two MirroredStrategy objects over the same devices in one process reuse
# collective instance keys, and the second one's all-reduce can then fail
# with "Shape mismatch in the collective instance" (TF 2.21). Tests share
# one strategy per device set through these fixtures instead.
_STRATEGIES = {}


def _strategy(devices):
  import tensorflow as tf
  key = tuple(devices)
  if key not in _STRATEGIES:
    _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(devices))
  return _STRATEGIES[key]


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def one_replica():
  """A MirroredStrategy over one CPU device, shared by all tests."""
  return _strategy(["/cpu:0"])


@pytest.fixture
def two_replicas():
  """A MirroredStrategy over two logical CPU devices, shared by all tests."""
  return _strategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(autouse=True)
def _default_strategy_is_shared(monkeypatch):
  """Make `train.default_strategy()` the shared one-replica strategy.

  Without this, the first test that trains without a strategy would create
  a second two-replica MirroredStrategy (both logical CPUs) besides the
  fixture's.
  """
  try:
    from inc_tf import train  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  monkeypatch.setattr(train, "default_strategy",
                      lambda: _strategy(["/cpu:0"]))
