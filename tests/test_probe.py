"""Tests of the probe model."""

import keras
import numpy as np
import pytest

from inc_tf import models
from inc_tf import probe


def _mlp():
  keras.utils.set_random_seed(1)
  return models.mlp((6, 6, 1), depth=3, width=16, num_classes=4)


def _manual_mlp_features(model, images):
  """Run the MLP layer by layer in eager mode and collect weight-layer inputs."""
  features = []
  h = images
  for layer in model.layers[1:]:
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
      features.append(np.asarray(h))
    h = layer(h, training=False)
  return features, np.asarray(h)


def test_probe_points_mlp_names_and_order():
  model = _mlp()
  points = probe.probe_points(model)
  assert [p.index for p in points] == [0, 1, 2, 3]
  assert [p.name for p in points] == [l.name for l in models.weight_layers(model)]
  assert points[-1].layer is model.layers[-1]


def test_probe_outputs_equal_intermediate_activations():
  model = _mlp()
  images = np.random.default_rng(0).normal(size=(32, 6, 6, 1)).astype("float32")
  # Make BatchNorm's moving statistics non-trivial so inference mode matters.
  model(images, training=True)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, "float32"))
      layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, "float32"))

  probe_model, points = probe.build_probe(model)
  outputs = probe_model(images, training=False)
  expected_features, expected_logits = _manual_mlp_features(model, images)

  assert len(outputs) == len(points) + 1
  assert outputs[0].shape == (32, 36)
  for got, want in zip(outputs[:-1], expected_features):
    np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(np.asarray(outputs[-1]),
                                np.asarray(model(images, training=False)))
  np.testing.assert_allclose(np.asarray(outputs[-1]), expected_logits,
                             rtol=1e-6, atol=1e-6)


def test_probe_convnet_point_zero_is_image():
  model = models.convnet((8, 8, 1), depth=2, width=4, num_classes=3)
  probe_model, points = probe.build_probe(model)
  images = np.ones((2, 8, 8, 1), "float32")
  outputs = probe_model(images, training=False)
  assert len(points) == 2 + 2 + 1
  np.testing.assert_array_equal(np.asarray(outputs[0]), images)
  assert outputs[-2].shape == (2, 2 * 2 * 4)


def test_probe_rejects_subclassed_model():

  class Tiny(keras.Model):

    def __init__(self):
      super().__init__()
      self.dense = keras.layers.Dense(2)

    def call(self, x):
      return self.dense(x)

  model = Tiny()
  model(np.ones((1, 3), "float32"))
  with pytest.raises(ValueError, match="functional"):
    probe.build_probe(model)


def test_probe_rejects_shared_layer():
  inputs = keras.Input((4,))
  shared = keras.layers.Dense(4, name="shared")
  outputs = keras.layers.Dense(2)(shared(shared(inputs)))
  model = keras.Model(inputs, outputs)
  with pytest.raises(ValueError, match="shared.*called 2 times"):
    probe.build_probe(model)


def test_probe_rejects_nested_model():
  inner_in = keras.Input((4,))
  inner = keras.Model(inner_in, keras.layers.Dense(4)(inner_in), name="inner")
  inputs = keras.Input((4,))
  model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
  with pytest.raises(ValueError, match="nested model"):
    probe.build_probe(model)


def test_probe_accepts_sequential_model():
  model = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(5, name="hidden"),
                            keras.layers.Dense(2, name="out")])
  probe_model, points = probe.build_probe(model)
  images = np.ones((4, 3, 3, 1), "float32")
  outputs = probe_model(images, training=False)
  assert [p.name for p in points] == ["hidden", "out"]
  assert outputs[0].shape == (4, 9)
  np.testing.assert_array_equal(np.asarray(outputs[-1]),
                                np.asarray(model(images)))
