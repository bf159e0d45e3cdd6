"""Streaming measurement of every probe point of a Keras classifier.

`measure` runs the probe model (`inc_tf.probe.build_probe`) in inference mode
over `tf.data` batches and accumulates, for every probe point, the
`metrics.ClassStats` that `metrics.finalize` turns into the collapse metrics.
Memory does not grow with the number of samples: no feature matrix is kept,
only per-class sums and `p x p` (or `p x r`) products.

Passes over the data, each one forward pass of the probe model:

1. Training split: class counts and sums, and for points wider than
   `max_covariance_dim` the first block `Sigma_W Omega` of the `lambda_max`
   estimate. Features are shifted by class means taken from the first batch,
   so that a large common offset does not cancel in float32.
2. Training split: features centred by the pass-1 class means. Within sums of
   squares, the `p x p` scatter or the next Krylov product and the
   projection of `Sigma_W` on the span of the class means (for `nc1`), and
   the nearest-class-centre counts of NC4.
3. Only for wide points and `lambda_max_passes > 0`: one more Krylov product
   per extra pass.
4. Test split: features shifted by the training class means, which gives
   exact traces in one pass and the NC4 counts against those means.

All per-batch work runs inside `tf.function`s on the strategy's devices:
float32 matmuls (float64 for float64 models) on shifted or centred
features, accumulated across batches in float64. The `p x p` scatter is
computed as its upper block triangle, on GPU or TPU replicas by the
replicas, on CPU replicas by host BLAS `syrk` in threads that multiply one
step's features while the replicas run the next (`host_scatter`, see
`_HostScatter`). Each step takes a group of up to
`MAX_GROUP` batches (see `batch_group`), and scatter blocks are summed in
float32 over at most `FOLD_BATCHES` batches before they are added in
float64. Under a strategy with several replicas each replica works on its
part of the group and the partial sums are added with
`strategy.reduce(SUM)` after every step. With one replica the batch step
is compiled with XLA by default (`jit_compile`). The small corrections
for the shift (`- sum_c r_c r_c^T / n_c`) and all metric formulas run on
the host in float64. The kernel spectra and the training metrics are
computed in host threads while the passes run (on CPU replicas at idle
priority, see `_HostPool`).
"""

import concurrent.futures
import ctypes
import dataclasses
import functools
import itertools
import os
import threading
import time
from typing import Optional
import weakref

from absl import logging
import keras
import numpy as np
import tensorflow as tf
import threadpoolctl

from inc_tf import metrics
from inc_tf import probe as probe_lib


# Scatter blocks are summed in float32 over at most this many batches, and at
# least one step, before they are added to the float64 totals. One float32
# matmul already sums a whole step.
FOLD_BATCHES = 16

# Widths of the column blocks of the upper-triangle scatter: blocks are at
# least this wide, and a scatter is split into at most this many.
SCATTER_BLOCK_MIN_WIDTH = 128
SCATTER_MAX_BLOCKS = 8

# Every pass takes up to MAX_GROUP batches per step, as many as fit in
# GROUP_ROWS rows and in GROUP_FEATURE_BYTES of probe features, and runs the
# probe model on the whole group at once. On a 2-core CPU the paper's MLP ran
# its probe model 1.3 times as fast over 512 rows as over 128. The byte
# bound keeps wide convolutional features at the caller's batch size.
GROUP_ROWS = 512
MAX_GROUP = 4
GROUP_FEATURE_BYTES = 64 * 2**20

# How long `_HostPool.result` waits before it checks whether the idle thread
# running a task gets any CPU time.
STARVED_CHECK_SECONDS = 0.2


@dataclasses.dataclass
class _PointLayout:
  """Static facts about one probe point."""

  index: int
  name: str
  feature_shape: tuple
  dim: int
  wide: bool
  kernel: Optional[np.ndarray]
  is_classifier: bool
  compute_dtype: tf.DType


def _check_model(model):
  """Raise ValueError unless `model` is a classifier with `(batch, C)` logits."""
  probe_lib.check_functional(model)
  shape = model.outputs[0].shape
  if len(shape) != 2:
    raise ValueError(
        f"Model {model.name!r} outputs shape {tuple(shape)}, but measure "
        "needs logits of shape (batch, num_classes); end the model with "
        "Flatten or global pooling and a Dense classifier.")


def _check_images(dataset, name, inputs, model_name):
  """Raise ValueError unless `dataset`'s images fit the model's input.

  Keras accepts inputs with one axis of size 1 more or less than the
  model's input at the end, so those pass too.

  Args:
    dataset: `tf.data.Dataset` that `_check_dataset` accepted.
    name: "train_dataset" or "test_dataset", for the messages.
    inputs: The model's symbolic inputs.
    model_name: The model's name, for the messages.
  """
  images = dataset.element_spec[0]
  if not isinstance(images, tf.TensorSpec) or len(inputs) != 1:
    return
  expected = inputs[0].shape
  shape = images.shape
  if shape.rank is None:
    return
  if shape.rank == len(expected) - 1:
    shape = shape.concatenate([1])
  elif shape.rank == len(expected) + 1 and shape[-1] == 1:
    shape = shape[:-1]
  if not shape.is_compatible_with(expected):
    raise ValueError(
        f"{name} yields images of shape {images.shape}, but model "
        f"{model_name!r} takes inputs of shape {tuple(expected)}; batch the "
        "dataset with .batch(batch_size) and give the images the model's "
        "input shape.")


def _num_classes_of(model):
  width = model.outputs[0].shape[-1]
  if width is None:
    raise ValueError(
        f"The output width of model {model.name!r} is unknown; pass "
        "num_classes.")
  return int(width)


def _split_batch(batch):
  """Return `(images, labels)` of a dataset element, labels flat int32."""
  if not isinstance(batch, (tuple, list)) or len(batch) < 2:
    raise ValueError(
        "Expected dataset elements (images, labels), got "
        f"{type(batch).__name__}; map the dataset to (image, label) pairs.")
  images, labels = batch[0], batch[1]
  return images, tf.reshape(tf.cast(labels, tf.int32), [-1])


def _check_dataset(dataset, name):
  """Raise ValueError unless `dataset` is a finite dataset of labelled batches.

  The checks read only the dataset's type, cardinality and element spec, so
  they run before any pass. A repeated dataset would never end, and float
  or one-hot labels would be truncated to class ids without an error.

  Args:
    dataset: What the caller passed as `name`.
    name: "train_dataset" or "test_dataset", for the messages.
  """
  if not isinstance(dataset, tf.data.Dataset):
    raise ValueError(
        f"{name} must be a tf.data.Dataset of (images, labels) batches, got "
        f"{type(dataset).__name__}; wrap arrays with tf.data.Dataset."
        "from_tensor_slices((images, labels)).batch(1000).")
  if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
    raise ValueError(
        f"{name} is infinite, so a pass over it would never end; pass one "
        "epoch of batches (leave out .repeat(), or add .take(steps)).")
  spec = dataset.element_spec
  if not isinstance(spec, (tuple, list)) or len(spec) < 2:
    raise ValueError(
        f"Expected {name} elements (images, labels), got "
        f"{type(spec).__name__}; map the dataset to (image, label) pairs.")
  labels = spec[1]
  if not isinstance(labels, tf.TensorSpec) or not labels.dtype.is_integer:
    raise ValueError(
        f"{name} labels must be integer class ids, got {labels}; convert "
        "float ids with tf.cast(labels, tf.int32).")
  shape = labels.shape
  if shape.rank is not None and (
      shape.rank > 2 or (shape.rank == 2 and shape[1] != 1)):
    raise ValueError(
        f"{name} labels must have shape (batch,) or (batch, 1), got "
        f"{shape}; convert one-hot labels with tf.argmax(labels, axis=-1).")


