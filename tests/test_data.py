"""Tests for inc_tf.data: dataset loading, subsets, normalisation, pipelines."""

import dataclasses
import os
import sys
import types

import numpy as np
import pytest
import scipy.io
import tensorflow as tf

from inc_tf import data
from tests.test_readers import make_cifar_folder, write_idx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def make_mnist_folder(folder, train_per_class=6, test_per_class=2, seed=0):
  """Write small MNIST-format IDX files and return the arrays written.

  Pixel (0, 0) is 0 in every image, so its std is 0, and pixel (0, 1) equals
  the label.
  """
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, per_class, compress in (("train", train_per_class, True),
                                     ("t10k", test_per_class, False)):
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    labels = labels.astype(np.uint8)
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    images[:, 0, 0] = 0
    images[:, 0, 1] = labels
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress)
    write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    arrays[split] = (images, labels)
  return arrays


@pytest.fixture
def no_default_dirs(monkeypatch):
  monkeypatch.setattr(data, "DEFAULT_DATA_DIRS", {})


@pytest.fixture
def fake_tfds(monkeypatch):
  """Install a stand-in `tensorflow_datasets` module and return its call log."""
  calls = []
  module = types.ModuleType("tensorflow_datasets")

  def load(name, **kwargs):
    calls.append((name, kwargs))
    if name == "offline":
      raise OSError("Failed to resolve 'storage.googleapis.com'")
    rng = np.random.default_rng(0)
    splits = []
    for n in (20, 10):
      images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
      splits.append((images, np.arange(n, dtype=np.int64) % 10))
    return splits

  module.load = load
  module.as_numpy = lambda split: split
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
  return calls


# Sources.


def test_load_from_data_dir(tmp_path):
  arrays = make_mnist_folder(tmp_path)

  splits = data.load_dataset("mnist", data_dir=str(tmp_path))

  assert splits.x_train.shape == (60, 28, 28, 1)
  assert splits.x_test.shape == (20, 28, 28, 1)
  assert splits.x_train.dtype == np.float32
  assert splits.y_train.dtype == np.int32
  assert splits.num_classes == 10
  assert splits.name == "mnist"
  assert str(tmp_path) in splits.source
  np.testing.assert_array_equal(splits.y_train, arrays["train"][1])
  np.testing.assert_array_equal(splits.y_test, arrays["t10k"][1])


def test_unknown_name_lists_valid():
  with pytest.raises(ValueError, match=r"'imagenet'.*'mnist'.*'svhn'"):
    data.load_dataset("imagenet")


