"""The probe model: every intermediate feature of a classifier in one pass.

A probe point is the input of one weight layer (Dense or Conv2D), paired
with that layer. Point 0 is the input of the first weight layer (for an MLP
the flattened image); the last point is the input of the classifier. The
probe model shares the classifier's layers and variables, so its outputs are
the classifier's own intermediate activations, not copies.
"""

import dataclasses

import keras

WEIGHT_LAYER_TYPES = (keras.layers.Dense, keras.layers.Conv2D)


@dataclasses.dataclass(frozen=True)
class ProbePoint:
  """One probe point.

  Attributes:
    index: Position in the forward computation; 0 is the first weight layer's
      input.
    name: Name of the layer that consumes the probed features.
    layer: That Dense or Conv2D layer; `layer.kernel` is its weight.
  """

  index: int
  name: str
  layer: keras.layers.Layer


def check_functional(model):
  """Raise ValueError unless `model` is a functional classifier with one output."""
  if not isinstance(model, keras.Model):
    raise ValueError(
        f"Expected a Keras functional or Sequential model, got "
        f"{type(model).__name__}; rebuild it with keras.Input and the "
        "functional API so that layer inputs can be probed.")
  try:
    model.inputs  # pylint: disable=pointless-statement
  except (AttributeError, ValueError) as e:
    raise ValueError(
        f"Model {model.name!r} has no symbolic inputs (a subclassed model, or "
        "a Sequential model without keras.Input); build it with the "
        "functional API.") from e
  if len(model.outputs) != 1:
    raise ValueError(
        f"Model {model.name!r} has {len(model.outputs)} outputs; the probe "
        "needs a classifier with one logits output.")


def probe_points(model):
  """List the probe points of a functional classifier in forward order.

  Args:
    model: A Keras functional (or Sequential) classifier whose last weight
      layer is the classifier and whose output is the logits.

  Returns:
    A list of `ProbePoint`, one per Dense or Conv2D layer.

  Raises:
    ValueError: The model is not functional, nests another model that has
      weight layers, calls a weight layer more than once, or has none.
  """
  check_functional(model)

  points = []
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      if any(isinstance(l, WEIGHT_LAYER_TYPES) for l in layer._flatten_layers()):  # pylint: disable=protected-access
        raise ValueError(
            f"Layer {layer.name!r} of model {model.name!r} is a nested model "
            "with weight layers; its features cannot be probed. Build the "
            "classifier as one flat functional model.")
      continue
    if not isinstance(layer, WEIGHT_LAYER_TYPES):
      continue
    if len(layer._inbound_nodes) != 1:  # pylint: disable=protected-access
      raise ValueError(
          f"Layer {layer.name!r} is called {len(layer._inbound_nodes)} times; "  # pylint: disable=protected-access
          "a probe point needs each weight layer called exactly once.")
    points.append(ProbePoint(len(points), layer.name, layer))

  if not points:
    raise ValueError(
        f"Model {model.name!r} has no Dense or Conv2D layer to probe.")
  return points


def build_probe(model):
  """Build the multi-output probe model of a functional classifier.

  Args:
    model: A Keras functional classifier (see `probe_points`).

  Returns:
    A tuple `(probe_model, points)`. `probe_model(x, training=False)` returns
    a list `[h_0, ..., h_{L-1}, logits]`, where `h_l` has the shape of the
    input of `points[l].layer` (`(batch, p)` for Dense, `(batch, H, W,
    C_in)` for Conv2D) and `logits` is `(batch, num_classes)`.
  """
  points = probe_points(model)
  outputs = [point.layer.input for point in points] + [model.outputs[0]]
  # A single input is passed unwrapped so that calling the probe with one
  # tensor matches its input structure.
  inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
  probe_model = keras.Model(inputs, outputs, name=f"{model.name}_probe")
  return probe_model, points