def _compute_dtype(dtype):
  """Return the dtype of per-batch products: float64 only for float64 features."""
  return tf.float64 if dtype == tf.float64 else tf.float32


class StreamingMeasurement:
  """Measures every probe point of one model, reusing its traced passes.

  Build it once and call `measure` after each epoch to avoid retracing the
  probe model. The module-level `measure` keeps one per model and does the
  same.

  Args:
    model: Keras functional classifier whose output is the logits.
    num_classes: Number of classes. Defaults to None: the output width.
    strategy: `tf.distribute.Strategy` whose replicas run the passes.
      Defaults to None: `tf.distribute.get_strategy()`.
    max_covariance_dim: Largest flattened feature size `p` for which the
      `p x p` within-class scatter is accumulated and `lambda_max` is exact.
      Defaults to `metrics.DEFAULT_MAX_COVARIANCE_DIM` (4096).
    lambda_max_passes: Extra training passes that refine the `lambda_max`
      estimate of wider points (see `metrics.layer_metrics`). Defaults to 0.
    probe: `(probe_model, points)` from `inc_tf.probe.build_probe(model)`.
      Defaults to None: built here.
    jit_compile: Whether each replica's batch step is compiled with XLA:
      True, False or "auto", which compiles it only when the strategy has
      one replica. Defaults to "auto".
    host_scatter: Whether the `p x p` scatters are computed on the host
      with BLAS `syrk` while the replicas run the next step, instead of on
      the replicas: True, False or "auto", which does so only on CPU
      replicas. Defaults to "auto".
  """

  def __init__(self, model, num_classes=None, strategy=None,
               max_covariance_dim=metrics.DEFAULT_MAX_COVARIANCE_DIM,
               lambda_max_passes=0, probe=None, jit_compile="auto",
               host_scatter="auto"):
    _check_model(model)
    if num_classes is None:
      num_classes = _num_classes_of(model)
    if not _is_int(num_classes) or num_classes < 2:
      raise ValueError(
          f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if not _is_int(max_covariance_dim) or max_covariance_dim < 1:
      raise ValueError(
          f"max_covariance_dim must be an integer >= 1, got "
          f"{max_covariance_dim!r}.")
    if not _is_int(lambda_max_passes) or lambda_max_passes < 0:
      raise ValueError(
          f"lambda_max_passes must be an integer >= 0, got "
          f"{lambda_max_passes!r}.")
    if strategy is not None and not isinstance(strategy,
                                               tf.distribute.Strategy):
      raise ValueError(
          f"strategy must be a tf.distribute.Strategy or None, got "
          f"{type(strategy).__name__}; pass for example "
          "tf.distribute.MirroredStrategy(), or None for the current one.")
    if jit_compile not in (True, False, "auto"):
      raise ValueError(
          f"jit_compile must be True, False or 'auto', got {jit_compile!r}.")
    if host_scatter not in (True, False, "auto"):
      raise ValueError(
          f"host_scatter must be True, False or 'auto', got "
          f"{host_scatter!r}.")
    # The model itself is not kept, only its layers through the probe
    # model, so that `measure`'s weak cache entry goes with the model.
    self._model_name = model.name
    self._num_classes = int(num_classes)
    self._strategy = strategy or tf.distribute.get_strategy()
    self._max_covariance_dim = max_covariance_dim
    self._lambda_max_passes = lambda_max_passes
    # NOTE: in TF 2.21 an XLA-compiled replica step fails under a
    # MirroredStrategy over two logical CPU devices ("Trying to access
    # resource ... located in device CPU:1 from device CPU:0"), so "auto"
    # compiles only with one replica. Several GPU replicas are untested.
    replicas = self._strategy.num_replicas_in_sync
    if jit_compile is True and replicas > 1 and not runs_on_accelerators(
        self._strategy):
      raise ValueError(
          f"jit_compile=True is invalid with {replicas} CPU replicas "
          "because XLA fails there in TensorFlow 2.21; pass "
          "jit_compile='auto' or False.")
    if jit_compile == "auto":
      jit_compile = replicas == 1
    self._jit_compile = jit_compile
    # For the 11 probe points of the paper's MLP on a 2-core CPU, one-thread
    # OpenBLAS `syrk` took about 0.57 of the CPU time of the XLA block
    # triangle, and it runs beside the next step's forward pass.
    # NOTE: the GPU and TPU default (XLA blocks on the replicas) has not been
    # timed against host `syrk`.
    if host_scatter == "auto":
      host_scatter = not runs_on_accelerators(self._strategy)
    self._host_scatter = host_scatter
    if probe is None:
      probe = probe_lib.build_probe(model)
    if not isinstance(probe, tuple) or len(probe) != 2:
      raise ValueError(
          f"probe must be the (probe_model, points) pair that "
          f"inc_tf.probe.build_probe(model) returns, got "
          f"{type(probe).__name__}; pass that pair, or leave probe out.")
    self._probe_model, self._points = probe
    layers = {id(layer) for layer in model.layers}
    if any(id(point.layer) not in layers for point in self._points):
      raise ValueError(
          f"The probe was built from a model other than {model.name!r}; "
          "pass probe=inc_tf.probe.build_probe(model), or leave probe out.")
    outputs = model.outputs[0].shape[-1]
    if outputs is not None and int(outputs) != self._num_classes:
      raise ValueError(
          f"num_classes={self._num_classes} does not match the "
          f"{int(outputs)} outputs of model {model.name!r}; the model's "
          "output must be one logit per class, so pass "
          f"num_classes={int(outputs)} or leave it out.")
    # Compiled once, so that the first batch of every measurement does not
    # run the probe model op by op (0.3 s for the paper's MLP on a CPU).
    self._first_batch_forward = tf.function(
        lambda images: self._probe_model(images, training=False))
    self._passes = {}

  def _layouts(self):
    """Return one `_PointLayout` per probe point, with the current kernels."""
    layouts = []
    last = len(self._points) - 1
    for position, point in enumerate(self._points):
      feature_shape = tuple(
          int(d) for d in self._probe_model.outputs[position].shape[1:])
      dim = int(np.prod(feature_shape))
      kernel = keras.ops.convert_to_numpy(point.layer.kernel)
      if not np.issubdtype(kernel.dtype, np.floating):
        raise ValueError(
            f"The kernel of layer {point.layer.name!r} has dtype "
            f"{kernel.dtype}, as in a quantized model; measure the model "
            "before quantization.")
      kernel = np.asarray(kernel, dtype=np.float64)
      if not np.all(np.isfinite(kernel)):
        raise ValueError(
            f"The kernel of layer {point.layer.name!r} contains "
            f"{np.sum(~np.isfinite(kernel))} NaN or infinite values; the "
            "network diverged or its weights are corrupt. Measure a "
            "checkpoint from before the divergence.")
      output_dtype = tf.as_dtype(self._probe_model.outputs[position].dtype)
      layouts.append(_PointLayout(
          index=point.index, name=point.name, feature_shape=feature_shape,
          dim=dim, wide=dim > self._max_covariance_dim, kernel=kernel,
          is_classifier=position == last and kernel.ndim == 2,
          compute_dtype=_compute_dtype(output_dtype)))
    return layouts

  def measure(self, train_dataset, test_dataset=None):
    """Measure every probe point on the training and test splits.

    Args:
      train_dataset: `tf.data.Dataset` of `(images, labels)` batches with
        integer labels `(batch,)` or `(batch, 1)`. Iterated two times (more
        with `lambda_max_passes`), plus one batch for the shift.
      test_dataset: Same for the test split, iterated once. Defaults to None.

    Returns:
      `{"train": [...], "test": [...]}` with one dict per probe point in
      order: `layer` (name of the consuming layer), `index`, then what
      `metrics.finalize` returns. Training results have every key of
      `metrics.METRIC_KEYS`; test results have the keys of
      `metrics.TEST_SPLIT_KEYS`, with NC4 against the training class means.
      `"test"` is an empty list without a test dataset.
    """
    _check_dataset(train_dataset, "train_dataset")
    _check_images(train_dataset, "train_dataset", self._probe_model.inputs,
                  self._model_name)
    if test_dataset is not None:
      _check_dataset(test_dataset, "test_dataset")
      _check_images(test_dataset, "test_dataset", self._probe_model.inputs,
                    self._model_name)
    layouts = self._layouts()
    dense_kernels = [layout.kernel if layout.kernel.ndim == 2 else None
                     for layout in layouts]
    rank = max(self._num_classes - 1, 1)
    with _host_executor(runs_on_accelerators(self._strategy)) as host:
      spectra = [
          None if kernel is None else host.submit(
              metrics.dense_kernel_spectrum, kernel, rank)
          for kernel in dense_kernels]
      return self._measure(train_dataset, test_dataset, layouts, host,
                           spectra)

  def _measure(self, train_dataset, test_dataset, layouts, host, spectra):
    """Run the passes of `measure`, with finalisation on `host`."""
    num_classes = self._num_classes

    # Pass 1: class sums around first-batch class means.
    start = time.perf_counter()
    shifts, batch_rows = self._first_batch_shifts(train_dataset, layouts)
    omegas = [
        metrics.sketch_matrix(layout.dim, metrics.sketch_width(num_classes))
        if layout.wide else None for layout in layouts]
    first = self._run_pass(train_dataset, "sketch", layouts, shifts=shifts,
                           rights=omegas, batch_rows=batch_rows)
    counts = first["counts"]
    self._check_counts(first, "training")
    self._check_finite(first, layouts, "training")
    train_means = []
    krylov = []
    bases = []
    for position, layout in enumerate(layouts):
      sums = first[f"sums_{position}"]
      means = shifts[position] + sums / np.maximum(counts, 1)[:, None]
      train_means.append(means)
      bases.append(metrics.between_basis(means, counts)[0])
      if layout.wide:
        image = _corrected_product(
            first[f"right_{position}"], sums, counts, omegas[position])
        krylov.append(([omegas[position]], [image]))
      else:
        krylov.append(None)
    logging.info("Measurement pass 1 of the training split done: %d samples "
                 "in %.1f s.", int(counts.sum()), time.perf_counter() - start)

    # Pass 2: centred second moments and NC4 against the final means.
    start = time.perf_counter()
    rights = [
        metrics.next_krylov_block(*krylov[position]) if layout.wide else None
        for position, layout in enumerate(layouts)]
    second = self._run_pass(
        train_dataset, "centred", layouts, shifts=train_means, rights=rights,
        bases=[basis if layout.wide else None
               for basis, layout in zip(bases, layouts)],
        ncc_means=train_means, ncc_valid=counts > 0, batch_rows=batch_rows)
    self._check_counts(second, "training")
    train_stats = []
    for position, layout in enumerate(layouts):
      stats = _centred_stats(second, position, layout, train_means[position],
                             counts)
      if layout.wide:
        blocks, images = krylov[position]
        blocks.append(rights[position])
        images.append(_corrected_product(
            second[f"right_{position}"], second[f"sums_{position}"], counts,
            rights[position]))
        basis = bases[position]
        stats.between_basis = basis
        stats.within_in_basis = _corrected_gram(
            second[f"projection_{position}"], second[f"sums_{position}"],
            counts, basis)
      train_stats.append(stats)
    logging.info("Measurement pass 2 of the training split done in %.1f s.",
                 time.perf_counter() - start)

    # Extra Krylov passes refine lambda_max of wide points only.
    for extra in range(self._lambda_max_passes):
      start = time.perf_counter()
      wide_rights = [
          metrics.next_krylov_block(*krylov[position]) if layout.wide else None
          for position, layout in enumerate(layouts)]
      if not any(r is not None for r in wide_rights):
        break
      refine = self._run_pass(train_dataset, "krylov", layouts,
                              shifts=train_means, rights=wide_rights,
                              batch_rows=batch_rows)
      for position, layout in enumerate(layouts):
        if layout.wide:
          blocks, images = krylov[position]
          blocks.append(wide_rights[position])
          images.append(_corrected_product(
              refine[f"right_{position}"], refine[f"sums_{position}"], counts,
              wide_rights[position]))
      logging.info("Measurement lambda_max pass %d of %d done in %.1f s.",
                   extra + 1, self._lambda_max_passes,
                   time.perf_counter() - start)

    for position, layout in enumerate(layouts):
      if layout.wide:
        train_stats[position].lambda_max = metrics.krylov_lambda_max(
            *krylov[position]) / counts.sum()

    train_results = [
        host.submit(self._finalize, layout, stats, with_kernel=True,
                    spectrum=None if spectrum is None else functools.partial(
                        host.result, spectrum))
        for layout, stats, spectrum in zip(layouts, train_stats, spectra)]

    results = {"train": [], "test": []}
    if test_dataset is not None:
      results["test"] = self._measure_test(test_dataset, layouts, train_means,
                                           counts, batch_rows)
    results["train"] = [host.result(result) for result in train_results]
    return results

  def _measure_test(self, test_dataset, layouts, train_means, train_counts,
                    batch_rows):
    """Measure the test split in one pass around the training class means.

    The test batches are regrouped like the training batches, in groups of
    `batch_group(batch_rows, ...)` training batches.
    """
    start = time.perf_counter()
    valid = train_counts > 0
    shifts = []
    for means in train_means:
      shift = means.copy()
      shift[~valid] = means[valid].mean(axis=0)
      shifts.append(_round_to_float32(shift))
    test = self._run_pass(test_dataset, "test", layouts, shifts=shifts,
                          ncc_means=train_means, ncc_valid=valid,
                          batch_rows=batch_rows)
    self._check_counts(test, "test")
    self._check_finite(test, layouts, "test")
    counts = test["counts"]
    if counts.sum() == 0:
      raise ValueError(
          "The test dataset has no samples; pass None as test_dataset to "
          "skip the test split.")
    test_results = []
    for position, layout in enumerate(layouts):
      sums = test[f"sums_{position}"]
      means = shifts[position] + sums / np.maximum(counts, 1)[:, None]
      stats = _centred_stats(test, position, layout, means, counts)
      test_results.append(self._finalize(layout, stats, with_kernel=False))
    logging.info("Measurement of the test split done: %d samples in %.1f s.",
                 int(counts.sum()), time.perf_counter() - start)
    return test_results

  def _finalize(self, layout, stats, with_kernel, spectrum=None):
    """Return the metrics of one point.

    `spectrum` is None or a function that returns the kernel's
    `metrics.dense_kernel_spectrum`.
    """
    result = {"layer": layout.name, "index": layout.index}
    result.update(metrics.finalize(
        stats, self._num_classes,
        kernel=layout.kernel if with_kernel else None,
        is_classifier=layout.is_classifier,
        kernel_spectrum=spectrum() if spectrum is not None else None))
    return result

  def _check_counts(self, totals, split):
    seen = int(totals["num_seen"])
    counted = int(totals["counts"].sum())
    if seen != counted:
      raise ValueError(
          f"{seen - counted} of {seen} {split} labels are outside "
          f"[0, {self._num_classes - 1}]; check num_classes and the labels "
          "of the dataset.")
    if split == "training" and seen == 0:
      raise ValueError("The training dataset has no samples.")

  def _check_finite(self, totals, layouts, split):
    """Raise ValueError if a point's class sums are NaN or infinite.

    One NaN or infinite feature makes its class sums non-finite, so this
    finds them without looking at every feature.
    """
    for position, layout in enumerate(layouts):
      if not np.all(np.isfinite(totals[f"sums_{position}"])):
        raise ValueError(
            f"The features at probe point {layout.index} (the input of layer "
            f"{layout.name!r}) contain NaN or infinite values on the {split} "
            "split; the "
            "network diverged or the input is corrupt. Check the images "
            "(for example with tf.debugging.check_numerics) and the "
            "weights.")

  def _first_batch_shifts(self, dataset, layouts):
    """Return per-point `(C, p)` shifts and the size of the first batch.

    The shifts are the first batch's class means, and classes missing from
    it get its overall mean. Any shift gives exact results after the
    correction. One close to the class means keeps float32 cancellation
    small.
    """
    batch = next(iter(dataset.take(1)), None)
    if batch is None:
      raise ValueError("The training dataset has no samples.")
    images, labels = _split_batch(batch)
    outputs = self._first_batch_forward(images)
    labels = labels.numpy()
    shifts = []
    for position, layout in enumerate(layouts):
      features = np.asarray(outputs[position], dtype=np.float64).reshape(
          len(labels), layout.dim)
      shift = np.tile(features.mean(axis=0), (self._num_classes, 1))
      for c in np.unique(labels):
        if 0 <= c < self._num_classes:
          shift[c] = features[labels == c].mean(axis=0)
      shifts.append(_round_to_float32(shift))
    return shifts, len(labels)

  def _run_pass(self, dataset, kind, layouts, shifts, rights=None, bases=None,
                ncc_means=None, ncc_valid=None, batch_rows=None):
    """Run one pass and return its float64 totals as NumPy arrays.

    Args:
      dataset: `tf.data.Dataset` of `(images, labels)` batches.
      kind: "sketch", "centred", "krylov" or "test"; selects what is
        accumulated.
      layouts: `_PointLayout` per point.
      shifts: Per point `(C, p)` vectors subtracted from each sample by class.
      rights: Per point `(p, r)` matrix `Q` for the product `D^T D Q`, or
        None.
      bases: Per point `(p, k)` basis for `(D U)^T (D U)`, or None.
      ncc_means: Per point `(C, p)` class means of the nearest-centre rule.
      ncc_valid: `(C,)` bool, classes the rule may predict.
      batch_rows: Size of the training dataset's first batch, or None.
        With `group = batch_group(batch_rows, ...) > 1` the pass rebatches
        the dataset into elements of `group * batch_rows` rows; None keeps
        the batches as they are.

    Returns:
      A dict of NumPy arrays. A `p x p` scatter comes back whole as
      `scatter_{position}`, although the device computes only its upper
      block triangle.
    """
    num_points = len(layouts)
    rights = rights or [None] * num_points
    bases = bases or [None] * num_points
    with_ncc = ncc_means is not None
    with_squares = kind in ("centred", "test")
    scatter_blocks = [
        triangle_blocks(layout.dim)
        if kind == "centred" and not layout.wide else None
        for layout in layouts]
    group = 1
    if batch_rows:
      row_bytes = sum(layout.dim * layout.compute_dtype.size
                      for layout in layouts)
      group = batch_group(batch_rows, row_bytes)
    if group > 1:
      dataset = dataset.rebatch(group * batch_rows)

    constants = {"shift": [_as_tensor(s) for s in shifts]}
    constants["right"] = [_as_tensor(r) for r in rights]
    constants["basis"] = [_as_tensor(b) for b in bases]
    if with_ncc:
      # NC4 compares `m_c . (h - o)` across classes, and `h - o` equals
      # `d + (s_y - o)` for the shifted features `d`, so the step computes
      # `m_c . d + offsets[c, y]` without a second centred copy of `h`.
      constants["ncc_means"] = []
      constants["ncc_offsets"] = []
      for means, shift, layout in zip(ncc_means, shifts, layouts):
        origin = means[ncc_valid].mean(axis=0)
        rounded_shift = shift.astype(
            layout.compute_dtype.as_numpy_dtype).astype(np.float64)
        constants["ncc_means"].append(_as_tensor(means - origin))
        constants["ncc_offsets"].append(_as_tensor(
            (means - origin) @ (rounded_shift - origin).T))
      constants["ncc_penalty"] = tf.constant(
          np.where(ncc_valid, 0.0, np.inf), tf.float32)

    # The element spec is part of the key because the host step relaxes its
    # input shapes between calls. After images of another rank it accepted
    # any rank, which the probe model cannot trace.
    key = (kind, tuple(r is None for r in rights),
           tuple(b is None for b in bases), with_ncc, group,
           tuple(tf.nest.flatten(dataset.element_spec)))
    if key not in self._passes:
      self._passes[key] = self._build_pass(
          layouts, with_squares, scatter_blocks, with_ncc, group)
    totals = {
        name: value.numpy() if isinstance(value, tf.Tensor) else value
        for name, value in self._passes[key](dataset, constants).items()}

    for position, blocks in enumerate(scatter_blocks):
      if blocks is not None and f"scatter_{position}" not in totals:
        totals[f"scatter_{position}"] = assemble_symmetric(
            [totals.pop(f"scatter_{position}_{block}")
             for block in range(len(blocks))],
            blocks)
    return totals

  def _build_pass(self, layouts, with_squares, scatter_blocks, with_ncc,
                  group=1):
    """Return a function `(dataset, constants) -> totals` for one pass.

    With `group > 1` each dataset element contains `group` batches. Only
    the number of steps between float64 folds depends on it.

    Every replica takes its share of each dataset element.
    `strategy.experimental_distribute_dataset` is not used because in TF
    2.21 its rewrite serialises the pipeline's graph together with any
    in-memory image array the pipeline captures. That made one
    temporary copy of the whole split per pass (179 MiB for 60,000
    Fashion-MNIST images).
    """
    num_classes = self._num_classes
    num_replicas = self._strategy.num_replicas_in_sync
    probe_model = self._probe_model
    strategy = self._strategy
    host_scatter = self._host_scatter and any(scatter_blocks)
    scatter_positions = [position for position, blocks
                         in enumerate(scatter_blocks) if blocks]

    def step(images, labels, constants):
      outputs = probe_model(images, training=False)
      logits = outputs[-1]
      batch_size = tf.shape(labels)[0]
      in_range = tf.logical_and(labels >= 0, labels < num_classes)
      # Out-of-range labels are counted by neither one_hot nor the class sums;
      # the host compares `counts` with `num_seen` and raises.
      safe_labels = tf.where(in_range, labels, tf.zeros_like(labels))
      one_hot = tf.one_hot(labels, num_classes, dtype=tf.float64)
      totals = {
          "num_seen": tf.cast(batch_size, tf.float64),
          "counts": tf.reduce_sum(one_hot, axis=0),
      }
      if with_ncc:
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)

      for position in range(len(layouts)):
        feature = outputs[position]
        dtype = _compute_dtype(feature.dtype)
        dim = layouts[position].dim
        feature = tf.reshape(tf.cast(feature, dtype), [batch_size, dim])
        mask = tf.one_hot(labels, num_classes, dtype=dtype)
        shift = tf.cast(constants["shift"][position], dtype)
        shifted = feature - tf.gather(shift, safe_labels)
        totals[f"sums_{position}"] = tf.cast(
            tf.matmul(mask, shifted, transpose_a=True), tf.float64)

        if with_squares:
          # A matmul with a column of ones, because XLA on CPU summed rows
          # about twice as slowly with reduce_sum.
          squares = tf.matmul(tf.square(shifted), tf.ones([dim, 1], dtype))
          totals[f"squares_{position}"] = tf.linalg.matvec(
              one_hot, tf.cast(squares[:, 0], tf.float64), transpose_a=True)
        if scatter_blocks[position] and host_scatter:
          totals[f"features_{position}"] = shifted
        elif scatter_blocks[position]:
          # The scatter is symmetric, so only the blocks on and above the
          # diagonal are multiplied. They stay in the compute dtype until
          # `run_chunk` adds them to the float64 totals.
          for block, (start, stop) in enumerate(scatter_blocks[position]):
            totals[f"scatter_{position}_{block}"] = tf.matmul(
                shifted[:, start:stop], shifted[:, start:], transpose_a=True)
        right = constants["right"][position]
        if right is not None:
          reduced = tf.matmul(shifted, tf.cast(right, dtype))
          totals[f"right_{position}"] = tf.cast(
              tf.matmul(shifted, reduced, transpose_a=True), tf.float64)
        basis = constants["basis"][position]
        if basis is not None:
          projected = tf.matmul(shifted, tf.cast(basis, dtype))
          totals[f"projection_{position}"] = tf.cast(
              tf.matmul(projected, projected, transpose_a=True), tf.float64)

        if with_ncc:
          means = tf.cast(constants["ncc_means"][position], dtype)
          offsets = tf.cast(constants["ncc_offsets"][position], dtype)
          # Distances are `(C, batch)`: XLA on CPU computed this product
          # twice as fast as its `(batch, C)` transpose.
          products = (tf.matmul(means, shifted, transpose_b=True)
                      + tf.gather(offsets, safe_labels, axis=1))
          distances = (-2 * products
                       + tf.reduce_sum(tf.square(means), axis=1)[:, None])
          distances = tf.cast(distances, tf.float32) + constants[
              "ncc_penalty"][:, None]
          nearest = tf.argmin(distances, axis=0, output_type=tf.int32)
          totals[f"ncc_corrects_{position}"] = tf.reduce_sum(
              tf.cast(tf.equal(nearest, labels), tf.float64))
          totals[f"ncc_agreements_{position}"] = tf.reduce_sum(
              tf.cast(tf.equal(nearest, predicted), tf.float64))
      return totals

    compiled_step = step
    if self._jit_compile:
      compiled_step = tf.function(step, jit_compile=True)

    def replica_step(batch, constants):
      images, labels = _split_batch(batch)
      if num_replicas > 1:
        # Replica r takes rows [r * share, (r + 1) * share) of the batch, so
        # the last replicas get fewer rows, or none, when the batch is short.
        replica = tf.cast(
            tf.distribute.get_replica_context().replica_id_in_sync_group,
            tf.int32)
        size = tf.shape(labels)[0]
        share = (size + num_replicas - 1) // num_replicas
        start = tf.minimum(replica * share, size)
        stop = tf.minimum(start + share, size)
        images = images[start:stop]
        labels = labels[start:stop]
      return compiled_step(images, labels, constants)

    def reduced_step(batch, constants):
      per_replica = strategy.run(replica_step, args=(batch, constants))
      return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica,
                             axis=None)

    def zero_totals(constants):
      """Return float64 zeros with the keys and shapes that `step` returns."""
      shapes = {"num_seen": (), "counts": (num_classes,)}
      for position, layout in enumerate(layouts):
        shapes[f"sums_{position}"] = (num_classes, layout.dim)
        if with_squares:
          shapes[f"squares_{position}"] = (num_classes,)
        if constants["right"][position] is not None:
          shapes[f"right_{position}"] = tuple(
              constants["right"][position].shape)
        if constants["basis"][position] is not None:
          width = constants["basis"][position].shape[1]
          shapes[f"projection_{position}"] = (width, width)
        if with_ncc:
          shapes[f"ncc_corrects_{position}"] = ()
          shapes[f"ncc_agreements_{position}"] = ()
      return {key: tf.zeros(shape, tf.float64)
              for key, shape in shapes.items()}

    def zero_scatters(dtype_of):
      """Return zeros for every scatter block, in `dtype_of(layout)`."""
      zeros = {}
      if host_scatter:
        return zeros
      for position, layout in enumerate(layouts):
        for block, (start, stop) in enumerate(scatter_blocks[position] or []):
          zeros[f"scatter_{position}_{block}"] = tf.zeros(
              (stop - start, layout.dim - start), dtype_of(layout))
      return zeros

    # Scatter blocks are summed in the compute dtype over at most
    # FOLD_BATCHES batches, then added to the float64 totals: adding every
    # batch's p x p blocks in float64 took as long as their matmuls on a
    # 2-core CPU. Without scatters the whole pass is one chunk.
    chunk_steps = 2**31 - 1
    if any(scatter_blocks):
      chunk_steps = max(1, FOLD_BATCHES // group)

    @tf.function
    def run_chunk(iterator, totals, constants):
      """Add up to `chunk_steps` elements of `iterator` to `totals`.

      The loop draws batches through `get_next_as_optional` in a `while`
      loop: a `for` loop over the dataset carries its state through the
      dataset's reduce, which made large loop states several times slower
      (TF 2.21, CPU).
      """
      pending = zero_scatters(lambda layout: layout.compute_dtype)
      running = {key: value for key, value in totals.items()
                 if key not in pending}
      count = tf.constant(0, tf.int32)
      optional = iterator.get_next_as_optional()
      while optional.has_value():
        batch_totals = reduced_step(optional.get_value(), constants)
        pending = {key: value + batch_totals.pop(key)
                   for key, value in pending.items()}
        running = tf.nest.map_structure(tf.add, running, batch_totals)
        count += 1
        if count < chunk_steps:
          optional = iterator.get_next_as_optional()
        else:
          optional = tf.experimental.Optional.empty(optional.element_spec)
      for key, value in pending.items():
        running[key] = totals[key] + tf.cast(value, tf.float64)
      return running, count

    def run(dataset, constants):
      totals = zero_totals(constants)
      totals.update(zero_scatters(lambda layout: tf.float64))
      iterator = iter(dataset)
      while True:
        totals, count = run_chunk(iterator, totals, constants)
        if int(count) < chunk_steps:
          return totals

    if not host_scatter:
      return run

    @tf.function(reduce_retracing=True)
    def host_step(element, totals, constants):
      """Return `totals` plus one element's sums, and its features."""
      per_replica = strategy.run(replica_step, args=(element, constants))
      features = {
          position: strategy.experimental_local_results(
              per_replica.pop(f"features_{position}"))
          for position in scatter_positions}
      batch_totals = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica,
                                     axis=None)
      return tf.nest.map_structure(tf.add, totals, batch_totals), features

    def run_with_host_scatter(dataset, constants):
      """Run the pass step by step, with the scatters in host threads.

      The host threads multiply step k's features while the replicas run
      step k + 1. The loop waits for them before it hands over step k + 1.
      So at most one `add` per point runs at a time, and at most two steps
      of features are held.
      """
      totals = zero_totals(constants)
      scatter = _HostScatter(
          [layouts[position].dim for position in scatter_positions],
          [layouts[position].compute_dtype.as_numpy_dtype
           for position in scatter_positions],
          fold_steps=chunk_steps)
      with _HostPool(workers=_usable_cores(), idle=False) as pool, \
          threadpoolctl.threadpool_limits(limits=1):
        running = []
        for element in dataset:
          totals, features = host_step(element, totals, constants)
          for future in running:
            pool.result(future)
          # `np.asarray` shares the tensor's buffer, where `numpy()` copies.
          running = [
              pool.submit(scatter.add, slot,
                          [np.asarray(part) for part in features[position]])
              for slot, position in enumerate(scatter_positions)]
        for future in running:
          pool.result(future)
      totals = dict(totals)
      for slot, position in enumerate(scatter_positions):
        totals[f"scatter_{position}"] = scatter.result(slot)
      return totals

    return run_with_host_scatter


