"""Tests for inc_tf.readers: IDX, CIFAR-10 pickles and SVHN .mat files."""

import gzip
import os
import pickle

import numpy as np
import pytest
import scipy.io

from inc_tf import readers


def write_idx(path, array, compress=False):
  """Write `array` as an IDX file, gzipped if `compress`."""
  codes = {np.dtype(v).newbyteorder("="): k
           for k, v in readers.IDX_DTYPES.items()}
  header = bytes([0, 0, codes[array.dtype], array.ndim])
  header += b"".join(d.to_bytes(4, "big") for d in array.shape)
  payload = array.astype(array.dtype.newbyteorder(">")).tobytes()
  content = header + payload
  if compress:
    content = gzip.compress(content)
  with open(path, "wb") as f:
    f.write(content)
  return path


def write_cifar_batch(path, data, labels, keys=(b"data", b"labels")):
  with open(path, "wb") as f:
    pickle.dump({keys[0]: data, keys[1]: labels, b"batch_label": b"x"}, f)


def make_cifar_folder(folder, per_batch=4, seed=0):
  """Write six small CIFAR-10 batches and return the (data, labels) written."""
  rng = np.random.default_rng(seed)
  written = []
  for file_name in readers.CIFAR10_TRAIN_FILES + (readers.CIFAR10_TEST_FILE,):
    data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, per_batch).tolist()
    write_cifar_batch(folder / file_name, data, labels)
    written.append((data, labels))
  return written


def make_svhn_file(path, num_images, labels=None, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (32, 32, 3, num_images), dtype=np.uint8)
  if labels is None:
    labels = rng.integers(1, 11, num_images)
  y = np.asarray(labels, np.uint8).reshape(-1, 1)
  scipy.io.savemat(path, {"X": images, "y": y})
  return images, y


# IDX.


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
  array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
  if dtype == "u1":
    array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5) * 8

  result = readers.read_idx(write_idx(tmp_path / "a", array, compress))

  assert result.dtype == np.dtype(dtype)
  assert result.dtype.isnative
  np.testing.assert_array_equal(result, array)


def test_idx_result_is_writable(tmp_path):
  result = readers.read_idx(write_idx(tmp_path / "a", np.zeros(3, np.uint8)))
  result[0] = 1
  assert result[0] == 1


def test_idx_gzip_detected_by_content(tmp_path):
  labels = np.array([3, 1, 4, 1, 5], np.uint8)
  gzipped = write_idx(tmp_path / "labels-no-suffix", labels, compress=True)
  raw = write_idx(tmp_path / "labels-raw.gz", labels, compress=False)

  np.testing.assert_array_equal(readers.read_idx(gzipped), labels)
  np.testing.assert_array_equal(readers.read_idx(raw), labels)


def test_idx_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing-file"):
    readers.read_idx(tmp_path / "missing-file")


def test_idx_truncated_payload(tmp_path):
  path = write_idx(tmp_path / "a", np.zeros((4, 2, 2), np.uint8))
  content = path.read_bytes()
  path.write_bytes(content[:-3])

  with pytest.raises(ValueError, match=r"truncated.*needs 32 bytes, got 29"):
    readers.read_idx(path)