def test_data_dir_missing_files(tmp_path):
  make_mnist_folder(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")

  with pytest.raises(FileNotFoundError) as error:
    data.load_dataset("mnist", data_dir=str(tmp_path))

  problem, fix = str(error.value).split(" Pass ", 1)
  assert problem == (f"--data_dir {tmp_path} is missing the mnist file "
                     "t10k-labels-idx1-ubyte.")
  assert ("train-images-idx3-ubyte, train-labels-idx1-ubyte, "
          "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may also end "
          "in .gz)") in fix
  assert "drop --data_dir to load it with tensorflow-datasets" in fix
  assert "[" not in fix


def test_data_dir_empty(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "DEFAULT_DATA_DIRS",
                      {"fashion_mnist": ("/default/fashion-mnist",)})

  with pytest.raises(FileNotFoundError) as error:
    data.load_dataset("fashion_mnist", data_dir=str(tmp_path))

  message = str(error.value)
  assert message.startswith(
      f"--data_dir {tmp_path} contains none of the fashion_mnist files. ")
  assert "https://storage.googleapis.com/tensorflow/tf-keras-datasets/" in (
      message)
  assert message.endswith(
      "or drop --data_dir to search /default/fashion-mnist and then "
      "tensorflow-datasets.")
  assert "[" not in message


def test_data_dir_not_a_folder(tmp_path):
  missing = tmp_path / "nowhere"

  with pytest.raises(FileNotFoundError) as error:
    data.load_dataset("svhn", data_dir=str(missing))

  message = str(error.value)
  assert message.startswith(
      f"--data_dir {missing} does not exist or is not a folder. ")
  assert "train_32x32.mat, test_32x32.mat" in message
  assert "http://ufldl.stanford.edu/housenumbers/" in message


def test_data_dir_no_fallback(tmp_path, monkeypatch, fake_tfds):
  good, empty = tmp_path / "good", tmp_path / "empty"
  good.mkdir()
  empty.mkdir()
  make_mnist_folder(good)
  monkeypatch.setattr(data, "DEFAULT_DATA_DIRS", {"fashion_mnist": (good,)})

  with pytest.raises(FileNotFoundError, match="empty"):
    data.load_dataset("fashion_mnist", data_dir=str(empty))
  assert not fake_tfds


def test_default_dir_used(tmp_path, monkeypatch, fake_tfds):
  make_mnist_folder(tmp_path)
  missing = str(tmp_path / "missing")
  monkeypatch.setattr(data, "DEFAULT_DATA_DIRS",
                      {"mnist": (missing, str(tmp_path))})

  splits = data.load_dataset("mnist")

  assert splits.source == f"IDX files in {tmp_path}"
  assert not fake_tfds


def test_tfds_fallback(no_default_dirs, fake_tfds):
  splits = data.load_dataset("mnist")

  assert fake_tfds[0][0] == "mnist"
  assert fake_tfds[0][1]["batch_size"] == -1
  assert fake_tfds[0][1]["as_supervised"]
  assert splits.source == "tensorflow-datasets 'mnist'"
  assert splits.x_train.shape == (20, 28, 28, 1)
  assert splits.y_test.dtype == np.int32


def test_tfds_failure_explains(no_default_dirs, fake_tfds, monkeypatch):
  monkeypatch.setitem(
      data._DATASETS, "mnist",
      dataclasses.replace(data._DATASETS["mnist"], tfds_name="offline"))

  with pytest.raises(FileNotFoundError) as error:
    data.load_dataset("mnist")

  message = str(error.value)
  assert "--data_dir" in message
  assert "storage.googleapis.com" in message
  assert "train-images-idx3-ubyte, train-labels-idx1-ubyte" in message
  assert "[" not in message
  assert isinstance(error.value.__cause__, OSError)


def test_cifar_from_data_dir(tmp_path):
  written = make_cifar_folder(tmp_path, per_batch=3)

  splits = data.load_dataset("cifar10", data_dir=tmp_path)

  assert splits.x_train.shape == (15, 32, 32, 3)
  assert splits.image_shape == (32, 32, 3)
  np.testing.assert_array_equal(splits.y_test, written[5][1])


def test_svhn_from_data_dir(tmp_path):
  for name, labels in (("train", [10, 1, 2, 10]), ("test", [3, 10])):
    images = np.full((32, 32, 3, len(labels)), 7, np.uint8)
    scipy.io.savemat(tmp_path / f"{name}_32x32.mat",
                     {"X": images, "y": np.array(labels, np.uint8)[:, None]})

  splits = data.load_dataset("svhn", data_dir=tmp_path)

  np.testing.assert_array_equal(splits.y_train, [0, 1, 2, 0])
  np.testing.assert_array_equal(splits.y_test, [3, 0])
  assert np.all(splits.x_test == 0)


def test_labels_out_of_range(tmp_path):
  make_mnist_folder(tmp_path)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(20, 12, np.uint8))

  with pytest.raises(ValueError, match=r"test labels .* 12\.\.12"):
    data.load_dataset("mnist", data_dir=tmp_path)


def test_wrong_image_dims(tmp_path):
  make_mnist_folder(tmp_path)
  write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 784), np.uint8))

  with pytest.raises(ValueError, match=r"test images .*\(20, 784\)"):
    data.load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason=f"Fashion-MNIST is not installed at "
                    f"{FASHION_MNIST_DIR} (Debian package fashion-mnist).")
def test_real_fashion_mnist():
  splits = data.load_dataset("fashion_mnist")

  assert splits.source == f"IDX files in {FASHION_MNIST_DIR}"
  assert splits.x_train.shape == (60000, 28, 28, 1)
  assert splits.x_test.shape == (10000, 28, 28, 1)
  assert splits.num_classes == 10
  np.testing.assert_array_equal(np.bincount(splits.y_train), [6000] * 10)
  np.testing.assert_array_equal(np.unique(splits.y_test), np.arange(10))
  assert np.all(np.isfinite(splits.x_train))


# Subsets.


