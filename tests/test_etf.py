"""Tests for inc_tf.etf: the ETF matrices and the FixTopLayersToETF callback."""

import numpy as np
import pytest
import tensorflow as tf

from inc_tf import etf
from inc_tf import models

_INPUT_SHAPE = (6,)
_NUM_CLASSES = 4
_WEIGHT_DECAY = 0.1


def _mlp(depth=3, width=8):
  tf.keras.utils.set_random_seed(0)
  return models.mlp(_INPUT_SHAPE, depth, width, _NUM_CLASSES)


def _fix(model, num_layers):
  callback = etf.FixTopLayersToETF(num_layers)
  callback.set_model(model)
  callback.on_train_begin()
  return callback


def _train(model, steps=5, lr=0.1):
  """Run SGD steps with L2 decay on `model.trainable_variables` only.

  This mirrors the contract of the training loop: gradients and weight decay
  touch nothing outside `model.trainable_variables`.
  """
  rng = np.random.default_rng(1)
  x = rng.normal(size=(32,) + _INPUT_SHAPE).astype("float32")
  y = tf.one_hot(rng.integers(0, _NUM_CLASSES, size=32), _NUM_CLASSES)
  optimizer = tf.keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
  for _ in range(steps):
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    grads = tape.gradient(loss, variables)
    grads = [g + _WEIGHT_DECAY * v for g, v in zip(grads, variables)]
    optimizer.apply(grads, variables)


def _kernels(model):
  return {layer.name: layer.kernel.numpy().copy()
          for layer in models.weight_layers(model)}


@pytest.mark.parametrize("k", [2, 3, 10, 64])
def test_simplex_etf_geometry(k):
  matrix = etf.simplex_etf(k)
  norms = np.linalg.norm(matrix, axis=0)
  gram = matrix.T @ matrix
  cosines = gram[~np.eye(k, dtype=bool)] / np.outer(norms, norms)[
      ~np.eye(k, dtype=bool)]
  assert matrix.shape == (k, k)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-12)
  np.testing.assert_allclose(cosines, -1.0 / (k - 1), atol=1e-12)
  assert np.linalg.matrix_rank(matrix) == k - 1
  np.testing.assert_allclose(
      gram, k / (k - 1) * (np.eye(k) - np.ones((k, k)) / k), atol=1e-12)


@pytest.mark.parametrize("k", [1, 0, -3, 2.0, True])
def test_simplex_etf_rejects_k(k):
  with pytest.raises(ValueError, match="k >= 2"):
    etf.simplex_etf(k)


