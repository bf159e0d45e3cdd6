"""Readers for the image-classification file formats that `inc_tf.data` loads.

- IDX (MNIST, Fashion-MNIST), gzipped or raw: `read_idx`.
- CIFAR-10 Python pickle batches: `read_cifar10`.
- SVHN cropped-digit MATLAB files: `read_svhn`.

The readers check every file fully and raise `FileNotFoundError` for a missing
file or `ValueError` for a malformed one, naming the file and what is wrong.
They return NumPy arrays and import neither TensorFlow nor Keras.
"""

import gzip
import math
import os
import pickle
import zlib

import numpy as np
import scipy.io

# IDX type codes (byte 3 of the magic number) and their big-endian dtypes.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_NUM_CLASSES = 10
_CIFAR10_IMAGE_SHAPE_CHW = (3, 32, 32)

SVHN_TRAIN_FILE = "train_32x32.mat"
SVHN_TEST_FILE = "test_32x32.mat"
_SVHN_IMAGE_SHAPE_HWC = (32, 32, 3)


def _read_file_bytes(path, kind):
  """Read `path` whole, or raise FileNotFoundError naming the `kind` of file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{kind} file not found: {os.fspath(path)!r}.")
  with open(path, "rb") as f:
    return f.read()


def read_idx(path):
  """Read one IDX file (the MNIST format), gzipped or raw.

  Gzip compression is detected from the first two bytes (1f 8b), not from the
  file name. The header is a 4-byte magic number (two zero bytes, a type code
  from `IDX_DTYPES`, the number of dimensions) followed by one big-endian
  uint32 per dimension. The payload must hold exactly the product of the
  dimensions in items of that type.

  Args:
    path: str or os.PathLike, the IDX file.

  Returns:
    A writable NumPy array in native byte order with the shape from the header,
    for example uint8 `(60000, 28, 28)` for MNIST training images and uint8
    `(60000,)` for its labels.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not valid gzip, not an IDX file, has an unknown
      type code, is truncated or has trailing bytes. The message names the file.
  """
  name = os.fspath(path)
  data = _read_file_bytes(path, "IDX")

  if data[:2] == _GZIP_MAGIC:
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(
          f"IDX file {name!r} starts like gzip but failed to decompress "
          f"({e}). The file is probably truncated; download it again.") from e

  if len(data) < 4:
    raise ValueError(
        f"IDX file {name!r} is truncated: expected at least a 4-byte header, "
        f"got {len(data)} bytes.")
  magic = int.from_bytes(data[:4], "big")
  if data[0] != 0 or data[1] != 0:
    raise ValueError(
        f"File {name!r} is not an IDX file: magic 0x{magic:08X} does not start "
        "with two zero bytes.")
  type_code, ndim = data[2], data[3]
  if type_code not in IDX_DTYPES:
    supported = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
    raise ValueError(
        f"IDX file {name!r} has magic 0x{magic:08X} with unknown type code "
        f"0x{type_code:02X}. The supported codes are {supported}.")
  if ndim == 0:
    raise ValueError(
        f"IDX file {name!r} has magic 0x{magic:08X}, which declares 0 "
        "dimensions; expected at least 1.")

  header_size = 4 + 4 * ndim
  if len(data) < header_size:
    raise ValueError(
        f"IDX file {name!r} is truncated: expected a {header_size}-byte header "
        f"for {ndim} dimensions, got {len(data)} bytes.")
  shape = tuple(
      int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))

  dtype = IDX_DTYPES[type_code]
  expected_size = header_size + math.prod(shape) * dtype.itemsize
  if len(data) < expected_size:
    raise ValueError(
        f"IDX file {name!r} is truncated: shape {shape} of {dtype.name} needs "
        f"{expected_size} bytes, got {len(data)}.")
  if len(data) > expected_size:
    raise ValueError(
        f"IDX file {name!r} has {len(data) - expected_size} trailing bytes: "
        f"shape {shape} of {dtype.name} needs {expected_size} bytes, "
        f"got {len(data)}.")

  array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
  # The copy makes the array writable and converts it to native byte order.
  return array.astype(dtype.newbyteorder("="))


def _read_cifar10_batch(path):
  """Read one CIFAR-10 pickle batch into NHWC uint8 images and int64 labels."""
  name = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"CIFAR-10 batch file not found: {name!r}.")

  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, ImportError, IndexError, KeyError) as e:
    raise ValueError(
        f"CIFAR-10 batch {name!r} is not a readable pickle ({e!r}). Download "
        "the 'CIFAR-10 python version' archive again.") from e
  if not isinstance(batch, dict):
    raise ValueError(
        f"CIFAR-10 batch {name!r} contains a {type(batch).__name__}, expected "
        "a dict with keys b'data' and b'labels'.")

  # The official files use bytes keys, but a re-pickled copy may use str keys.
  values = {}
  for key in ("data", "labels"):
    if key.encode() in batch:
      values[key] = batch[key.encode()]
    elif key in batch:
      values[key] = batch[key]
    else:
      raise ValueError(
          f"CIFAR-10 batch {name!r} has no key b{key!r}. Its keys are "
          f"{sorted(map(repr, batch))}.")

  data = np.asarray(values["data"])
  num_pixels = int(np.prod(_CIFAR10_IMAGE_SHAPE_CHW))
  if data.ndim != 2 or data.shape[1] != num_pixels:
    raise ValueError(
        f"CIFAR-10 batch {name!r} has b'data' of shape {data.shape}, expected "
        f"(N, {num_pixels}).")
  if data.dtype != np.uint8:
    if not np.issubdtype(data.dtype, np.integer) or (
        data.size and (data.min() < 0 or data.max() > 255)):
      raise ValueError(
          f"CIFAR-10 batch {name!r} has b'data' of dtype {data.dtype}, "
          "expected uint8 pixel values in 0..255.")
    data = data.astype(np.uint8)

  labels = np.asarray(values["labels"])
  if labels.shape != (data.shape[0],):
    raise ValueError(
        f"CIFAR-10 batch {name!r} has b'labels' of shape {labels.shape}, "
        f"expected ({data.shape[0]},) to match b'data'.")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"CIFAR-10 batch {name!r} has b'labels' of dtype {labels.dtype}, "
        "expected integers.")
  labels = labels.astype(np.int64)
  _check_label_range(labels, CIFAR10_NUM_CLASSES, name)

  # Each row stores the image channel by channel (CHW), but callers expect
  # NHWC.
  images = data.reshape((-1,) + _CIFAR10_IMAGE_SHAPE_CHW).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _check_label_range(labels, num_classes, name):
  """Raise ValueError unless every label is in 0..num_classes - 1."""
  invalid = (labels < 0) | (labels >= num_classes)
  if np.any(invalid):
    first = int(np.flatnonzero(invalid)[0])
    raise ValueError(
        f"{name!r} has {int(invalid.sum())} labels outside 0..{num_classes - 1}"
        f", for example {int(labels[first])} at index {first}.")


def read_cifar10(folder):
  """Read the CIFAR-10 training and test batches from the Python pickles.

  Unpickling can run arbitrary code stored in the file, so load only files
  from a trusted source, such as the official 'CIFAR-10 python version'
  archive.

  Args:
    folder: str or os.PathLike, the extracted `cifar-10-batches-py/` folder
      itself, which contains `data_batch_1` to `data_batch_5` and `test_batch`.
      Each file is a pickled dict with b"data", uint8 `(N, 3072)` in
      channel-major (CHW) order, and b"labels", N integers.

  Returns:
    `(x_train, y_train, x_test, y_test)`: uint8 images `(N, 32, 32, 3)` (NHWC)
    and int64 labels `(N,)` in 0..9, with the five training batches
    concatenated in order. The official files give 50000 training and 10000
    test images.

  Raises:
    FileNotFoundError: the folder or one of the six files is missing.
    ValueError: a file is not a readable pickle, lacks a key, has the wrong
      shape or dtype, or has a label outside 0..9. The message names the file.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f"CIFAR-10 folder not found: {os.fspath(folder)!r}. Pass the extracted "
        "'cifar-10-batches-py' folder.")
  train = [_read_cifar10_batch(os.path.join(folder, f))
           for f in CIFAR10_TRAIN_FILES]
  x_test, y_test = _read_cifar10_batch(os.path.join(folder, CIFAR10_TEST_FILE))
  x_train = np.concatenate([images for images, _ in train])
  y_train = np.concatenate([labels for _, labels in train])
  return x_train, y_train, x_test, y_test


