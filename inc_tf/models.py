"""MLP, ConvNet and ResNet-18/34/50 classifiers as flat Keras functional models.

Every model maps `[batch, *input_shape]` images to `[batch, num_classes]` logits
(no softmax, because training uses the MSE loss on the logits). The models are
flat, with no nested sub-models, and every Dense and Conv2D layer is called
exactly once. So the input of each weight layer is one tensor of the model's
graph, which a probe model can expose. `weight_layers` lists those layers in
forward order.

Batch normalisation. Every `BatchNormalization` layer uses `momentum=0.9` and
`epsilon=1e-5`, which match the defaults of PyTorch's `torch.nn.BatchNorm2d`.
PyTorch's `momentum=0.1` weights the new batch and Keras's `momentum=0.9`
weights the old moving statistic, so the two describe the same update. One
difference remains: PyTorch updates the moving variance with the unbiased batch
variance and Keras with the biased one, a factor of `(n - 1) / n` for `n`
values per channel in a batch. Every layer also uses `synchronized=True`, so
under `tf.distribute.MirroredStrategy` the batch mean and variance are
all-reduced over the replicas. Training on N replicas with a global batch B
then normalises like one replica with batch B, up to float rounding.
Convolutions and Dense layers followed by batch normalisation have no bias,
because the BN offset `beta` would absorb it.

Initialisation. The Keras defaults: Dense and Conv2D kernels are Glorot
uniform with zero biases, and BN starts with `gamma = 1`, `beta = 0`, moving
mean 0 and moving variance 1. PyTorch's default layer initialisation and
torchvision's ResNet initialisation (Kaiming normal, fan-out) differ from this,
so weights at epoch 0 are not distributed like those of PyTorch reference code.

ResNet for 32 x 32 inputs. The ImageNet stem (a 7 x 7 stride-2 convolution
and a 3 x 3 stride-2 max-pool) would shrink a 32 x 32 image to 8 x 8 before the
first stage. Like the usual CIFAR ResNets, the stem here is one 3 x 3 stride-1
convolution with `width` (default 64) channels, BN and ReLU, with no max-pool,
so the four stages see 32, 16, 8 and 4 pixels square. Stages 2 to 4 halve the
resolution in their first block. There, a strided 3 x 3 convolution pads one
pixel on every side, as PyTorch's `padding=1` does, because Keras's
`padding="same"` would pad only the bottom and right edges at stride 2. Basic
blocks (ResNet-18 and -34) are two 3 x 3 convolutions. Bottleneck blocks
(ResNet-50) are 1 x 1, 3 x 3 and 1 x 1 convolutions with an expansion of 4,
and the 3 x 3 convolution carries the stride, as in torchvision. A block whose
output shape differs from its input shape has a projection shortcut (1 x 1
convolution and BN), and other blocks add their input unchanged. Global
average pooling then feeds the Dense classifier. So ResNet-18, -34 and -50
have 21, 37 and 54 weight layers: the stem, 16, 32 or 48 block convolutions,
3, 3 or 4 shortcuts, and the classifier.

Layer names are stable and unique within a model:

- MLP: `dense_1` ... `dense_<depth>`, `bn_<i>`, `relu_<i>`, `classifier`.
- ConvNet: `conv_stem_1`, `conv_stem_2`, `conv_1` ... `conv_<depth>`, with
  `bn_*` and `relu_*` to match, and `classifier`.
- ResNet: `conv_stem`, then `stage<s>_block<b>_conv<i>`, `_conv<i>_pad` (before
  a strided 3 x 3 convolution), `_bn<i>`, `_relu<i>`, `_shortcut`,
  `_shortcut_bn`, `_add` and `_out` (the block's final ReLU), then `avg_pool`
  and `classifier`.
"""

import numbers

import keras

MODEL_NAMES = ("mlp", "convnet", "resnet18", "resnet34", "resnet50")

# Per-name defaults of `build_model`: (depth, width). The MLP and ConvNet
# values are those of Rangamani et al., "Feature learning in deep classifiers
# through intermediate neural collapse" (ICML 2023): 10 hidden layers of width
# 1024, and 20 convolutional blocks of 128 channels. A ResNet's depth is fixed
# by its variant, and its width is the base channel count of the first stage.
_DEFAULTS = {
    "mlp": (10, 1024),
    "convnet": (20, 128),
    "resnet18": (18, 64),
    "resnet34": (34, 64),
    "resnet50": (50, 64),
}

# Blocks per stage and whether the blocks are bottlenecks, per ResNet variant.
_RESNET_STAGES = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
}
_BOTTLENECK_EXPANSION = 4

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _batch_norm(name):
  return keras.layers.BatchNormalization(
      momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, synchronized=True, name=name)