def test_classifier_etf_lifts_etf():
  kernel = etf.classifier_etf(7, 3)
  weight = kernel.T  # [C, d]: one row per class.
  assert kernel.shape == (7, 3)
  np.testing.assert_array_equal(kernel[:3], etf.simplex_etf(3))
  np.testing.assert_array_equal(kernel[3:], 0.0)
  np.testing.assert_allclose(np.linalg.norm(weight, axis=1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(
      weight @ weight.T, 1.5 * (np.eye(3) - np.ones((3, 3)) / 3), atol=1e-12)


def test_classifier_etf_square():
  np.testing.assert_array_equal(etf.classifier_etf(5, 5), etf.simplex_etf(5))


def test_classifier_etf_rejects_narrow():
  with pytest.raises(ValueError, match=r"d=3 and num_classes=4"):
    etf.classifier_etf(3, 4)


@pytest.mark.parametrize("num_layers", [0, -1, 1.5, True])
def test_callback_rejects_num_layers(num_layers):
  with pytest.raises(ValueError, match="at least 1"):
    etf.FixTopLayersToETF(num_layers)


def test_callback_assigns_etfs():
  model = _mlp(depth=3, width=8)
  callback = _fix(model, 3)
  kernels = _kernels(model)
  assert callback.fixed_layers == ["dense_2", "dense_3", "classifier"]
  hidden = etf.simplex_etf(8).astype("float32")
  np.testing.assert_array_equal(
      kernels["classifier"],
      etf.classifier_etf(8, _NUM_CLASSES).astype("float32"))
  np.testing.assert_array_equal(kernels["dense_3"], hidden)
  np.testing.assert_array_equal(kernels["dense_2"], hidden)
  assert not np.array_equal(kernels["dense_1"], hidden[:6])


def test_callback_moves_kernels_out_of_training():
  model = _mlp(depth=3, width=8)
  _fix(model, 2)
  trainable = {v.path for v in model.trainable_variables}
  frozen = {v.path for v in model.non_trainable_variables}
  assert "classifier/kernel" in frozen
  assert "dense_3/kernel" in frozen
  assert "classifier/kernel" not in trainable
  assert "dense_3/kernel" not in trainable
  assert "classifier/bias" in trainable
  assert "dense_2/kernel" in trainable
  assert "bn_3/gamma" in trainable


def test_fixed_kernels_unchanged_by_training():
  model = _mlp(depth=3, width=8)
  _fix(model, 2)
  before = _kernels(model)
  _train(model)
  after = _kernels(model)
  # Bit-for-bit: neither gradients nor the decay term may touch them.
  assert np.array_equal(after["classifier"], before["classifier"])
  assert np.array_equal(after["dense_3"], before["dense_3"])
  assert not np.array_equal(after["dense_2"], before["dense_2"])
  assert not np.array_equal(after["dense_1"], before["dense_1"])


def test_batch_norm_after_fixed_layer_trains():
  model = _mlp(depth=3, width=8)
  _fix(model, 2)
  bn = model.get_layer("bn_3")
  gamma, beta = bn.gamma.numpy().copy(), bn.beta.numpy().copy()
  bias = model.get_layer("classifier").bias.numpy().copy()
  _train(model)
  assert not np.array_equal(bn.gamma.numpy(), gamma)
  assert not np.array_equal(bn.beta.numpy(), beta)
  assert not np.array_equal(model.get_layer("classifier").bias.numpy(), bias)


def test_callback_idempotent():
  model = _mlp(depth=3, width=8)
  callback = _fix(model, 2)
  first = _kernels(model)
  callback.on_train_begin()
  second = _kernels(model)
  for name in first:
    assert np.array_equal(first[name], second[name]), name
  assert callback.fixed_layers == ["dense_3", "classifier"]


def test_fixed_kernels_survive_checkpoint(tmp_path):
  model = _mlp(depth=3, width=8)
  _fix(model, 2)
  _train(model, steps=3)
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  saved = _kernels(model)

  # A resumed run: fresh model, the callback's hook, then the restore.
  resumed = _mlp(depth=3, width=8)
  _fix(resumed, 2)
  tf.train.Checkpoint(model=resumed).restore(path).assert_consumed()
  restored = _kernels(resumed)
  _train(resumed, steps=3)
  trained = _kernels(resumed)

  for name in saved:
    assert np.array_equal(restored[name], saved[name]), name
  assert np.array_equal(trained["classifier"], saved["classifier"])
  assert np.array_equal(trained["dense_3"], saved["dense_3"])
  assert resumed.get_layer("classifier").kernel.trainable is False


def test_fixed_kernels_under_mirrored_strategy():
  # Unsynchronised BN and ReductionToOneDevice keep this test free of
  # collective ops: TF 2.21 numbers the collectives of every MirroredStrategy
  # from the same keys, so collectives of other shapes in a later test of the
  # same process would fail with "Shape mismatch in the collective instance".
  strategy = tf.distribute.MirroredStrategy(
      ["/cpu:0", "/cpu:1"],
      cross_device_ops=tf.distribute.ReductionToOneDevice())
  with strategy.scope():
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input(_INPUT_SHAPE)
    x = tf.keras.layers.Dense(8, use_bias=False, name="dense_1")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn_1")(x)
    x = tf.keras.layers.Dense(8, use_bias=False, name="dense_2")(x)
    outputs = tf.keras.layers.Dense(_NUM_CLASSES, name="classifier")(x)
    model = tf.keras.Model(inputs, outputs)
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.1)
  _fix(model, 2)
  before = _kernels(model)
  x = np.random.default_rng(2).normal(size=(16,) + _INPUT_SHAPE)
  y = tf.one_hot(np.arange(16) % _NUM_CLASSES, _NUM_CLASSES)
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices((x.astype("float32"), y)).batch(16))

  @tf.function
  def step(batch):
    def replica_step(features, labels):
      variables = model.trainable_variables
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(features, training=True) - labels))
        loss /= 16.0
      optimizer.apply(tape.gradient(loss, variables), variables)
    strategy.run(replica_step, args=batch)

  for batch in dataset:
    step(batch)
  after = _kernels(model)
  assert np.array_equal(after["classifier"], before["classifier"])
  assert np.array_equal(after["dense_2"], before["dense_2"])
  assert not np.array_equal(after["dense_1"], before["dense_1"])