def test_subset_balanced(tmp_path):
  make_mnist_folder(tmp_path)

  splits = data.load_dataset("mnist", data_dir=tmp_path, examples_per_class=4)

  np.testing.assert_array_equal(np.bincount(splits.y_train), [4] * 10)
  assert splits.x_test.shape[0] == 20


def test_subset_seeded(tmp_path):
  make_mnist_folder(tmp_path)

  def subset(seed):
    splits = data.load_dataset(
        "mnist", data_dir=tmp_path, examples_per_class=3, seed=seed)
    return splits.x_train

  np.testing.assert_array_equal(subset(1), subset(1))
  assert not np.array_equal(subset(1), subset(2))


def test_subset_labels_match_images(tmp_path):
  make_mnist_folder(tmp_path)

  splits = data.load_dataset("mnist", data_dir=tmp_path, examples_per_class=2)

  # Pixel (0, 1) equals the label, so undoing the normalisation recovers it.
  raw = splits.x_train[:, 0, 1, 0] * splits.std[0, 1, 0] + splits.mean[0, 1, 0]
  np.testing.assert_allclose(raw * 255, splits.y_train, atol=1e-4)


def test_subset_too_large(tmp_path):
  make_mnist_folder(tmp_path)

  with pytest.raises(ValueError, match=r"Class 0 has 6 .*examples_per_class=7"):
    data.load_dataset("mnist", data_dir=tmp_path, examples_per_class=7)


@pytest.mark.parametrize("arguments", [
    {"examples_per_class": 0}, {"seed": -1}, {"pad_to": 2.5},
    {"examples_per_class": True}])
def test_invalid_arguments(tmp_path, arguments):
  with pytest.raises(ValueError, match=repr(list(arguments.values())[0])):
    data.load_dataset("mnist", data_dir=tmp_path, **arguments)


# Normalisation and padding.


def test_train_normalised(tmp_path):
  make_mnist_folder(tmp_path)

  splits = data.load_dataset("mnist", data_dir=tmp_path)

  varying = splits.std != 1.0
  mean = splits.x_train.astype(np.float64).mean(axis=0)
  std = splits.x_train.astype(np.float64).std(axis=0)
  np.testing.assert_allclose(mean[varying], 0.0, atol=1e-6)
  np.testing.assert_allclose(std[varying], 1.0, atol=1e-6)
  assert splits.mean.shape == (28, 28, 1)
  assert splits.std.shape == (28, 28, 1)


def test_constant_pixel_finite(tmp_path):
  make_mnist_folder(tmp_path)

  splits = data.load_dataset("mnist", data_dir=tmp_path)

  assert splits.std[0, 0, 0] == 1.0
  assert splits.mean[0, 0, 0] == 0.0
  assert np.all(np.isfinite(splits.x_train))
  assert np.all(np.isfinite(splits.x_test))
  assert np.all(splits.x_train[:, 0, 0, 0] == 0.0)


def test_test_uses_train_stats(tmp_path):
  arrays = make_mnist_folder(tmp_path)
  train_images = arrays["train"][0].astype(np.float64) / 255

  splits = data.load_dataset("mnist", data_dir=tmp_path)

  np.testing.assert_allclose(splits.mean[..., 0], train_images.mean(axis=0))
  expected = (arrays["t10k"][0][..., None] / 255 - splits.mean) / splits.std
  np.testing.assert_allclose(splits.x_test, expected, rtol=1e-6, atol=1e-6)


def test_stats_from_subset(tmp_path):
  arrays = make_mnist_folder(tmp_path)

  splits = data.load_dataset("mnist", data_dir=tmp_path, examples_per_class=2)

  full_mean = arrays["train"][0].mean(axis=0) / 255
  assert not np.allclose(splits.mean[..., 0], full_mean)
  np.testing.assert_allclose(
      splits.x_train.astype(np.float64).mean(axis=0)[splits.std != 1.0], 0.0,
      atol=1e-6)


def test_pad_to_32(tmp_path):
  make_mnist_folder(tmp_path)
  unpadded = data.load_dataset("mnist", data_dir=tmp_path)

  splits = data.load_dataset("mnist", data_dir=tmp_path, pad_to=32)

  assert splits.x_train.shape == (60, 32, 32, 1)
  assert splits.x_test.shape == (20, 32, 32, 1)
  assert splits.mean.shape == (28, 28, 1)
  np.testing.assert_array_equal(splits.x_train[:, 2:30, 2:30],
                                unpadded.x_train)
  np.testing.assert_array_equal(splits.x_test[:, 2:30, 2:30], unpadded.x_test)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert np.all(splits.x_train[:, border] == 0.0)
  assert np.all(splits.x_test[:, border] == 0.0)