def _classifier(num_classes):
  # float32 keeps the logits and the MSE loss in full precision under a
  # mixed-precision global policy. With the default policy it changes nothing.
  return keras.layers.Dense(num_classes, name="classifier", dtype="float32")


def _check_positive_int(value, name, fix):
  """Return `value` as a Python int, raising ValueError unless it is >= 1."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or
      value < 1):
    raise ValueError(
        f"{name} must be a positive integer, but received {value!r}. {fix}")
  # Keras layers reject NumPy integers such as `units=np.int64(5)`.
  return int(value)


def _check_num_classes(num_classes):
  """Return `num_classes` as a Python int, raising ValueError unless >= 2."""
  if (isinstance(num_classes, bool) or
      not isinstance(num_classes, numbers.Integral) or num_classes < 2):
    raise ValueError(
        f"num_classes must be an integer of at least 2, but received "
        f"{num_classes!r}. Pass the number of classes of the dataset.")
  return int(num_classes)


def _check_image_shape(input_shape, model_name, min_size):
  if len(input_shape) != 3:
    raise ValueError(
        f"{model_name} expects input_shape (height, width, channels), but "
        f"received {input_shape!r}. Add a channel axis for grayscale images.")
  height, width, _ = input_shape
  # A size of None (variable) is left unchecked.
  too_small = [size for size in (height, width)
               if size is not None and size < min_size]
  if too_small:
    raise ValueError(
        f"{model_name} needs images of at least {min_size} x {min_size} "
        f"pixels, but received input_shape {input_shape!r}. Pad the images.")


def mlp(input_shape, depth, width, num_classes, name="mlp"):
  """Build a multilayer perceptron with batch normalisation.

  The input is flattened, then passes `depth` hidden blocks of
  Dense(`width`, no bias) -> BatchNormalization -> ReLU, and a Dense
  classifier with bias. Rangamani et al. (ICML 2023) use depth 10 and width
  1024.

  Args:
    input_shape: shape of one example without the batch axis, e.g.
      `(32, 32, 3)`; any rank.
    depth: number of hidden blocks, at least 1. Weight layers `dense_1` to
      `dense_<depth>`.
    width: units of every hidden Dense layer, at least 1.
    num_classes: number of classes (logits), at least 2.
    name: name of the Keras model.

  Returns:
    A `keras.Model` mapping `[batch, *input_shape]` to `[batch, num_classes]`
    logits, with `depth + 1` Dense layers.

  Raises:
    ValueError: if `depth`, `width` or `num_classes` is out of range.
  """
  depth = _check_positive_int(
      depth, "depth", "Pass the number of hidden layers.")
  width = _check_positive_int(
      width, "width", "Pass the units per hidden layer.")
  num_classes = _check_num_classes(num_classes)

  inputs = keras.Input(shape=tuple(input_shape), name="image")
  x = keras.layers.Flatten(name="flatten")(inputs)
  for i in range(1, depth + 1):
    x = keras.layers.Dense(width, use_bias=False, name=f"dense_{i}")(x)
    x = _batch_norm(f"bn_{i}")(x)
    x = keras.layers.ReLU(name=f"relu_{i}")(x)
  logits = _classifier(num_classes)(x)
  return keras.Model(inputs, logits, name=name)


def convnet(input_shape, depth, width, num_classes, name="convnet"):
  """Build the deep ConvNet of Rangamani et al. (ICML 2023).

  The stem is Conv2D(2 x 2, stride 2) -> BN -> Conv2D(2 x 2, stride 2) -> BN
  -> ReLU, both with `width` channels and valid padding, so a 32 x 32 image
  becomes 8 x 8. Then come `depth` blocks of Conv2D(3 x 3, `width` channels,
  stride 1, same padding) -> BN -> ReLU, and Flatten -> Dense classifier. All
  convolutions have no bias because BN follows each of them. Rangamani et al.
  use depth 20 and width 128 on 32 x 32 inputs.

  Args:
    input_shape: `(height, width, channels)` of one image, at least 4 x 4.
    depth: number of 3 x 3 blocks, at least 1. Weight layers `conv_1` to
      `conv_<depth>`.
    width: channels of every convolution, at least 1.
    num_classes: number of classes (logits), at least 2.
    name: name of the Keras model.

  Returns:
    A `keras.Model` mapping `[batch, height, width, channels]` to
    `[batch, num_classes]` logits, with `depth + 2` Conv2D layers and one
    Dense layer.

  Raises:
    ValueError: if an argument is out of range or the image is smaller than
      4 x 4.
  """
  depth = _check_positive_int(
      depth, "depth", "Pass the number of 3 x 3 blocks.")
  width = _check_positive_int(
      width, "width", "Pass the channels per convolution.")
  num_classes = _check_num_classes(num_classes)
  _check_image_shape(input_shape, "convnet", min_size=4)

  inputs = keras.Input(shape=tuple(input_shape), name="image")
  x = inputs
  for i in (1, 2):
    x = keras.layers.Conv2D(
        width, 2, strides=2, padding="valid", use_bias=False,
        name=f"conv_stem_{i}")(x)
    x = _batch_norm(f"bn_stem_{i}")(x)
  x = keras.layers.ReLU(name="relu_stem")(x)

  for i in range(1, depth + 1):
    x = keras.layers.Conv2D(
        width, 3, strides=1, padding="same", use_bias=False,
        name=f"conv_{i}")(x)
    x = _batch_norm(f"bn_{i}")(x)
    x = keras.layers.ReLU(name=f"relu_{i}")(x)

  x = keras.layers.Flatten(name="flatten")(x)
  logits = _classifier(num_classes)(x)
  return keras.Model(inputs, logits, name=name)


def _conv(x, filters, kernel_size, strides, name):
  """Apply a biasless convolution that pads like PyTorch's `padding=k // 2`."""
  if strides > 1 and kernel_size > 1:
    x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    padding = "valid"
  else:
    padding = "same"
  return keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding=padding, use_bias=False,
      name=name)(x)