def _read_svhn_file(path):
  """Read one SVHN `.mat` file into NHWC uint8 images and int64 labels."""
  name = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"SVHN file not found: {name!r}.")

  try:
    contents = scipy.io.loadmat(path)
  except (ValueError, TypeError, OSError, NotImplementedError,
          scipy.io.matlab.MatReadError) as e:
    # loadmat raises NotImplementedError for MATLAB v7.3 (HDF5) files.
    raise ValueError(
        f"SVHN file {name!r} is not a readable MATLAB v5 file ({e!r}). "
        "Download the cropped-digits '*_32x32.mat' files again.") from e
  for key in ("X", "y"):
    if key not in contents:
      variables = sorted(k for k in contents if not k.startswith("__"))
      raise ValueError(
          f"SVHN file {name!r} has no variable {key!r}. It has {variables}.")

  images = np.asarray(contents["X"])
  if images.ndim != 4 or images.shape[:3] != _SVHN_IMAGE_SHAPE_HWC:
    raise ValueError(
        f"SVHN file {name!r} has X of shape {images.shape}, expected "
        f"{_SVHN_IMAGE_SHAPE_HWC + ('N',)}.")
  if images.dtype != np.uint8:
    raise ValueError(
        f"SVHN file {name!r} has X of dtype {images.dtype}, expected uint8.")
  num_images = images.shape[3]

  labels = np.asarray(contents["y"])
  if labels.shape not in ((num_images, 1), (1, num_images)):
    raise ValueError(
        f"SVHN file {name!r} has y of shape {labels.shape}, expected "
        f"({num_images}, 1) to match X.")
  labels = labels.reshape(-1)
  if labels.size and not np.all(labels == np.round(labels)):
    raise ValueError(
        f"SVHN file {name!r} has non-integer labels in y.")
  labels = labels.astype(np.int64)
  invalid = (labels < 1) | (labels > 10)
  if np.any(invalid):
    first = int(np.flatnonzero(invalid)[0])
    raise ValueError(
        f"SVHN file {name!r} has {int(invalid.sum())} labels outside 1..10, "
        f"for example {int(labels[first])} at index {first}.")

  # SVHN stores digit 0 as label 10.
  labels[labels == 10] = 0
  images = np.ascontiguousarray(np.transpose(images, (3, 0, 1, 2)))
  return images, labels