def test_pad_odd_difference():
  images = np.ones((1, 3, 3, 1), np.float32)

  padded = data.pad_images(images, 6)

  np.testing.assert_array_equal(np.flatnonzero(padded[0, :, 2, 0]), [1, 2, 3])


def test_pad_too_small(tmp_path):
  make_mnist_folder(tmp_path)

  with pytest.raises(ValueError, match=r"pad_to=27 .* 28 x 28"):
    data.load_dataset("mnist", data_dir=tmp_path, pad_to=27)


# Pipelines.


def collect(dataset):
  batches = [(x.numpy(), y.numpy()) for x, y in dataset]
  return [x for x, _ in batches], [y for _, y in batches]


def make_examples(n=10):
  # Each image is filled with its own index so batches show the order.
  x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None],
                      (n, 2, 2, 1)).copy()
  return x, np.arange(n, dtype=np.int64) % 3


def test_train_batches_cover_epoch():
  x, y = make_examples(10)

  images, labels = collect(data.train_batches(x, y, 4, seed=0, epoch=0))

  assert [len(b) for b in images] == [4, 4, 2]
  order = np.concatenate(images)[:, 0, 0, 0].astype(int)
  np.testing.assert_array_equal(np.sort(order), np.arange(10))
  np.testing.assert_array_equal(np.concatenate(labels), order % 3)
  assert images[0].dtype == np.float32
  assert labels[0].dtype == np.int32


def test_train_order_reproducible():
  x, y = make_examples(50)

  first = collect(data.train_batches(x, y, 8, seed=3, epoch=2))[0]
  second = collect(data.train_batches(x, y, 8, seed=3, epoch=2))[0]

  np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))


def test_train_order_changes():
  x, y = make_examples(50)
  pipeline = data.TrainPipeline(x, y, 8, seed=3)

  orders = [np.concatenate(collect(pipeline.epoch(e))[0])[:, 0, 0, 0]
            for e in range(2)]
  other_seed = data.TrainPipeline(x, y, 8, seed=4).permutation(0)

  assert not np.array_equal(orders[0], orders[1])
  assert not np.array_equal(pipeline.permutation(0), other_seed)
  np.testing.assert_array_equal(orders[1], pipeline.permutation(1))


def test_pipeline_steps_per_epoch():
  x, y = make_examples(10)

  assert data.TrainPipeline(x, y, 4, seed=0).steps_per_epoch == 3
  assert data.TrainPipeline(x, y, 5, seed=0).steps_per_epoch == 2
  assert data.TrainPipeline(x, y, 64, seed=0).steps_per_epoch == 1


def test_pipeline_rejects_mismatch():
  x, y = make_examples(10)

  with pytest.raises(ValueError, match="x has 10 examples but y has 9"):
    data.TrainPipeline(x, y[:9], 4, seed=0)
  with pytest.raises(ValueError, match="batch_size .* got 0"):
    data.TrainPipeline(x, y, 0, seed=0)
  with pytest.raises(ValueError, match="epoch .* got -1"):
    data.TrainPipeline(x, y, 4, seed=0).epoch(-1)


def test_eval_batches_in_order():
  x, y = make_examples(10)

  images, labels = collect(data.eval_batches(x, y, 4))

  assert [len(b) for b in images] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate(images), x)
  np.testing.assert_array_equal(np.concatenate(labels), y)
  assert labels[0].dtype == np.int32


def test_distributed_epoch_covers_all(two_replicas):
  x, y = make_examples(10)
  strategy = two_replicas
  pipeline = data.TrainPipeline(x, y, 4, seed=0)

  seen = []
  for images, _ in strategy.experimental_distribute_dataset(pipeline.epoch(0)):
    for replica_images in strategy.experimental_local_results(images):
      seen.extend(replica_images.numpy()[:, 0, 0, 0].astype(int))

  np.testing.assert_array_equal(np.sort(seen), np.arange(10))
