"""Fixed simplex-ETF weight layers.

Rangamani et al. (ICML 2023, Section 5.3 and Fig. 7) ask whether the layers
of a deep classifier that show intermediate neural collapse can be replaced by
fixed simplex equiangular tight frames (ETFs) without losing accuracy. This
module builds the ETF matrices and a callback that fixes the top weight layers
of a model to them before training.

The canonical rank-(K-1) simplex ETF is

    E_K = sqrt(K / (K - 1)) (I_K - (1/K) 1 1^T),   shape (K, K).

Its columns have unit norm, every pair of columns has cosine -1/(K-1), and its
Gram matrix is `E_K^T E_K = (K/(K-1)) (I_K - 11^T/K)` because the centring
matrix `I_K - 11^T/K` is a symmetric projection. A hidden Dense layer
of width H with H inputs is fixed to `E_H`. The classifier with d inputs and C
classes gets `W = sqrt(C/(C-1)) (I_C - 11^T/C) P^T`, where `P` (d x C) contains
the first C columns of the d x d identity, so the classifier reads the first C
input features and maps them to an ETF. Rangamani et al. take this lift of a
C x C ETF to d dimensions from Zhu et al. (2021).

Layer count convention. The paper trains "the bottom L layers" and fixes the
rest to ETFs, plotting accuracy against L ("layers trained"). Here
`layers trained = total weight layers - etf_layers`, where the total counts
every Dense and Conv2D layer, classifier included: the paper's MLP (10 hidden
layers plus the classifier) has 11, so `etf_layers` 1 to 9 are the paper's
"layers trained" 10 to 2, and `etf_layers = 0` is the unconstrained network.
"""

from absl import logging
import keras
import numpy as np

from inc_tf import models