def test_idx_truncated_header(tmp_path):
  path = tmp_path / "a"
  path.write_bytes(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big"))

  with pytest.raises(ValueError, match=r"16-byte header .* got 8 bytes"):
    readers.read_idx(path)


def test_idx_truncated_gzip(tmp_path):
  path = write_idx(tmp_path / "a.gz", np.zeros((50, 50), np.uint8), True)
  path.write_bytes(path.read_bytes()[:20])

  with pytest.raises(ValueError, match=r"a\.gz.*failed to decompress"):
    readers.read_idx(path)


def test_idx_wrong_magic(tmp_path):
  path = tmp_path / "photo.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))

  with pytest.raises(ValueError, match=r"photo\.png.*magic 0x89504E47"):
    readers.read_idx(path)


def test_idx_unknown_type_code(tmp_path):
  path = tmp_path / "a"
  path.write_bytes(bytes([0, 0, 0x0A, 1]) + (1).to_bytes(4, "big") + b"\0")

  with pytest.raises(ValueError, match="unknown type code 0x0A"):
    readers.read_idx(path)


def test_idx_wrong_dims(tmp_path):
  # The header claims 3 x 3 items but the payload has 2 x 3.
  path = tmp_path / "a"
  header = bytes([0, 0, 8, 2]) + (3).to_bytes(4, "big") + (3).to_bytes(4, "big")
  path.write_bytes(header + bytes(6))

  with pytest.raises(ValueError, match=r"shape \(3, 3\).*needs 21 bytes"):
    readers.read_idx(path)


def test_idx_zero_dims(tmp_path):
  path = tmp_path / "a"
  path.write_bytes(bytes([0, 0, 8, 0, 7]))

  with pytest.raises(ValueError, match="0 dimensions"):
    readers.read_idx(path)


def test_idx_trailing_bytes(tmp_path):
  path = write_idx(tmp_path / "a", np.zeros(4, np.uint8))
  path.write_bytes(path.read_bytes() + b"\0\0")

  with pytest.raises(ValueError, match="2 trailing bytes"):
    readers.read_idx(path)


# CIFAR-10.


def test_cifar_round_trip(tmp_path):
  written = make_cifar_folder(tmp_path)

  x_train, y_train, x_test, y_test = readers.read_cifar10(tmp_path)

  assert x_train.shape == (20, 32, 32, 3)
  assert x_test.shape == (4, 32, 32, 3)
  assert x_train.dtype == np.uint8
  np.testing.assert_array_equal(
      y_train, np.concatenate([labels for _, labels in written[:5]]))
  np.testing.assert_array_equal(y_test, written[5][1])
  # Row layout is channel-major: index c * 1024 + h * 32 + w.
  data = written[1][0]
  assert x_train[4 + 2, 5, 7, 0] == data[2, 0 * 1024 + 5 * 32 + 7]
  assert x_train[4 + 2, 5, 7, 2] == data[2, 2 * 1024 + 5 * 32 + 7]
  expected = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(x_train[4:8], expected)


def test_cifar_str_keys(tmp_path):
  make_cifar_folder(tmp_path)
  data = np.full((2, 3072), 9, np.uint8)
  write_cifar_batch(tmp_path / "test_batch", data, [1, 2], ("data", "labels"))

  _, _, x_test, y_test = readers.read_cifar10(tmp_path)

  np.testing.assert_array_equal(y_test, [1, 2])
  assert np.all(x_test == 9)


def test_cifar_missing_batch(tmp_path):
  make_cifar_folder(tmp_path)
  os.remove(tmp_path / "data_batch_3")

  with pytest.raises(FileNotFoundError, match="data_batch_3"):
    readers.read_cifar10(tmp_path)


def test_cifar_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
    readers.read_cifar10(tmp_path / "nope")


def test_cifar_wrong_keys(tmp_path):
  make_cifar_folder(tmp_path)
  write_cifar_batch(tmp_path / "data_batch_2", np.zeros((2, 3072), np.uint8),
                    [0, 1], keys=(b"images", b"labels"))

  with pytest.raises(ValueError, match=r"data_batch_2.*no key b'data'"):
    readers.read_cifar10(tmp_path)


def test_cifar_wrong_shape(tmp_path):
  make_cifar_folder(tmp_path)
  write_cifar_batch(tmp_path / "test_batch", np.zeros((2, 1024), np.uint8),
                    [0, 1])

  with pytest.raises(ValueError, match=r"test_batch.*\(2, 1024\)"):
    readers.read_cifar10(tmp_path)


def test_cifar_label_count_mismatch(tmp_path):
  make_cifar_folder(tmp_path)
  write_cifar_batch(tmp_path / "test_batch", np.zeros((2, 3072), np.uint8),
                    [0, 1, 2])

  with pytest.raises(ValueError, match=r"b'labels' of shape \(3,\)"):
    readers.read_cifar10(tmp_path)


def test_cifar_label_out_of_range(tmp_path):
  make_cifar_folder(tmp_path)
  write_cifar_batch(tmp_path / "data_batch_5", np.zeros((3, 3072), np.uint8),
                    [0, 10, 4])

  with pytest.raises(ValueError, match=r"data_batch_5.*10 at index 1"):
    readers.read_cifar10(tmp_path)


def test_cifar_not_a_pickle(tmp_path):
  make_cifar_folder(tmp_path)
  (tmp_path / "data_batch_1").write_bytes(b"<html>not found</html>")

  with pytest.raises(ValueError, match="data_batch_1.*not a readable pickle"):
    readers.read_cifar10(tmp_path)


# SVHN.


def test_svhn_round_trip(tmp_path):
  train_images, train_y = make_svhn_file(
      tmp_path / "train_32x32.mat", 5, labels=[10, 1, 9, 10, 3])
  test_images, _ = make_svhn_file(tmp_path / "test_32x32.mat", 2, seed=1)

  x_train, y_train, x_test, y_test = readers.read_svhn(tmp_path)

  assert x_train.shape == (5, 32, 32, 3)
  assert x_test.shape == (2, 32, 32, 3)
  assert x_train.dtype == np.uint8
  np.testing.assert_array_equal(y_train, [0, 1, 9, 0, 3])
  assert train_y.shape == (5, 1)
  assert y_test.shape == (2,)
  assert x_train[3, 4, 6, 1] == train_images[4, 6, 1, 3]
  np.testing.assert_array_equal(x_train, train_images.transpose(3, 0, 1, 2))
  np.testing.assert_array_equal(x_test, test_images.transpose(3, 0, 1, 2))


def test_svhn_missing_file(tmp_path):
  make_svhn_file(tmp_path / "train_32x32.mat", 2)

  with pytest.raises(FileNotFoundError, match="test_32x32.mat"):
    readers.read_svhn(tmp_path)


def test_svhn_label_out_of_range(tmp_path):
  make_svhn_file(tmp_path / "train_32x32.mat", 3, labels=[1, 0, 2])
  make_svhn_file(tmp_path / "test_32x32.mat", 2)

  with pytest.raises(ValueError, match=r"outside 1\.\.10.*0 at index 1"):
    readers.read_svhn(tmp_path)


def test_svhn_wrong_shape(tmp_path):
  scipy.io.savemat(tmp_path / "train_32x32.mat",
                   {"X": np.zeros((3, 32, 32, 2), np.uint8),
                    "y": np.ones((2, 1), np.uint8)})
  make_svhn_file(tmp_path / "test_32x32.mat", 2)

  with pytest.raises(ValueError, match=r"train_32x32.*X of shape"):
    readers.read_svhn(tmp_path)


def test_svhn_missing_variable(tmp_path):
  scipy.io.savemat(tmp_path / "train_32x32.mat",
                   {"X": np.zeros((32, 32, 3, 2), np.uint8)})
  make_svhn_file(tmp_path / "test_32x32.mat", 2)

  with pytest.raises(ValueError, match="no variable 'y'"):
    readers.read_svhn(tmp_path)


def test_svhn_not_a_mat_file(tmp_path):
  (tmp_path / "train_32x32.mat").write_bytes(b"garbage" * 40)
  make_svhn_file(tmp_path / "test_32x32.mat", 2)

  with pytest.raises(ValueError, match="not a readable MATLAB v5 file"):
    readers.read_svhn(tmp_path)