def read_svhn(folder):
  """Read the SVHN cropped-digit training and test sets (format 2).

  Args:
    folder: str or os.PathLike, the folder that contains `train_32x32.mat` and
      `test_32x32.mat`. In each file `X` is uint8 `(32, 32, 3, N)` and `y` is
      `(N, 1)` with labels 1..10, where 10 is the digit 0.

  Returns:
    `(x_train, y_train, x_test, y_test)`: uint8 images `(N, 32, 32, 3)` (NHWC)
    and int64 labels `(N,)` in 0..9, with label 10 mapped to 0. The official
    files give 73257 training and 26032 test images; the `extra_32x32.mat`
    split is not read.

  Raises:
    FileNotFoundError: the folder or one of the two files is missing.
    ValueError: a file is not a readable MATLAB v5 file, lacks `X` or `y`, has
      the wrong shape or dtype, or has a label outside 1..10. The message names
      the file.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f"SVHN folder not found: {os.fspath(folder)!r}. Pass the folder that "
        f"contains {SVHN_TRAIN_FILE} and {SVHN_TEST_FILE}.")
  x_train, y_train = _read_svhn_file(os.path.join(folder, SVHN_TRAIN_FILE))
  x_test, y_test = _read_svhn_file(os.path.join(folder, SVHN_TEST_FILE))
  return x_train, y_train, x_test, y_test
