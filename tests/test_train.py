"""Tests of the training step: loss scaling, weight decay and the loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from inc_tf import models
from inc_tf import train


def _dataset(num_examples=37, batch_size=16):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(num_examples, 4, 4, 1)).astype("float32")
  labels = rng.integers(0, 3, size=num_examples).astype("int32")
  return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def _train_weights(strategy, weight_decay=1e-2, epochs=2):
  """Train a small MLP from fixed weights and return its final variables."""
  keras.utils.set_random_seed(3)
  with strategy.scope():
    model = models.mlp((4, 4, 1), depth=2, width=8, num_classes=3)
  trainer = train.Trainer(model, strategy, num_classes=3, learning_rate=0.1,
                          momentum=0.9, weight_decay=weight_decay,
                          jit_compile=False)
  losses = []
  for _ in range(epochs):
    loss, _, bad_step = trainer.train_epoch(_dataset())
    assert bad_step is None
    losses.append(loss)
  return [np.asarray(v) for v in model.variables], losses


def test_mse_loss_sum_matches_numpy():
  logits = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 1.0]], "float32")
  labels = np.array([2, 0], "int32")
  one_hot = np.eye(3)[labels]
  expected = ((logits - one_hot) ** 2).mean(axis=1).sum()
  got = float(train.mse_loss_sum(tf.constant(logits), tf.constant(labels), 3))
  assert got == pytest.approx(expected, rel=1e-6)


def test_two_replicas_match_one(one_replica, two_replicas):
  # 37 examples in batches of 16 end with a partial batch of 5, split 3 / 2
  # over the replicas, so the global-count scaling is exercised too.
  one, one_losses = _train_weights(one_replica)
  two, two_losses = _train_weights(two_replicas)
  np.testing.assert_allclose(one_losses, two_losses, rtol=1e-5)
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weight_decay_matches_pytorch_rule(two_replicas):
  # With zero data gradient (lr applies to the decay term only), one Keras
  # SGD step without momentum shrinks every weight by lr * weight_decay.
  strategy = two_replicas
  with strategy.scope():
    inputs = keras.Input((2,))
    layer = keras.layers.Dense(2, use_bias=False, kernel_initializer="ones")
    model = keras.Model(inputs, layer(inputs))
  trainer = train.Trainer(model, strategy, num_classes=2, learning_rate=0.5,
                          momentum=0.0, weight_decay=0.1, jit_compile=False)
  # Inputs of zero give a zero data gradient for the kernel.
  data = tf.data.Dataset.from_tensor_slices(
      (np.zeros((4, 2), "float32"), np.zeros(4, "int32"))).batch(4)
  trainer.train_epoch(data)
  np.testing.assert_allclose(np.asarray(layer.kernel), np.full((2, 2), 0.95),
                             rtol=1e-6)


def test_nonfinite_loss_is_reported(one_replica):
  strategy = one_replica
  with strategy.scope():
    model = models.mlp((4, 4, 1), depth=1, width=4, num_classes=3)
  trainer = train.Trainer(model, strategy, num_classes=3, learning_rate=1e30,
                          momentum=0.9, weight_decay=0.0, jit_compile=False)
  _, _, bad_step = trainer.train_epoch(_dataset(num_examples=160))
  assert bad_step is not None


def test_weights_finite_detects_nan(one_replica):
  with one_replica.scope():
    model = models.mlp((4, 4, 1), depth=1, width=4, num_classes=3)
  trainer = train.Trainer(model, one_replica, num_classes=3,
                          learning_rate=0.1, momentum=0.9, weight_decay=0.0,
                          jit_compile=False)
  assert trainer.weights_finite()
  kernel = model.get_layer("classifier").kernel
  kernel.assign(np.full(kernel.shape, np.nan, "float32"))
  assert not trainer.weights_finite()
