"""Tests for inc_tf.models: shapes, weight-layer order, layer names, errors."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from inc_tf import models

# Small widths keep every model quick to build and run on a CPU.
_SMALL = {
    "mlp": {"depth": 2, "width": 8},
    "convnet": {"depth": 2, "width": 8},
    "resnet18": {"width": 8},
    "resnet34": {"width": 8},
    "resnet50": {"width": 4},
}


# Cached because a ResNet takes a second or more to build. Tests that change
# weights build their own model.
@functools.lru_cache(maxsize=None)
def _small_model(name, input_shape=(32, 32, 3), num_classes=10):
  return models.build_model(name, input_shape, num_classes, **_SMALL[name])


def _names(layers):
  return [layer.name for layer in layers]


def _resnet_weight_names(blocks_per_stage, convs_per_block, shortcut_blocks):
  names = ["conv_stem"]
  for stage, num_blocks in enumerate(blocks_per_stage, start=1):
    for block in range(1, num_blocks + 1):
      prefix = f"stage{stage}_block{block}"
      names += [f"{prefix}_conv{i}" for i in range(1, convs_per_block + 1)]
      if (stage, block) in shortcut_blocks:
        names.append(f"{prefix}_shortcut")
  return names + ["classifier"]


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape(name, channels):
  model = _small_model(name, input_shape=(32, 32, channels), num_classes=7)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, channels))

  logits = model(images.astype("float32"), training=False)

  assert tuple(logits.shape) == (2, 7)
  assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))


def test_mlp_flat_input_shape():
  model = models.mlp((20,), depth=1, width=4, num_classes=3)

  assert tuple(model(np.zeros((5, 20), "float32")).shape) == (5, 3)


def test_output_is_logits():
  model = _small_model("mlp")
  images = np.random.default_rng(1).normal(size=(4, 32, 32, 3))

  logits = keras.ops.convert_to_numpy(model(images.astype("float32")))

  # Softmax outputs would be positive and sum to one per row.
  assert np.any(logits < 0)
  assert not np.allclose(logits.sum(axis=1), 1.0)


def test_mlp_weight_layers():
  model = models.mlp((8, 8, 1), depth=4, width=6, num_classes=3)

  assert _names(models.weight_layers(model)) == [
      "dense_1", "dense_2", "dense_3", "dense_4", "classifier"]


def test_convnet_weight_layers():
  model = models.convnet((16, 16, 3), depth=3, width=4, num_classes=3)

  assert _names(models.weight_layers(model)) == [
      "conv_stem_1", "conv_stem_2", "conv_1", "conv_2", "conv_3",
      "classifier"]


def test_resnet18_weight_layers():
  names = _names(models.weight_layers(_small_model("resnet18")))

  assert len(names) == 21
  assert names == _resnet_weight_names(
      (2, 2, 2, 2), 2, shortcut_blocks={(2, 1), (3, 1), (4, 1)})


def test_resnet34_weight_layers():
  names = _names(models.weight_layers(_small_model("resnet34")))

  assert len(names) == 37
  assert names == _resnet_weight_names(
      (3, 4, 6, 3), 2, shortcut_blocks={(2, 1), (3, 1), (4, 1)})


def test_resnet50_weight_layers():
  names = _names(models.weight_layers(_small_model("resnet50")))

  assert len(names) == 54
  assert names == _resnet_weight_names(
      (3, 4, 6, 3), 3, shortcut_blocks={(1, 1), (2, 1), (3, 1), (4, 1)})


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_weight_layers_topological(name):
  model = _small_model(name)
  layers = models.weight_layers(model)

  # A layer's input must be computable from the model input without any
  # weight layer that comes later in the list.
  for position, layer in enumerate(layers):
    later = {id(other) for other in layers[position + 1:]}
    stack = [layer.input]
    visited = set()
    while stack:
      producer = stack.pop()._keras_history[0]
      if id(producer) in visited:
        continue
      visited.add(id(producer))
      assert id(producer) not in later, (layer.name, producer.name)
      stack.extend(producer._inbound_nodes[0].input_tensors)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_weight_layers_called_once(name):
  model = _small_model(name)

  for layer in models.weight_layers(model):
    assert len(layer._inbound_nodes) == 1, layer.name


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_layer_names_unique(name):
  names = _names(_small_model(name).layers)

  assert len(names) == len(set(names))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_no_bias_before_batch_norm(name):
  model = _small_model(name)

  for layer in models.weight_layers(model):
    consumers = [node.operation for node in layer._outbound_nodes]
    followed_by_bn = any(
        isinstance(consumer, keras.layers.BatchNormalization)
        for consumer in consumers)
    assert layer.use_bias != followed_by_bn, layer.name


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_only_classifier_has_bias(name):
  model = _small_model(name)

  with_bias = [layer.name for layer in models.weight_layers(model)
               if layer.use_bias]

  assert with_bias == ["classifier"]


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_batch_norm_settings(name):
  model = _small_model(name)
  batch_norms = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]

  assert batch_norms
  for layer in batch_norms:
    assert layer.synchronized, layer.name
    assert layer.momentum == pytest.approx(0.9), layer.name
    assert layer.epsilon == pytest.approx(1e-5), layer.name


def test_mlp_hidden_shapes():
  model = models.mlp((4, 4, 2), depth=2, width=5, num_classes=3)

  assert model.get_layer("dense_1").kernel.shape == (32, 5)
  assert model.get_layer("dense_2").kernel.shape == (5, 5)
  assert model.get_layer("classifier").kernel.shape == (5, 3)


def test_convnet_stem_downsamples_by_four():
  model = models.convnet((32, 32, 3), depth=1, width=4, num_classes=3)

  assert tuple(model.get_layer("conv_1").input.shape) == (None, 8, 8, 4)
  assert model.get_layer("classifier").kernel.shape == (8 * 8 * 4, 3)


def test_resnet_stage_resolutions():
  model = _small_model("resnet18")

  for stage, size, channels in [(1, 32, 8), (2, 16, 16), (3, 8, 32),
                                (4, 4, 64)]:
    output = model.get_layer(f"stage{stage}_block2_out").output
    assert tuple(output.shape) == (None, size, size, channels), stage


def test_resnet50_expansion():
  model = _small_model("resnet50")

  assert tuple(model.get_layer("stage1_block1_out").output.shape) == (
      None, 32, 32, 16)
  assert model.get_layer("classifier").kernel.shape == (4 * 8 * 4, 10)


def test_resnet_strided_conv_pads_both_sides():
  model = models.resnet((8, 8, 1), num_classes=2, variant=18, width=1)
  pad = model.get_layer("stage2_block1_conv1_pad")
  conv = model.get_layer("stage2_block1_conv1")
  conv.set_weights([np.ones((3, 3, 1, 2), "float32")])
  image = np.zeros((1, 8, 8, 1), "float32")
  image[0, 2, 2, 0] = 1.0

  output = keras.ops.convert_to_numpy(conv(pad(image)))[0, :, :, 0]

  # With one pixel of padding on every side, as PyTorch's padding=1, the
  # windows start at rows -1, 1, 3, 5, so pixel (2, 2) lies in one window
  # only. Keras's "same" padding at stride 2 would start them at 0, 2, 4, 6.
  expected = np.zeros((4, 4), "float32")
  expected[1, 1] = 1.0
  np.testing.assert_array_equal(output, expected)


def test_count_params_resnet18():
  model = models.build_model("resnet18", (32, 32, 3), 10)

  # 11,173,962 trainable weights, plus a moving mean and variance for each of
  # the 4,800 BN channels.
  assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == (
      11_173_962)
  assert model.count_params() == 11_183_562


def test_count_params_mlp():
  model = models.build_model("mlp", (28, 28, 1), 10)

  hidden = 784 * 1024 + 9 * 1024 * 1024
  batch_norm = 10 * 4 * 1024
  classifier = 1024 * 10 + 10
  assert model.count_params() == hidden + batch_norm + classifier


def test_build_model_defaults():
  model = models.build_model("convnet", (32, 32, 3), 10)
  names = _names(models.weight_layers(model))

  assert len(names) == 20 + 2 + 1
  assert model.get_layer("conv_1").filters == 128
  assert model.name == "convnet"


def test_build_model_resnet_width():
  model = models.build_model("resnet34", (32, 32, 3), 10, width=4)

  assert model.get_layer("conv_stem").filters == 4
  assert model.get_layer("stage4_block1_conv1").filters == 32


def test_build_model_numpy_integers():
  model = models.build_model(
      "mlp", (4,), np.int64(3), depth=np.int64(2), width=np.int32(5))

  assert _names(models.weight_layers(model)) == [
      "dense_1", "dense_2", "classifier"]
  assert model.get_layer("dense_1").units == 5


def test_resnet_variable_image_size():
  model = models.resnet((None, None, 1), num_classes=3, variant=18, width=2)

  assert tuple(model(np.zeros((1, 16, 16, 1), "float32")).shape) == (1, 3)


def test_build_model_resnet_matching_depth():
  model = models.build_model("resnet18", (32, 32, 3), 10, depth=18, width=2)

  assert len(models.weight_layers(model)) == 21


def test_build_model_unknown_name():
  with pytest.raises(ValueError, match="'vgg16'") as error:
    models.build_model("vgg16", (32, 32, 3), 10)

  for name in models.MODEL_NAMES:
    assert name in str(error.value)


@pytest.mark.parametrize("name", ["mlp", "convnet", "resnet18"])
@pytest.mark.parametrize("value", [0, -3])
def test_build_model_invalid_width(name, value):
  with pytest.raises(ValueError, match=f"width.*{value}"):
    models.build_model(name, (32, 32, 3), 10, width=value)


@pytest.mark.parametrize("name", ["mlp", "convnet"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_build_model_invalid_depth(name, value):
  with pytest.raises(ValueError, match=f"depth.*{value}"):
    models.build_model(name, (32, 32, 3), 10, depth=value)


def test_build_model_resnet_depth_mismatch():
  with pytest.raises(ValueError, match="depth=10"):
    models.build_model("resnet50", (32, 32, 3), 10, depth=10)


def test_invalid_num_classes():
  with pytest.raises(ValueError, match="num_classes.*1"):
    models.mlp((4,), depth=1, width=2, num_classes=1)


def test_resnet_invalid_variant():
  with pytest.raises(ValueError, match="101"):
    models.resnet((32, 32, 3), num_classes=10, variant=101)


def test_image_too_small():
  with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
    models.resnet((4, 4, 3), num_classes=10, variant=18, width=2)


def test_convnet_needs_channel_axis():
  with pytest.raises(ValueError, match=r"\(32, 32\)"):
    models.convnet((32, 32), depth=1, width=2, num_classes=10)


def test_weight_layers_rejects_nested_model():
  inner = models.mlp((4,), depth=1, width=2, num_classes=3)
  inputs = keras.Input((4,))
  outer = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))

  with pytest.raises(ValueError, match="nests the sub-model"):
    models.weight_layers(outer)


def test_weight_layers_rejects_shared_layer():
  shared = keras.layers.Dense(4, name="shared")
  inputs = keras.Input((4,))
  model = keras.Model(inputs, shared(shared(inputs)))

  with pytest.raises(ValueError, match="'shared'.*2 call sites"):
    models.weight_layers(model)


def test_synchronized_batch_norm_matches_one_replica(two_replicas):
  strategy = two_replicas
  with strategy.scope():
    model = models.mlp((6,), depth=2, width=5, num_classes=3)
  reference = models.mlp((6,), depth=2, width=5, num_classes=3)
  reference.set_weights(model.get_weights())
  # Each replica's half differs in mean, so per-replica statistics would
  # normalise differently from the statistics of the whole batch.
  rng = np.random.default_rng(2)
  features = rng.normal(size=(8, 6)).astype("float32")
  features[4:] += 3.0

  dataset = tf.data.Dataset.from_tensor_slices(features).batch(8)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
  per_replica = strategy.run(lambda x: model(x, training=True), args=(batch,))
  distributed = np.concatenate(
      [t.numpy() for t in strategy.experimental_local_results(per_replica)])
  expected = reference(features, training=True).numpy()

  np.testing.assert_allclose(distributed, expected, rtol=1e-4, atol=1e-5)


def test_logits_float32_under_mixed_precision():
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = models.mlp((4,), depth=1, width=3, num_classes=2)
    logits = model(np.ones((2, 4), "float32"))
  finally:
    keras.mixed_precision.set_global_policy("float32")

  assert model.get_layer("dense_1").compute_dtype == "float16"
  assert keras.backend.standardize_dtype(logits.dtype) == "float32"
