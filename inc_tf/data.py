"""Datasets by name, balanced subsets, normalisation, padding and tf.data input.

`load_dataset` returns a `Splits` of normalised float32 NHWC images and int32
labels. `TrainPipeline` and `train_batches` shuffle the training split with a
permutation that depends only on `(seed, epoch)`, so a resumed run gets the
same batches in the same order. `eval_batches` keeps the order of the arrays.
"""

import dataclasses
import math
import os

from absl import logging
import numpy as np
import tensorflow as tf

from inc_tf import readers

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
  """How to find and read one dataset.

  Attributes:
    file_format: "idx", "cifar10" or "svhn", which selects the reader.
    file_names: the files that `data_dir` must contain. An IDX file may also
      carry a ".gz" suffix.
    tfds_name: the tensorflow-datasets name of the same data.
    num_classes: number of classes, with labels 0..num_classes - 1.
    download_hint: the address to download `file_names` from, shown in
      error messages.
  """
  file_format: str
  file_names: tuple
  tfds_name: str
  num_classes: int
  download_hint: str


# The download addresses are those that tensorflow-datasets 4.9.10 and
# Keras 3.15 fetch from.
_DATASETS = {
    "mnist": _DatasetSpec(
        "idx", _IDX_FILES, "mnist", 10,
        "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": _DatasetSpec(
        "idx", _IDX_FILES, "fashion_mnist", 10,
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"),
    "cifar10": _DatasetSpec(
        "cifar10",
        readers.CIFAR10_TRAIN_FILES + (readers.CIFAR10_TEST_FILE,),
        "cifar10", 10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract "
        "it and pass its cifar-10-batches-py folder)"),
    "svhn": _DatasetSpec(
        "svhn", (readers.SVHN_TRAIN_FILE, readers.SVHN_TEST_FILE),
        "svhn_cropped", 10, "http://ufldl.stanford.edu/housenumbers/"),
}

DATASET_NAMES = tuple(_DATASETS)

# Folders searched, in order, when `load_dataset` gets no `data_dir`, before
# tensorflow-datasets. The Debian package dataset-fashion-mnist installs the
# IDX files at this path. Tests replace this mapping to control the search.
DEFAULT_DATA_DIRS = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}

# A pixel whose training-set std is below this value (in [0, 1] pixel units) is
# constant in practice, such as the MNIST border, and is divided by 1 instead.
STD_FLOOR = 1e-8

# Images are normalised this many at a time, which bounds each float64
# temporary to 25 MB for 32 x 32 x 3 images.
_CHUNK_SIZE = 1024

# Batch pipelines gather this many batches at once and keep this many ready.
GATHER_PARALLEL_CALLS = 2
GATHER_PREFETCH_BATCHES = 2


@dataclasses.dataclass
class Splits:
  """A dataset's training and test splits, normalised and ready for a model.

  Attributes:
    x_train: float32 `(N_train, H, W, C)` images, normalised with `mean` and
      `std`, then zero-padded if `load_dataset` got `pad_to`.
    y_train: int32 `(N_train,)` class ids in 0..num_classes - 1.
    x_test: float32 `(N_test, H, W, C)`, normalised with the training
      statistics.
    y_test: int32 `(N_test,)` class ids.
    num_classes: number of classes.
    name: the dataset name passed to `load_dataset`, such as "mnist".
    source: where the data came from, such as "IDX files in /data/mnist" or
      "tensorflow-datasets 'mnist'".
    mean: float64 `(H, W, C)` pixel-wise mean of the training images used,
      after subsetting, in [0, 1] pixel units, with the shape before padding.
    std: float64 `(H, W, C)` pixel-wise standard deviation that was divided by,
      in the same units and shape, with pixels below `STD_FLOOR` set to 1.
  """
  x_train: np.ndarray = dataclasses.field(repr=False)
  y_train: np.ndarray = dataclasses.field(repr=False)
  x_test: np.ndarray = dataclasses.field(repr=False)
  y_test: np.ndarray = dataclasses.field(repr=False)
  num_classes: int
  name: str
  source: str
  mean: np.ndarray = dataclasses.field(repr=False)
  std: np.ndarray = dataclasses.field(repr=False)

  @property
  def image_shape(self):
    """`(H, W, C)` of the images in `x_train` and `x_test`, after padding."""
    return tuple(self.x_train.shape[1:])


def load_dataset(name, data_dir=None, examples_per_class=None, seed=0,
                 pad_to=None):
  """Load a dataset by name, subset and normalise it, and pad its images.

  The data is looked for in this order:

  1. `data_dir`, if given. It must contain the standard files itself; missing
     files raise an error and no other source is tried.
  2. The folders in `DEFAULT_DATA_DIRS[name]` that contain every file.
  3. tensorflow-datasets, which reads its own cache and downloads when online.

  Images are scaled to [0, 1], then each pixel and channel is normalised with
  the mean and std of the training images used (after subsetting), computed in
  float64. Test images use the training statistics. Padding comes after
  normalisation, so padded pixels are 0 in normalised units, the value of an
  average pixel.

  Args:
    name: one of `DATASET_NAMES`: "mnist", "fashion_mnist", "cifar10", "svhn".
    data_dir: str or None, the folder that contains the dataset files
      themselves. For MNIST and Fashion-MNIST: `train-images-idx3-ubyte`,
      `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
      `t10k-labels-idx1-ubyte`, each optionally ending in ".gz". For CIFAR-10:
      `data_batch_1` to `data_batch_5` and `test_batch`. For SVHN:
      `train_32x32.mat` and `test_32x32.mat`. Defaults to None.
    examples_per_class: int or None, the number of training examples kept per
      class, drawn without replacement with `seed`. None keeps all. The test
      split always stays whole. Defaults to None.
    seed: non-negative int, the seed of the subset. Defaults to 0.
    pad_to: int or None, the side length in pixels that images are zero-padded
      to, split evenly between the sides (28 -> 32 adds 2 pixels on each
      side). With an odd difference, the bottom and right get the extra pixel.
      Defaults to None, which leaves images unpadded.

  Returns:
    A `Splits`. 28 x 28 grayscale images have shape `(28, 28, 1)`.

  Raises:
    ValueError: `name` is unknown, an argument is out of range, a class has
      fewer than `examples_per_class` training examples, or a file is
      malformed.
    FileNotFoundError: `data_dir` lacks files, or no source had the dataset.
  """
  spec = _dataset_spec(name)
  _check_arguments(examples_per_class, seed, pad_to)

  x_train, y_train, x_test, y_test, source = _load_raw(name, spec, data_dir)
  x_train, y_train, x_test, y_test = _check_raw_arrays(
      x_train, y_train, x_test, y_test, spec.num_classes, source)

  if examples_per_class is not None:
    keep = balanced_subset(y_train, spec.num_classes, examples_per_class, seed)
    x_train, y_train = x_train[keep], y_train[keep]

  mean, std = pixel_statistics(x_train)
  x_train = normalise(x_train, mean, std)
  x_test = normalise(x_test, mean, std)

  if pad_to is not None:
    x_train = pad_images(x_train, pad_to)
    x_test = pad_images(x_test, pad_to)

  logging.info(
      "Loaded %s from %s: %d training and %d test images of shape %s, "
      "%d classes.", name, source, len(x_train), len(x_test),
      x_train.shape[1:], spec.num_classes)
  return Splits(
      x_train=x_train, y_train=y_train.astype(np.int32),
      x_test=x_test, y_test=y_test.astype(np.int32),
      num_classes=spec.num_classes, name=name, source=source,
      mean=mean, std=std)


def _dataset_spec(name):
  """Return the `_DatasetSpec` of `name`, or raise ValueError."""
  if name not in _DATASETS:
    raise ValueError(
        f"Unknown dataset {name!r}. Expected one of {list(DATASET_NAMES)}.")
  return _DATASETS[name]


def _check_arguments(examples_per_class, seed, pad_to):
  """Raise ValueError for out-of-range `load_dataset` arguments."""
  if examples_per_class is not None and (
      not _is_int(examples_per_class) or examples_per_class < 1):
    raise ValueError(
        f"examples_per_class must be a positive int or None, got "
        f"{examples_per_class!r}.")
  if not _is_int(seed) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  if pad_to is not None and (not _is_int(pad_to) or pad_to < 1):
    raise ValueError(f"pad_to must be a positive int or None, got {pad_to!r}.")


def _is_int(value):
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# Finding and reading the files.


def _find_files(spec, folder):
  """Find the dataset files in `folder`.

  Returns:
    `(paths, missing)`: a dict from each file name in `spec.file_names` to the
    path found, and the list of file names that were not found (without the
    ".gz" that an IDX file may carry).
  """
  paths, missing = {}, []
  for file_name in spec.file_names:
    candidates = [file_name]
    if spec.file_format == "idx":
      candidates = [file_name, file_name + ".gz"]
    found = [os.path.join(folder, c) for c in candidates
             if os.path.isfile(os.path.join(folder, c))]
    if found:
      paths[file_name] = found[0]
    else:
      missing.append(file_name)
  return paths, missing


def _expected_files(spec):
  """Return the file names of `spec` as comma-separated text for messages."""
  text = ", ".join(spec.file_names)
  if spec.file_format == "idx":
    text += " (each may also end in .gz)"
  return text


def _missing_data_dir_message(name, spec, data_dir, missing):
  """Return the error message for a `data_dir` without the files of `name`.

  Args:
    name: the dataset name.
    spec: its `_DatasetSpec`.
    data_dir: the folder given.
    missing: the file names not found there, or None when `data_dir` is not
      a folder.
  """
  folder = os.fspath(data_dir)
  if missing is None:
    problem = f"--data_dir {folder} does not exist or is not a folder."
  elif len(missing) == len(spec.file_names):
    problem = f"--data_dir {folder} contains none of the {name} files."
  else:
    noun = "file" if len(missing) == 1 else "files"
    problem = (f"--data_dir {folder} is missing the {name} {noun} "
               f"{', '.join(missing)}.")
  if DEFAULT_DATA_DIRS.get(name):
    fallback = (f"to search {', '.join(map(str, DEFAULT_DATA_DIRS[name]))} "
                "and then tensorflow-datasets")
  else:
    fallback = "to load it with tensorflow-datasets"
  return (f"{problem} Pass the folder that directly contains "
          f"{_expected_files(spec)}, downloaded from {spec.download_hint}, "
          f"or drop --data_dir {fallback}.")


def _read_files(spec, folder, paths):
  """Read the files found by `_find_files` into `(x_train, y_train, ...)`."""
  if spec.file_format == "idx":
    return tuple(readers.read_idx(paths[f]) for f in _IDX_FILES)
  if spec.file_format == "cifar10":
    return readers.read_cifar10(folder)
  return readers.read_svhn(folder)


def _load_raw(name, spec, data_dir):
  """Load the raw uint8 arrays of `name` from the first source that has them.

  Returns:
    `(x_train, y_train, x_test, y_test, source)`, where `source` describes the
    files or the tensorflow-datasets name.
  """
  file_kind = {"idx": "IDX files", "cifar10": "CIFAR-10 pickles",
               "svhn": "SVHN .mat files"}[spec.file_format]

  if data_dir is not None:
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(
          _missing_data_dir_message(name, spec, data_dir, None))
    paths, missing = _find_files(spec, data_dir)
    if missing:
      raise FileNotFoundError(
          _missing_data_dir_message(name, spec, data_dir, missing))
    return _read_files(spec, data_dir, paths) + (f"{file_kind} in {data_dir}",)

  searched = list(DEFAULT_DATA_DIRS.get(name, ()))
  for folder in searched:
    if not os.path.isdir(folder):
      continue
    paths, missing = _find_files(spec, folder)
    if missing:
      logging.warning("Skipping %s for %s: it lacks %s.", folder, name,
                      ", ".join(missing))
      continue
    return _read_files(spec, folder, paths) + (f"{file_kind} in {folder}",)

  return _load_from_tfds(name, spec, searched)


def _load_from_tfds(name, spec, searched):
  """Load `name` with tensorflow-datasets, or raise FileNotFoundError."""
  # NOTE: offline, tfds retries each download for about 3.5 minutes
  # (tensorflow-datasets 4.9.10) before it raises.
  logging.info(
      "No local %s files found in %s; trying tensorflow-datasets %r, which "
      "downloads when the data is not in its cache.", name,
      ", ".join(map(str, searched)) or "no default folder", spec.tfds_name)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    train, test = tfds.load(
        spec.tfds_name, split=["train", "test"], batch_size=-1,
        as_supervised=True)
    x_train, y_train = tfds.as_numpy(train)
    x_test, y_test = tfds.as_numpy(test)
  # tfds fails offline with errors from requests, TensorFlow or its own
  # package, so any failure here ends the search with the same advice.
  except Exception as e:  # pylint: disable=broad-except
    if searched:
      folders = (f"the default folders {', '.join(map(str, searched))} do "
                 "not contain its files, and ")
    else:
      folders = ""
    raise FileNotFoundError(
        f"Could not load dataset {name}: no --data_dir was given, {folders}"
        f"tensorflow-datasets {spec.tfds_name!r} failed with {e!r}. Download "
        f"{_expected_files(spec)} from {spec.download_hint} and pass their "
        "folder with --data_dir.") from e
  source = f"tensorflow-datasets {spec.tfds_name!r}"
  return x_train, y_train, x_test, y_test, source


def _check_raw_arrays(x_train, y_train, x_test, y_test, num_classes, source):
  """Check shapes, dtypes and labels, and add a channel axis to grayscale.

  Returns:
    `(x_train, y_train, x_test, y_test)` with uint8 `(N, H, W, C)` images and
    int64 `(N,)` labels.
  """
  checked = []
  for split, images, labels in (("training", x_train, y_train),
                                ("test", x_test, y_test)):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:
      images = images[..., np.newaxis]
    if images.ndim != 4:
      raise ValueError(
          f"The {split} images from {source} have shape {images.shape}, "
          "expected (N, H, W) or (N, H, W, C).")
    if images.dtype != np.uint8:
      raise ValueError(
          f"The {split} images from {source} have dtype {images.dtype}, "
          "expected uint8.")
    if labels.shape != (images.shape[0],):
      raise ValueError(
          f"The {split} labels from {source} have shape {labels.shape}, "
          f"expected ({images.shape[0]},) to match the images.")
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(
          f"The {split} labels from {source} have dtype {labels.dtype}, "
          "expected integers.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(
          f"The {split} labels from {source} range over {labels.min()}.."
          f"{labels.max()}, expected 0..{num_classes - 1}.")
    if images.shape[0] == 0:
      raise ValueError(f"The {split} split from {source} has no images.")
    checked += [images, labels.astype(np.int64)]

  if checked[0].shape[1:] != checked[2].shape[1:]:
    raise ValueError(
        f"The training images from {source} have shape "
        f"{checked[0].shape[1:]} but the test images {checked[2].shape[1:]}.")
  return tuple(checked)


# Subsetting, normalisation and padding.


def balanced_subset(labels, num_classes, examples_per_class, seed,
                    split="training", option="examples_per_class"):
  """Draw the same number of examples from every class.

  Args:
    labels: int `(N,)` class ids in 0..num_classes - 1.
    num_classes: number of classes.
    examples_per_class: positive int, the examples drawn per class.
    seed: non-negative int. The same seed and labels give the same subset.
    split: name of the split, for the error message.
    option: name of the setting that asked for the subset, for the error
      message.

  Returns:
    int64 `(num_classes * examples_per_class,)` indices into `labels`, sorted
    ascending so the subset keeps the original order.

  Raises:
    ValueError: a class has fewer than `examples_per_class` examples.
  """
  rng = np.random.default_rng(seed)
  chosen = []
  for label in range(num_classes):
    indices = np.flatnonzero(labels == label)
    if len(indices) < examples_per_class:
      raise ValueError(
          f"Class {label} has {len(indices)} {split} examples, fewer than "
          f"{option}={examples_per_class}. Lower {option}.")
    chosen.append(rng.choice(indices, size=examples_per_class, replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def pixel_statistics(images):
  """Compute the pixel-wise mean and standard deviation of uint8 images.

  Both are computed in float64 with two passes over chunks, so no float64 copy
  of the whole array is made.

  Args:
    images: uint8 `(N, H, W, C)`.

  Returns:
    `(mean, std)`, float64 `(H, W, C)` in [0, 1] pixel units (values / 255).
    `std` is the population std, with entries below `STD_FLOOR` set to 1 so
    that constant pixels normalise to `x - mean` instead of inf or NaN.

  NOTE: a pixel that is nonzero in only a few training images, such as a
  Fashion-MNIST corner, has a small std above the floor. Its normalised values
  can then be large: `load_dataset("fashion_mnist")` gives a maximum absolute
  value of 185 on the training split and 284 on the test split.
  """
  num_images = images.shape[0]
  total = np.zeros(images.shape[1:], np.float64)
  for start in range(0, num_images, _CHUNK_SIZE):
    total += images[start:start + _CHUNK_SIZE].sum(axis=0, dtype=np.float64)
  mean = total / num_images

  squares = np.zeros(images.shape[1:], np.float64)
  for start in range(0, num_images, _CHUNK_SIZE):
    deviation = images[start:start + _CHUNK_SIZE].astype(np.float64) - mean
    squares += np.einsum("n...,n...->...", deviation, deviation)
  std = np.sqrt(squares / num_images)

  mean, std = mean / 255.0, std / 255.0
  std[std < STD_FLOOR] = 1.0
  return mean, std


def normalise(images, mean, std):
  """Scale uint8 images to [0, 1] and normalise them pixel-wise.

  Args:
    images: uint8 `(N, H, W, C)`.
    mean: float64 `(H, W, C)` in [0, 1] pixel units.
    std: float64 `(H, W, C)`, positive, in the same units.

  Returns:
    float32 `(N, H, W, C)`, `(images / 255 - mean) / std` computed in float64.
  """
  output = np.empty(images.shape, np.float32)
  for start in range(0, images.shape[0], _CHUNK_SIZE):
    chunk = images[start:start + _CHUNK_SIZE].astype(np.float64) / 255.0
    output[start:start + _CHUNK_SIZE] = (chunk - mean) / std
  return output


def pad_images(images, size):
  """Zero-pad `(N, H, W, C)` images to `(N, size, size, C)`.

  The padding is split evenly between opposite sides, and with an odd
  difference the bottom and right get the extra pixel.

  Raises:
    ValueError: `size` is smaller than the image height or width.
  """
  height, width = images.shape[1:3]
  if size < height or size < width:
    raise ValueError(
        f"pad_to={size} is smaller than the {height} x {width} images. "
        f"Use pad_to >= {max(height, width)} or None.")
  top, left = (size - height) // 2, (size - width) // 2
  padding = ((0, 0), (top, size - height - top), (left, size - width - left),
             (0, 0))
  return np.pad(images, padding)


# tf.data pipelines.


def _check_pipeline_arguments(x, y, batch_size):
  """Raise ValueError for mismatched arrays or a non-positive batch size."""
  if not _is_int(batch_size) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
  if x.shape[0] != y.shape[0]:
    raise ValueError(
        f"x has {x.shape[0]} examples but y has {y.shape[0]}. Pass arrays of "
        "the same length.")
  if x.shape[0] == 0:
    raise ValueError("x and y are empty. Pass at least one example.")


def _to_host_tensors(x, y):
  """Convert `x` to float32 and `y` to int32 tensors in host memory."""
  # tf.data runs on the CPU, so the arrays stay in host memory even when a GPU
  # is visible.
  with tf.device("/CPU:0"):
    return (tf.convert_to_tensor(x, tf.float32),
            tf.convert_to_tensor(y, tf.int32))


def _gather_batches(indices, x, y, batch_size):
  """Batch an index dataset and gather the examples of each batch."""
  def gather(batch_indices):
    return tf.gather(x, batch_indices), tf.gather(y, batch_indices)

  dataset = indices.batch(batch_size).map(
      gather, num_parallel_calls=GATHER_PARALLEL_CALLS, deterministic=True)
  options = tf.data.Options()
  # The pipeline reads no files, so a distributed input shards by batch.
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  # In TF 2.21 the default graph rewrites serialise the pipeline together
  # with the captured image tensor. That makes a temporary copy of the whole
  # split each time an iterator is created, and this pipeline gains nothing
  # from them.
  options.experimental_optimization.apply_default_optimizations = False
  # Fixed sizes instead of autotuning, because a gather from memory needs no
  # tuning. With autotuning on (TF 2.21, 2 CPU cores), inference and the
  # collapse measurement took 5 to 7% more CPU time, and deleting an
  # iterator sometimes blocked for 2 s.
  options.autotune.enabled = False
  return dataset.with_options(options).prefetch(GATHER_PREFETCH_BATCHES)


class TrainPipeline:
  """Shuffled training batches whose order is a function of `(seed, epoch)`.

  The constructor copies `x` and `y` into host tensors once. Each `epoch(e)`
  then builds a dataset that gathers batches from those tensors by index, so no
  epoch copies the images.

  Example:

  ```python
  pipeline = TrainPipeline(splits.x_train, splits.y_train, 128, seed=0)
  for epoch in range(start_epoch, num_epochs):
    for images, labels in pipeline.epoch(epoch):
      ...
  ```

  Attributes:
    num_examples: number of training examples N.
    batch_size: global batch size B.
    seed: non-negative int, the shuffling seed.
    steps_per_epoch: ceil(N / B), counting the last partial batch.
  """

  def __init__(self, x, y, batch_size, seed):
    """Store the data as tensors.

    Args:
      x: float `(N, H, W, C)` images, NumPy array or tensor.
      y: int `(N,)` class ids.
      batch_size: positive int, the global batch size.
      seed: non-negative int.

    Raises:
      ValueError: the arrays do not match, are empty, or an int is out of
        range.
    """
    _check_pipeline_arguments(x, y, batch_size)
    if not _is_int(seed) or seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    self.num_examples = int(x.shape[0])
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.steps_per_epoch = math.ceil(self.num_examples / self.batch_size)
    self._x, self._y = _to_host_tensors(x, y)

  def permutation(self, epoch):
    """Return the int64 `(N,)` order of the examples in `epoch`."""
    if not _is_int(epoch) or epoch < 0:
      raise ValueError(f"epoch must be a non-negative int, got {epoch!r}.")
    rng = np.random.default_rng([self.seed, int(epoch)])
    return rng.permutation(self.num_examples).astype(np.int64)

  def epoch(self, epoch):
    """Build the dataset of one epoch.

    Args:
      epoch: non-negative int. The same seed and epoch give the same order.

    Returns:
      A `tf.data.Dataset` of `(images, labels)`: float32 `(B, H, W, C)` and
      int32 `(B,)`, with every example once and a smaller last batch when B
      does not divide N.
    """
    indices = tf.data.Dataset.from_tensor_slices(self.permutation(epoch))
    return _gather_batches(indices, self._x, self._y, self.batch_size)


def train_batches(x, y, batch_size, seed, epoch):
  """Build the shuffled training batches of one epoch.

  This copies `x` into a tensor on every call, so a training loop should build
  a `TrainPipeline` once and call its `epoch` method instead.

  Args:
    x: float `(N, H, W, C)` images.
    y: int `(N,)` class ids.
    batch_size: positive int, the global batch size.
    seed: non-negative int.
    epoch: non-negative int. The order is a function of `(seed, epoch)` only.

  Returns:
    A `tf.data.Dataset` of float32 `(B, H, W, C)` images and int32 `(B,)`
    labels; the last batch is smaller when B does not divide N.
  """
  return TrainPipeline(x, y, batch_size, seed).epoch(epoch)


def eval_batches(x, y, batch_size):
  """Build batches of `x` and `y` in their order, for evaluation.

  Args:
    x: float `(N, H, W, C)` images, NumPy array or tensor. A float32 tensor in
      host memory is used without a copy.
    y: int `(N,)` class ids.
    batch_size: positive int.

  Returns:
    A `tf.data.Dataset` of float32 `(B, H, W, C)` images and int32 `(B,)`
    labels; the last batch is smaller when B does not divide N.
  """
  _check_pipeline_arguments(x, y, batch_size)
  x_tensor, y_tensor = _to_host_tensors(x, y)
  indices = tf.data.Dataset.range(int(x.shape[0]))
  return _gather_batches(indices, x_tensor, y_tensor, batch_size)