def batch_group(batch_rows, row_bytes):
  """Return how many batches of `batch_rows` rows one pass step takes.

  Args:
    batch_rows: Positive batch size.
    row_bytes: Bytes of the probe features of one sample, all points
      together.

  Returns:
    An int in `[1, MAX_GROUP]`: as many batches as fit in `GROUP_ROWS` rows
    and in `GROUP_FEATURE_BYTES` of probe features, at least one.
  """
  by_rows = GROUP_ROWS // batch_rows
  by_bytes = GROUP_FEATURE_BYTES // max(1, batch_rows * row_bytes)
  return max(1, min(MAX_GROUP, by_rows, by_bytes))


def triangle_blocks(dim, min_width=SCATTER_BLOCK_MIN_WIDTH,
                    max_blocks=SCATTER_MAX_BLOCKS):
  """Split `range(dim)` into row blocks for the upper-triangle scatter.

  Block `(start, stop)` is the product `D[:, start:stop]^T
  D[:, start:]`, so the blocks cover the diagonal and everything above it.
  With `b` blocks that is `(b + 1) / (2 b)` of the multiply-adds of the full
  `D^T D`: 0.56 for the 8 blocks of a 1024-wide point.

  Args:
    dim: Feature size `p`, at least 1.
    min_width: Narrowest block; a point narrower than two blocks has one.
    max_blocks: Largest number of blocks.

  Returns:
    A list of `(start, stop)` pairs that partition `[0, dim)` in order.
  """
  count = max(1, min(max_blocks, dim // min_width))
  width = -(-dim // count)
  return [(start, min(start + width, dim)) for start in range(0, dim, width)]


def assemble_symmetric(blocks, ranges):
  """Return the symmetric `p x p` matrix whose upper triangle `blocks` hold.

  Args:
    blocks: One `(stop - start, p - start)` array per `(start, stop)` of
      `ranges`: rows `start:stop`, columns `start:` of the matrix.
    ranges: The row ranges from `triangle_blocks(p)`.

  Returns:
    The float64 `(p, p)` matrix, with the lower triangle mirrored from the
    upper one.
  """
  dim = ranges[-1][1]
  matrix = np.empty((dim, dim))
  for block, (start, stop) in zip(blocks, ranges):
    # The transpose fills the columns below the block, then the block
    # overwrites the diagonal square they share, which the last step makes
    # symmetric from its upper triangle.
    matrix[start:, start:stop] = block.T
    matrix[start:stop, start:] = block
    square = matrix[start:stop, start:stop]
    square[...] = np.triu(square) + np.triu(square, 1).T
  return matrix


class _HostScatter:
  """Accumulator of `D^T D` of the features of several points, on the host.

  The products are computed with BLAS `syrk`, which multiplies only the
  upper triangle. Where an OpenBLAS is loaded, `syrk` is called directly
  through `ctypes` (`_blas_syrk`) and adds into the running sum.
  Otherwise `np.dot(D.T, D)` calls it, fills the lower triangle, and the
  product is added. For a `1000 x 1024` float32 step the direct call took
  0.6 to 0.75 of the time of `np.dot` (`bench/host_linalg.py`). Both
  release the GIL, and SciPy's `syrk` wrapper does not, so it is not used.
  Each point's products are summed in the features' dtype over at most
  `fold_steps` calls of `add`, then added to float64 totals, as the
  replicas' scatter blocks are.

  `add` may run in several threads at once for different points, never for
  the same point.

  Args:
    dims: Feature size `p` of each point.
    dtypes: NumPy dtype of each point's features, float32 or float64.
    fold_steps: Calls of `add` per point between float64 folds.
    direct_blas: Whether to call OpenBLAS `syrk` directly where it is
      found; False always takes the `np.dot` route.
  """

  def __init__(self, dims, dtypes, fold_steps, direct_blas=True):
    self._pending = [np.zeros((dim, dim), dtype)
                     for dim, dtype in zip(dims, dtypes)]
    self._totals = [np.zeros((dim, dim)) for dim in dims]
    self._steps = [0] * len(dims)
    self._fold_steps = fold_steps
    self._scratch = threading.local()
    self._syrk = [_blas_syrk(np.dtype(dtype)) if direct_blas else None
                  for dtype in dtypes]

  def add(self, slot, parts):
    """Add `D^T D` of each `(rows, p)` array in `parts` to point `slot`.

    Only the upper triangle of the running sum is read by `result`.
    """
    pending = self._pending[slot]
    syrk = self._syrk[slot]
    for part in parts:
      if not part.shape[0]:
        continue
      if syrk is not None:
        syrk(np.ascontiguousarray(part, pending.dtype), pending)
      else:
        product = self._scratch_like(pending)
        np.dot(part.T, part, out=product)
        pending += product
    self._steps[slot] += 1
    if self._steps[slot] >= self._fold_steps:
      self._fold(slot)

  def _scratch_like(self, matrix):
    """Return this thread's scratch array of the shape and dtype of `matrix`."""
    key = (matrix.shape, matrix.dtype)
    arrays = self._scratch.__dict__.setdefault("arrays", {})
    if key not in arrays:
      arrays[key] = np.empty_like(matrix)
    return arrays[key]

  def _fold(self, slot):
    self._totals[slot] += self._pending[slot]
    self._pending[slot].fill(0)
    self._steps[slot] = 0

  def result(self, slot):
    """Return the float64 sum of point `slot`, exactly symmetric."""
    self._fold(slot)
    upper = np.triu(self._totals[slot])
    return upper + np.triu(upper, 1).T


# Constants of the CBLAS interface (cblas.h).
_CBLAS_ROW_MAJOR = 101
_CBLAS_UPPER = 121
_CBLAS_TRANS = 112


@functools.cache
def _blas_syrk(dtype):
  """Return a direct OpenBLAS `syrk` for `dtype`, or None where none is found.

  The returned `syrk(part, total)` adds the upper triangle of
  `part^T part` to that of `total` in place, with `part` a C-contiguous
  `(rows, p)` array and `total` a C-contiguous `(p, p)` array, both of
  `dtype`. It calls `cblas_ssyrk` or `cblas_dsyrk` of an OpenBLAS that is
  loaded in the process (NumPy's wheels bundle one) through `ctypes`,
  which releases the GIL during the call.

  The symbol names and the integer width come from the library itself:
  NumPy's and SciPy's wheels prefix their symbols with `scipy_`, 64-bit
  integer builds add the suffix `64_`, and `openblas_get_config` reports
  `USE64BITINT`. The first call checks the function on a small product,
  and a function that disagrees with NumPy is not used.

  Args:
    dtype: `np.dtype` of the features, float32 or float64.
  """
  letter = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(dtype)
  if letter is None:
    return None
  scalar = ctypes.c_float if letter == "s" else ctypes.c_double
  for info in threadpoolctl.threadpool_info():
    if info.get("internal_api") != "openblas":
      continue
    try:
      library = ctypes.CDLL(info["filepath"])
    except OSError:
      continue
    for prefix, suffix in itertools.product(("scipy_", ""), ("64_", "")):
      function = getattr(library, f"{prefix}cblas_{letter}syrk{suffix}", None)
      get_config = getattr(library, f"{prefix}openblas_get_config{suffix}",
                           None)
      if function is None or get_config is None:
        continue
      get_config.restype = ctypes.c_char_p
      get_config.argtypes = []
      integer = (ctypes.c_int64 if b"USE64BITINT" in get_config()
                 else ctypes.c_int)
      function.restype = None
      function.argtypes = (
          [ctypes.c_int] * 3 + [integer] * 2
          + [scalar, ctypes.c_void_p, integer, scalar, ctypes.c_void_p,
             integer])
      syrk = functools.partial(_call_syrk, function)
      if _syrk_agrees_with_numpy(syrk, dtype):
        return syrk
  return None


def _call_syrk(function, part, total):
  """Add the upper triangle of `part^T part` to `total` with CBLAS `function`."""
  rows, dim = part.shape
  if (total.shape != (dim, dim) or part.dtype != total.dtype
      or not part.flags.c_contiguous or not total.flags.c_contiguous):
    raise ValueError(
        f"Invalid arrays for syrk: {part.shape} {part.dtype} and "
        f"{total.shape} {total.dtype}. Pass C-contiguous arrays of one "
        f"dtype with shapes (rows, p) and (p, p).")
  function(_CBLAS_ROW_MAJOR, _CBLAS_UPPER, _CBLAS_TRANS, dim, rows, 1.0,
           part.ctypes.data, dim, 1.0, total.ctypes.data, dim)


def _syrk_agrees_with_numpy(syrk, dtype):
  """Return whether `syrk` computes a small `D^T D` as NumPy does."""
  part = np.arange(15, dtype=dtype).reshape(5, 3) / 7
  total = np.ones((3, 3), dtype)
  syrk(part, total)
  expected = np.triu(part.T @ part + 1)
  return bool(np.allclose(np.triu(total), expected, rtol=1e-5)
              and np.all(total[np.tril_indices(3, -1)] == 1))


def runs_on_accelerators(strategy):
  """Return whether the replicas of `strategy` run on GPUs or TPUs."""
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:
    # The default strategy lists no devices, and its ops run on a visible GPU.
    return bool(tf.config.list_logical_devices("GPU")
                or tf.config.list_logical_devices("TPU"))
  return all("GPU" in device.upper() or "TPU" in device.upper()
             for device in devices)


def _host_executor(accelerated):
  """Return the `_HostPool` that runs the host-side metric computations.

  The kernel spectra are submitted before the passes and the training
  metrics before the test pass, so that they run while the replicas work.
  SciPy's LAPACK calls release the GIL.

  Args:
    accelerated: Whether the replicas run on GPUs or TPUs. Then one thread
      at normal priority is enough. On CPU replicas the host work competes
      with the passes for the cores, so it runs at idle priority, one
      thread per core.
  """
  # NOTE: the threaded path is tested on CPU replicas only; its gain on GPU
  # replicas is expected, not measured.
  if accelerated:
    return _HostPool(workers=1, idle=False)
  return _HostPool(workers=_usable_cores(), idle=True)


class _HostPool:
  """Thread pool for the host work of one measurement.

  With `idle=True` each thread sets the Linux policy `SCHED_IDLE`, so it
  runs only on cycles that the pass threads leave idle (between steps,
  between passes, and after the last one), and OpenBLAS is held to one
  thread, the caller's, while the pool is open: its own worker threads
  would run at normal priority and spin while they wait. TensorFlow's CPU
  kernels do not use OpenBLAS. Where `SCHED_IDLE` is missing (other
  systems) the threads keep the normal priority.

  An idle thread gets almost no CPU while another process keeps every core
  busy, so `result` does not wait for a task that no thread has started,
  or for one whose thread is starved: it runs the task in the calling
  thread instead.

  Args:
    workers: Number of threads.
    idle: Whether the threads run at idle priority.
  """

  def __init__(self, workers, idle):
    self._workers = workers
    self._idle = idle
    self._limits = None
    self._pool = None
    self._calls = {}

  def __enter__(self):
    initializer = None
    if self._idle:
      self._limits = threadpoolctl.threadpool_limits(limits=1)
      initializer = _lower_thread_priority
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=self._workers, thread_name_prefix="inc_tf_host",
        initializer=initializer)
    return self

  def __exit__(self, *exc_info):
    # Results are read through `result` before the pool closes, so what is
    # still queued is not needed, and a thread still running computes a
    # copy. Waiting for it could take long while it is starved.
    self._pool.shutdown(wait=False, cancel_futures=True)
    if self._limits is not None:
      self._limits.restore_original_limits()
    return False

  def submit(self, function, *args, **kwargs):
    """Start `function(*args, **kwargs)` in the pool and return its future.

    Read the result with `result` before the pool closes: closing cancels
    what has not started.
    """
    runner = {}
    future = self._pool.submit(_run_recording_thread, runner, function,
                               args, kwargs)
    self._calls[future] = (runner, function, args, kwargs)
    return future

  def result(self, future):
    """Return the result of a future from `submit`, or raise its error.

    A second call for the same future raises KeyError.

    A task that no thread has started runs here. With idle threads, a
    running task also runs here when its thread got less than a quarter of
    a core over `STARVED_CHECK_SECONDS`, and the pool's copy is ignored.
    """
    # The entry is dropped here, because its arguments can be large, such as
    # a step's features.
    runner, function, args, kwargs = self._calls.pop(future)
    if future.cancel():
      return function(*args, **kwargs)

    while True:
      before = _thread_cpu_seconds(runner.get("thread"))
      try:
        return future.result(timeout=STARVED_CHECK_SECONDS)
      except concurrent.futures.TimeoutError:
        after = _thread_cpu_seconds(runner.get("thread"))
        if (self._idle and before is not None and after is not None
            and after - before < STARVED_CHECK_SECONDS / 4):
          logging.info("A host metric thread is starved by other processes, "
                       "so %s runs in the calling thread.",
                       getattr(function, "__name__", function))
          return function(*args, **kwargs)


def _run_recording_thread(runner, function, args, kwargs):
  """Call `function(*args, **kwargs)` after storing this thread's id in `runner`."""
  runner["thread"] = threading.get_ident()
  return function(*args, **kwargs)


def _thread_cpu_seconds(thread_id):
  """Return the CPU seconds of a live thread, or None where unknown."""
  if thread_id is None or not hasattr(time, "pthread_getcpuclockid"):
    return None
  try:
    return time.clock_gettime(time.pthread_getcpuclockid(thread_id))
  except (OSError, OverflowError):
    return None


def _lower_thread_priority():
  """Move the calling thread to `SCHED_IDLE` where Linux allows it."""
  if not hasattr(os, "SCHED_IDLE"):
    return
  try:
    # On Linux, pid 0 names the calling thread, not the whole process.
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
  except OSError as error:
    logging.debug("Host metric threads keep their priority: %s", error)


def _usable_cores():
  """Return the number of CPU cores this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return os.cpu_count() or 1


def _as_tensor(array):
  """Return `array` as a float64 constant, or None; steps cast it as needed."""
  if array is None:
    return None
  return tf.constant(array, tf.float64)


def _round_to_float32(array):
  """Return `array` rounded to float32 values, as float64.

  Shifts are subtracted on the device in float32 and added back on the host,
  so both sides must use the same rounded value.
  """
  return array.astype(np.float32).astype(np.float64)


def _corrected_product(raw, sums, counts, right):
  """Return `S Q` from `sum d d^T Q` of shifted features.

  With per-class sums `r_c` of the shifted features, the centred scatter is
  `S = sum d d^T - sum_c r_c r_c^T / n_c`.
  """
  present = counts > 0
  residual = sums[present]
  return raw - residual.T @ ((residual @ right) / counts[present][:, None])


def _corrected_gram(raw, sums, counts, basis):
  """Return `U^T S U` from `(D U)^T (D U)` of shifted features."""
  present = counts > 0
  projected = sums[present] @ basis
  return raw - projected.T @ (projected / counts[present][:, None])


def _centred_stats(totals, position, layout, means, counts):
  """Build `ClassStats` of one point from a centred or shifted pass."""
  present = counts > 0
  sums = totals[f"sums_{position}"]
  within_ss = totals[f"squares_{position}"].copy()
  within_ss[present] -= np.sum(sums[present]**2, axis=1) / counts[present]
  within_ss = np.maximum(within_ss, 0.0)
  stats = metrics.ClassStats(
      counts=counts.astype(np.int64), means=means, within_ss=within_ss,
      feature_shape=layout.feature_shape)
  if f"scatter_{position}" in totals:
    residual = sums[present]
    stats.scatter = totals[f"scatter_{position}"] - residual.T @ (
        residual / counts[present][:, None])
  if f"ncc_corrects_{position}" in totals:
    stats.ncc_corrects = int(round(totals[f"ncc_corrects_{position}"]))
    stats.ncc_agreements = int(round(totals[f"ncc_agreements_{position}"]))
  return stats


# Measurements that `measure` reuses: `(options, StreamingMeasurement)` for
# each live model. The keys are weak and a StreamingMeasurement does not
# refer to its model, so an entry goes when its model is deleted.
_REUSED_MEASUREMENTS = weakref.WeakKeyDictionary()


def measure(model, train_dataset, test_dataset=None, num_classes=None,
            strategy=None, max_covariance_dim=metrics.DEFAULT_MAX_COVARIANCE_DIM,
            lambda_max_passes=0, probe=None, jit_compile="auto",
            host_scatter="auto"):
  """Measure the collapse metrics of every probe point of a classifier.

  Example:

  >>> results = measure(model, train_batches, test_batches)
  >>> [point["within_fraction"] for point in results["train"]]

  Args:
    model: Keras functional classifier whose output is the logits; run in
      inference mode (BatchNorm uses its moving statistics).
    train_dataset: `tf.data.Dataset` of `(images, labels)` batches, integer
      labels `(batch,)` or `(batch, 1)`.
    test_dataset: Same for the test split. Defaults to None.
    num_classes: Number of classes. Defaults to None: the output width.
    strategy: `tf.distribute.Strategy`. Defaults to None: the current one.
    max_covariance_dim: See `StreamingMeasurement`. Defaults to 4096.
    lambda_max_passes: See `StreamingMeasurement`. Defaults to 0.
    probe: `(probe_model, points)` from `inc_tf.probe.build_probe`, to reuse.
      Defaults to None.
    jit_compile: See `StreamingMeasurement`. Defaults to "auto".
    host_scatter: See `StreamingMeasurement`. Defaults to "auto".

  Returns:
    `{"train": [...], "test": [...]}`, see `StreamingMeasurement.measure`.

  Calls for the same model object with the same other arguments reuse one
  `StreamingMeasurement`, so a series of checkpoints loaded into one model
  traces the passes once; every call reads the current weights. Only the
  latest arguments are kept per model, and nothing is kept once the model
  is deleted.
  """
  _check_model(model)
  # The variables are part of the options because `layer.enable_lora` and
  # `model.quantize` add or replace variables that traced passes would miss.
  options = (num_classes, strategy or tf.distribute.get_strategy(),
             max_covariance_dim, lambda_max_passes, probe, jit_compile,
             host_scatter, *model.weights)
  reused = _REUSED_MEASUREMENTS.get(model)
  if reused is not None and _same_options(reused[0], options):
    streaming = reused[1]
  else:
    streaming = StreamingMeasurement(
        model, num_classes=num_classes, strategy=options[1],
        max_covariance_dim=max_covariance_dim,
        lambda_max_passes=lambda_max_passes, probe=probe,
        jit_compile=jit_compile, host_scatter=host_scatter)
    _REUSED_MEASUREMENTS[model] = (options, streaming)
  return streaming.measure(train_dataset, test_dataset)


def _same_options(cached, options):
  """Return whether two `measure` option tuples build the same measurement.

  The strategy, the probe and the model's variables must be the same
  objects. Numbers and strings must be equal and of the same type, so that
  `True` and `1` differ.
  """
  return len(cached) == len(options) and all(
      old is new or (isinstance(old, (bool, int, float, str, np.integer))
                     and type(old) is type(new) and old == new)
      for old, new in zip(cached, options))


def _is_int(value):
  """Return whether `value` is an integer and not a bool."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