def _shortcut(x, filters, strides, prefix):
  """Return the block input, projected by 1 x 1 conv and BN if shapes differ."""
  if strides == 1 and x.shape[-1] == filters:
    return x
  x = keras.layers.Conv2D(
      filters, 1, strides=strides, use_bias=False, name=f"{prefix}_shortcut")(x)
  return _batch_norm(f"{prefix}_shortcut_bn")(x)


def _basic_block(x, filters, strides, prefix):
  shortcut = _shortcut(x, filters, strides, prefix)

  x = _conv(x, filters, 3, strides, f"{prefix}_conv1")
  x = _batch_norm(f"{prefix}_bn1")(x)
  x = keras.layers.ReLU(name=f"{prefix}_relu1")(x)
  x = _conv(x, filters, 3, 1, f"{prefix}_conv2")
  x = _batch_norm(f"{prefix}_bn2")(x)

  x = keras.layers.Add(name=f"{prefix}_add")([x, shortcut])
  return keras.layers.ReLU(name=f"{prefix}_out")(x)


def _bottleneck_block(x, filters, strides, prefix):
  shortcut = _shortcut(x, filters * _BOTTLENECK_EXPANSION, strides, prefix)

  x = _conv(x, filters, 1, 1, f"{prefix}_conv1")
  x = _batch_norm(f"{prefix}_bn1")(x)
  x = keras.layers.ReLU(name=f"{prefix}_relu1")(x)
  x = _conv(x, filters, 3, strides, f"{prefix}_conv2")
  x = _batch_norm(f"{prefix}_bn2")(x)
  x = keras.layers.ReLU(name=f"{prefix}_relu2")(x)
  x = _conv(x, filters * _BOTTLENECK_EXPANSION, 1, 1, f"{prefix}_conv3")
  x = _batch_norm(f"{prefix}_bn3")(x)

  x = keras.layers.Add(name=f"{prefix}_add")([x, shortcut])
  return keras.layers.ReLU(name=f"{prefix}_out")(x)


def resnet(input_shape, num_classes, variant, width=64, name=None):
  """Build a ResNet-18, -34 or -50 with a stem for 32 x 32 images.

  See the module docstring for the stem, padding and shortcut choices. Stage
  `s` (1 to 4) has `width * 2**(s - 1)` channels (64, 128, 256, 512 by
  default), times 4 at the output of bottleneck blocks.

  Args:
    input_shape: `(height, width, channels)` of one image, e.g. `(32, 32, 3)`.
      At least 8 x 8, so that the last stage has at least one pixel.
    num_classes: number of classes (logits), at least 2.
    variant: 18, 34 or 50.
    width: channels of the stem and the first stage, at least 1. Defaults to
      64, the standard ResNet; small values build fast models for tests.
    name: name of the Keras model. Defaults to `resnet<variant>`.

  Returns:
    A `keras.Model` mapping `[batch, height, width, channels]` to
    `[batch, num_classes]` logits.

  Raises:
    ValueError: if `variant` is not 18, 34 or 50, or another argument is out
      of range.
  """
  if variant not in _RESNET_STAGES:
    raise ValueError(
        f"variant must be one of {sorted(_RESNET_STAGES)}, but received "
        f"{variant!r}.")
  width = _check_positive_int(
      width, "width", "Pass the base channel count, e.g. 64.")
  num_classes = _check_num_classes(num_classes)
  _check_image_shape(input_shape, f"resnet{variant}", min_size=8)
  blocks_per_stage, bottleneck = _RESNET_STAGES[variant]
  block = _bottleneck_block if bottleneck else _basic_block

  inputs = keras.Input(shape=tuple(input_shape), name="image")
  x = _conv(inputs, width, 3, 1, "conv_stem")
  x = _batch_norm("bn_stem")(x)
  x = keras.layers.ReLU(name="relu_stem")(x)

  for stage, num_blocks in enumerate(blocks_per_stage, start=1):
    filters = width * 2**(stage - 1)
    for index in range(1, num_blocks + 1):
      strides = 2 if stage > 1 and index == 1 else 1
      x = block(x, filters, strides, f"stage{stage}_block{index}")

  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  logits = _classifier(num_classes)(x)
  return keras.Model(inputs, logits, name=name or f"resnet{variant}")