def simplex_etf(k):
  """Build the canonical rank-(k-1) simplex ETF.

  Args:
    k: number of vectors (and their dimension), at least 2.

  Returns:
    A float64 array of shape `[k, k]`, `sqrt(k/(k-1)) (I_k - (1/k) 1 1^T)`:
    unit-norm columns with pairwise cosine `-1/(k-1)`, rank `k-1`, symmetric.

  Raises:
    ValueError: if `k` is not an integer of at least 2.
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
    raise ValueError(
        f"A simplex ETF needs at least 2 vectors, but received k={k!r}. "
        f"Pass an integer k >= 2.")
  k = int(k)
  centring = np.eye(k) - np.full((k, k), 1.0 / k)
  return np.sqrt(k / (k - 1)) * centring


def classifier_etf(d, num_classes):
  """Build the Keras kernel of a classifier fixed to a simplex ETF.

  The classifier weight `W` (`[num_classes, d]`) has rows that form a simplex
  ETF inside the first `num_classes` input coordinates. Keras stores `W^T`.

  Args:
    d: input features of the classifier, at least `num_classes`.
    num_classes: number of classes C, at least 2.

  Returns:
    A float64 array of shape `[d, num_classes]`,
    `W^T = sqrt(C/(C-1)) P (I_C - (1/C) 1 1^T)` with `P` the first C columns
    of the `d x d` identity. Rows `C .. d-1` are zero.

  Raises:
    ValueError: if `num_classes < 2` or `d < num_classes`.
  """
  etf = simplex_etf(num_classes)
  if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or (
      d < num_classes):
    raise ValueError(
        f"A classifier ETF lifts a {num_classes}-class ETF into d input "
        f"features, so it needs d >= num_classes, but received d={d!r} and "
        f"num_classes={num_classes}. Widen the layer below the classifier.")
  kernel = np.zeros((int(d), num_classes))
  kernel[:num_classes] = etf
  return kernel


def etf_kernel(layer, is_classifier):
  """Build the ETF kernel for one weight layer, in the layer's kernel layout.

  Args:
    layer: a built `keras.layers.Dense` or `keras.layers.Conv2D`.
    is_classifier: whether `layer` is the model's last weight layer.

  Returns:
    A float64 array with the shape of `layer.kernel`: `classifier_etf` for
    the classifier, `simplex_etf(H)` for a hidden `[H, H]` Dense kernel.

  Raises:
    ValueError: if `layer` is a Conv2D, or a hidden Dense kernel is not
      square, because neither has a canonical simplex ETF.
  """
  shape = tuple(layer.kernel.shape)
  if not isinstance(layer, keras.layers.Dense):
    raise ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}, kernel shape {shape}) "
        f"cannot be fixed to a simplex ETF: only Dense layers can. Lower "
        f"etf_layers so that only Dense layers are fixed.")
  if is_classifier:
    return classifier_etf(shape[0], shape[1])
  if shape[0] != shape[1]:
    raise ValueError(
        f"Hidden layer {layer.name!r} has kernel shape {shape}, but a hidden "
        f"layer is fixed to a square H x H simplex ETF. Lower etf_layers so "
        f"that only layers with as many inputs as units are fixed.")
  return simplex_etf(shape[0])


class FixTopLayersToETF(keras.callbacks.Callback):
  """Fix the top weight layers of a model to simplex ETFs before training.

  Uses `on_train_begin` only. There it takes the last `num_layers` Dense and
  Conv2D layers in forward order (`inc_tf.models.weight_layers`, classifier
  included), assigns each kernel its simplex ETF (see `etf_kernel`) and sets
  `kernel.trainable = False`. In Keras 3 that moves the kernel from
  `model.trainable_variables` to `model.non_trainable_variables`, so a loop
  that updates and decays only `model.trainable_variables` leaves it exactly
  unchanged. Biases (the classifier's) and the BatchNormalization layers after
  a fixed layer stay trainable. Nothing is written to disk; the layers fixed
  are logged at info level.

  The callback is idempotent: calling `on_train_begin` again assigns the same
  ETFs, so a loop that restores a checkpoint after this hook restores the
  identical values.

  With `layers trained = total weight layers - num_layers`, the paper's
  10-hidden-layer MLP trained with "L layers" uses `num_layers = 11 - L`.

  Example:

  ```python
  model = inc_tf.models.mlp((28, 28, 1), depth=3, width=64, num_classes=10)
  model.compile(...)
  model.fit(x, y, callbacks=[FixTopLayersToETF(2)])  # classifier and dense_3
  ```
  """

  def __init__(self, num_layers):
    """Store the number of layers to fix.

    Args:
      num_layers: number of top weight layers to fix, at least 1. The
        classifier is always the first one fixed.

    Raises:
      ValueError: if `num_layers` is not an integer of at least 1.
    """
    super().__init__()
    if isinstance(num_layers, bool) or not isinstance(
        num_layers, (int, np.integer)) or num_layers < 1:
      raise ValueError(
          f"num_layers must be an integer of at least 1, but received "
          f"{num_layers!r}. Pass how many top weight layers to fix, or leave "
          f"the callback out for an unconstrained run.")
    self.num_layers = int(num_layers)
    self.fixed_layers = []

  def check(self, model):
    """Raise ValueError if the top `num_layers` weight layers of `model` cannot be fixed.

    `on_train_begin` runs the same checks. Calling this first lets a
    caller reject a run before it writes anything.
    """
    self._top_kernels(model)

  def _top_kernels(self, model):
    """Return all weight layers of `model`, the top ones and their ETF kernels.

    Raises:
      ValueError: if `model` has fewer weight layers than `num_layers`, or
        one of the top ones has no simplex ETF (see `etf_kernel`).
    """
    layers = models.weight_layers(model)
    if self.num_layers > len(layers):
      raise ValueError(
          f"Cannot fix the top {self.num_layers} weight layers of model "
          f"{model.name!r}: it has only {len(layers)} "
          f"({', '.join(layer.name for layer in layers)}). Pass at most "
          f"{len(layers)}.")
    top = layers[len(layers) - self.num_layers:]
    kernels = [etf_kernel(layer, is_classifier=layer is layers[-1])
               for layer in top]
    return layers, top, kernels

  def on_train_begin(self, logs=None):
    del logs  # Unused.

    # Every kernel is built first, so an invalid layer leaves the model
    # untouched.
    layers, top, kernels = self._top_kernels(self.model)

    for layer, kernel in zip(top, kernels):
      layer.kernel.assign(kernel.astype(layer.kernel.dtype))
      layer.kernel.trainable = False
    self.fixed_layers = [layer.name for layer in top]
    logging.info(
        "Fixed %d of %d weight layers to simplex ETFs: %s; training %d.",
        len(top), len(layers), ", ".join(self.fixed_layers),
        len(layers) - len(top))