def test_callback_rejects_non_square_layer():
  model = _mlp(depth=2, width=8)  # dense_1 maps 6 inputs to 8 units.
  with pytest.raises(ValueError, match=r"'dense_1' has kernel shape \(6, 8\)"):
    _fix(model, 3)
  # The check runs before any assignment, so nothing was fixed.
  assert model.get_layer("classifier").kernel.trainable


def test_callback_rejects_conv_layer():
  tf.keras.utils.set_random_seed(0)
  model = models.convnet((8, 8, 1), depth=1, width=4,
                         num_classes=_NUM_CLASSES)
  with pytest.raises(ValueError, match=r"'conv_1' \(Conv2D, kernel shape"):
    _fix(model, 2)


def test_callback_rejects_too_many_layers():
  model = _mlp(depth=2, width=8)
  with pytest.raises(ValueError, match="has only 3"):
    _fix(model, 4)


# End to end through inc_tf.train.run on tiny IDX files.


def write_idx_dataset(folder, num_train=200, num_test=100, seed=0):
  """Write a separable 10-class, 28 x 28 dataset as the four IDX files.

  Each class brightens its own image row, so a small MLP learns it in a few
  epochs.
  """
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for prefix, count in (("train", num_train), ("t10k", num_test)):
    labels = np.arange(count) % 10
    images = rng.integers(0, 80, size=(count, 28, 28))
    images[np.arange(count), 2 * labels + 4, :] += 150
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
      header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
          int(size).to_bytes(4, "big") for size in array.shape)
      (folder / f"{prefix}-{kind}-ubyte").write_bytes(
          header + array.astype(np.uint8).tobytes())
  return str(folder)


class KernelRecorder(tf.keras.callbacks.Callback):
  """Copy every weight-layer kernel at the first epoch begin and at train end."""

  def __init__(self):
    super().__init__()
    self.at_first_epoch = None
    self.at_end = None

  def on_epoch_begin(self, epoch, logs=None):
    if self.at_first_epoch is None:
      self.at_first_epoch = _kernels(self.model)

  def on_train_end(self, logs=None):
    self.at_end = _kernels(self.model)


class StopAfterEpoch(tf.keras.callbacks.Callback):
  """Raise in `on_epoch_begin` of a given 0-based epoch, like a killed job."""

  def __init__(self, epoch):
    super().__init__()
    self.epoch = epoch

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == self.epoch:
      raise KeyboardInterrupt(f"stopped before epoch {epoch + 1}")


def _one_device():
  # One replica: no collective ops, which would collide with those of other
  # tests' MirroredStrategy objects (see the mirrored-strategy test above).
  return tf.distribute.OneDeviceStrategy("/cpu:0")


def _tiny_config(tmp_path, **overrides):
  from inc_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  settings = dict(
      dataset="mnist", data_dir=write_idx_dataset(tmp_path / "data"),
      model="mlp", depth=3, width=16, epochs=2, batch_size=50, lr=0.05,
      weight_decay=5e-4, measure_epochs=(), checkpoint_every=1,
      eval_batch_size=100, workdir=str(tmp_path / "run"), etf_layers=2,
      jit_compile="false")
  settings.update(overrides)
  return config_lib.RunConfig(**settings)


def test_resumed_run_keeps_etf_kernels(tmp_path):
  from inc_tf import train  # pylint: disable=g-import-not-at-top
  # A strong decay would visibly shrink any kernel that it reached.
  config = _tiny_config(tmp_path, epochs=3, weight_decay=0.05)
  with pytest.raises(KeyboardInterrupt):
    train.run(config, strategy=_one_device(),
              extra_callbacks=[StopAfterEpoch(1)])

  recorder = KernelRecorder()
  result = train.run(config, strategy=_one_device(),
                     extra_callbacks=[recorder])

  expected = etf.simplex_etf(16).astype("float32")
  assert result.epochs_completed == 3
  assert np.array_equal(recorder.at_first_epoch["dense_3"], expected)
  assert np.array_equal(recorder.at_end["dense_3"], expected)
  assert np.array_equal(recorder.at_end["classifier"],
                        etf.classifier_etf(16, 10).astype("float32"))
  assert not np.array_equal(recorder.at_end["dense_1"],
                            recorder.at_first_epoch["dense_1"])
  assert not np.array_equal(recorder.at_end["dense_2"],
                            recorder.at_first_epoch["dense_2"])