def build_model(name, input_shape, num_classes, depth=None, width=None):
  """Build a classifier by name.

  Args:
    name: one of `MODEL_NAMES`: `mlp`, `convnet`, `resnet18`, `resnet34`,
      `resnet50`.
    input_shape: shape of one example without the batch axis, e.g.
      `(32, 32, 3)`.
    num_classes: number of classes (logits), at least 2.
    depth: hidden blocks of `mlp` (default 10) or 3 x 3 blocks of `convnet`
      (default 20). A ResNet's depth is fixed by its name, so for ResNets it
      must be None or the number in the name.
    width: hidden units of `mlp` (default 1024), channels of `convnet`
      (default 128), or base channels of a ResNet (default 64).

  Returns:
    A flat `keras.Model` from `[batch, *input_shape]` to
    `[batch, num_classes]` logits, named `name`.

  Raises:
    ValueError: if `name` is unknown, `depth` or `width` is below 1 or not an
      integer, or `depth` contradicts a ResNet's name.
  """
  if name not in _DEFAULTS:
    raise ValueError(
        f"Unknown model name {name!r}. Valid names: {', '.join(MODEL_NAMES)}.")
  default_depth, default_width = _DEFAULTS[name]
  depth = default_depth if depth is None else depth
  width = default_width if width is None else width
  depth = _check_positive_int(
      depth, "depth", "Pass a depth of at least 1 or None.")
  width = _check_positive_int(
      width, "width", "Pass a width of at least 1 or None.")

  if name == "mlp":
    return mlp(input_shape, depth, width, num_classes, name=name)
  if name == "convnet":
    return convnet(input_shape, depth, width, num_classes, name=name)
  if depth != default_depth:
    raise ValueError(
        f"{name} has a fixed depth of {default_depth}, but received "
        f"depth={depth!r}. Pass depth=None, or pick another ResNet by name.")
  return resnet(input_shape, num_classes, default_depth, width=width, name=name)


def weight_layers(model):
  """List the Dense and Conv2D layers of a functional model in forward order.

  Keras sorts a functional model's `layers` by decreasing distance from the
  outputs (`keras.src.ops.function.map_graph` in Keras 3.15), which is a
  topological order of the graph when every layer is called once: each layer
  comes after every layer it depends on. The models of this module satisfy
  that, so the order is the forward order, with the input of entry 0 being
  (a reshape of) the model input and the last entry the classifier. In a
  ResNet block, the main-path convolutions of a block come before its
  projection shortcut, because the main path is longer.

  Args:
    model: a flat `keras.Model` built with the functional API.

  Returns:
    A list of `keras.layers.Dense` and `keras.layers.Conv2D` layers (including
    subclasses), in forward order.

  Raises:
    ValueError: if the model nests a sub-model that contains weight layers,
      or a weight layer has more than one call site, because then a layer's
      input is not one tensor of the model's graph.
  """
  layers = []
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      nested = [sub.name for sub in layer._flatten_layers(include_self=False)
                if isinstance(sub, (keras.layers.Dense, keras.layers.Conv2D))]
      if nested:
        raise ValueError(
            f"Model {model.name!r} nests the sub-model {layer.name!r} with "
            f"{len(nested)} weight layers (first: {nested[0]!r}). Build the "
            f"model flat, with every Dense and Conv2D layer called directly "
            f"in the outer model.")
      continue
    if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
      continue
    # NOTE: `_inbound_nodes` is private Keras 3 API, because Keras has no
    # public count of a layer's symbolic calls.
    num_calls = len(layer._inbound_nodes)
    if num_calls != 1:
      raise ValueError(
          f"Weight layer {layer.name!r} of model {model.name!r} has "
          f"{num_calls} call sites, but probing its input needs exactly one. "
          f"Use a separate layer for each call.")
    layers.append(layer)
  return layers
