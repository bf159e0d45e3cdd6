"""Tests of inc_tf.measurement: streamed batches against in-memory arrays."""

import gc
import json
import os
import threading
import time
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
import threadpoolctl

from inc_tf import measurement
from inc_tf import metrics
from inc_tf import probe as probe_lib

NUM_CLASSES = 3


def tiny_mlp(dtype="float32"):
  inputs = keras.Input((6,), dtype=dtype)
  x = keras.layers.Dense(16, activation="relu", name="dense_1",
                         dtype=dtype)(inputs)
  x = keras.layers.Dense(12, activation="tanh", name="dense_2",
                         dtype=dtype)(x)
  logits = keras.layers.Dense(NUM_CLASSES, name="classifier", dtype=dtype)(x)
  return keras.Model(inputs, logits)


def tiny_convnet():
  inputs = keras.Input((6, 6, 2))
  x = keras.layers.Conv2D(4, 3, padding="same", name="conv_1")(inputs)
  x = keras.layers.BatchNormalization(name="bn_1")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(5, 3, strides=2, name="conv_2")(x)
  x = keras.layers.Flatten()(x)
  logits = keras.layers.Dense(NUM_CLASSES, name="classifier")(x)
  return keras.Model(inputs, logits)


def make_data(shape, num_samples=230, offset=0.0, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=num_samples)
  images = rng.normal(size=(num_samples,) + shape)
  flat = images.reshape(num_samples, int(np.prod(shape)))
  flat[:, :NUM_CLASSES] += 2.0 * np.eye(NUM_CLASSES)[labels]
  return (images + offset).astype(dtype), labels


def batches(images, labels, batch_size=32):
  return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def array_metrics(model, images, labels, train_means=None,
                  max_covariance_dim=metrics.DEFAULT_MAX_COVARIANCE_DIM):
  """Return `layer_metrics` of every probe point from whole-array features."""
  probe_model, points = probe_lib.build_probe(model)
  outputs = probe_model(images, training=False)
  predictions = np.argmax(np.asarray(outputs[-1]), axis=-1)
  results = []
  for position, point in enumerate(points):
    means = None if train_means is None else train_means[position]
    results.append(metrics.layer_metrics(
        np.asarray(outputs[position]), labels, NUM_CLASSES,
        kernel=np.asarray(point.layer.kernel),
        predictions=predictions, train_means=means,
        is_classifier=position == len(points) - 1,
        max_covariance_dim=max_covariance_dim))
  return results


def class_means(model, images, labels):
  probe_model, _ = probe_lib.build_probe(model)
  outputs = probe_model(images, training=False)[:-1]
  means = []
  for feature in outputs:
    flat = np.asarray(feature, dtype=np.float64).reshape(len(labels), -1)
    means.append(np.stack(
        [flat[labels == c].mean(axis=0) for c in range(NUM_CLASSES)]))
  return means


def assert_results_match(streamed, expected, rtol, skip=()):
  for key, value in expected.items():
    if key in skip:
      continue
    assert key in streamed, key
    if isinstance(value, list) and value and isinstance(value[0], float):
      np.testing.assert_allclose(streamed[key], value, rtol=rtol, err_msg=key)
    elif isinstance(value, float):
      np.testing.assert_allclose(streamed[key], value, rtol=rtol, atol=1e-12,
                                 err_msg=key)
    else:
      assert streamed[key] == value, key


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_mlp_matches_arrays(offset):
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,), offset=offset)
  test_images, test_labels = make_data((6,), num_samples=90, offset=offset,
                                       seed=1)

  results = measurement.measure(model, batches(images, labels),
                                batches(test_images, test_labels))

  expected = array_metrics(model, images, labels)
  for streamed, reference in zip(results["train"], expected):
    assert_results_match(streamed, reference, rtol=1e-4)
  classifier_keys = {"self_duality", "am_alignment"}
  assert set(metrics.METRIC_KEYS) - classifier_keys <= set(results["train"][0])
  assert set(metrics.METRIC_KEYS) <= set(results["train"][-1])
  train_means = class_means(model, images, labels)
  expected_test = array_metrics(model, test_images, test_labels, train_means)
  for streamed, reference in zip(results["test"], expected_test):
    assert set(streamed) == {"layer", "index", *metrics.COUNT_KEYS,
                             *metrics.TEST_SPLIT_KEYS}
    assert_results_match(streamed, {
        k: v for k, v in reference.items() if k in streamed}, rtol=1e-4)


def test_names_and_indices():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))

  results = measurement.measure(model, batches(images, labels))

  assert [r["layer"] for r in results["train"]] == [
      "dense_1", "dense_2", "classifier"]
  assert [r["index"] for r in results["train"]] == [0, 1, 2]
  assert results["test"] == []
  json.dumps(results)


def test_float64_model_matches_arrays():
  keras.utils.set_random_seed(0)
  model = tiny_mlp(dtype="float64")
  images, labels = make_data((6,), offset=1e4, dtype=np.float64)

  results = measurement.measure(model, batches(images, labels))

  expected = array_metrics(model, images, labels)
  for streamed, reference in zip(results["train"], expected):
    assert_results_match(streamed, reference, rtol=1e-6)


def test_conv_matches_arrays():
  keras.utils.set_random_seed(1)
  model = tiny_convnet()
  images, labels = make_data((6, 6, 2), offset=100.0)

  results = measurement.measure(model, batches(images, labels))

  expected = array_metrics(model, images, labels)
  assert [r["layer"] for r in results["train"]] == [
      "conv_1", "conv_2", "classifier"]
  for streamed, reference in zip(results["train"], expected):
    assert_results_match(streamed, reference, rtol=1e-4)


def test_wide_points_match_arrays():
  keras.utils.set_random_seed(1)
  model = tiny_convnet()
  images, labels = make_data((6, 6, 2))

  results = measurement.measure(model, batches(images, labels),
                                max_covariance_dim=10)

  # Features of 72, 144 and 20 dimensions all take the wide path. The arrays
  # use the same Krylov estimate, but from float64 products.
  expected = array_metrics(model, images, labels, max_covariance_dim=10)
  for streamed, reference in zip(results["train"], expected):
    assert_results_match(streamed, reference, rtol=1e-4,
                         skip=("feature_stable_rank",))
    assert streamed["feature_stable_rank"] == pytest.approx(
        reference["feature_stable_rank"], rel=1e-3)


def test_two_replicas_match_one(two_replicas, one_replica):
  images, labels = make_data((6,), num_samples=203, offset=50.0)
  strategy = two_replicas
  with strategy.scope():
    keras.utils.set_random_seed(0)
    model = tiny_mlp()

  two = measurement.measure(model, batches(images, labels),
                            batches(images[:70], labels[:70]),
                            strategy=strategy, max_covariance_dim=12)
  one = measurement.measure(model, batches(images, labels),
                            batches(images[:70], labels[:70]),
                            strategy=one_replica, max_covariance_dim=12)

  assert strategy.num_replicas_in_sync == 2
  for split in ("train", "test"):
    for replicated, single in zip(two[split], one[split]):
      assert_results_match(replicated, single, rtol=1e-4)


def test_missing_test_class_uses_train_means():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))
  test_images, test_labels = make_data((6,), num_samples=90, seed=1)
  keep = test_labels != 1
  test_images, test_labels = test_images[keep], test_labels[keep]

  results = measurement.measure(model, batches(images, labels),
                                batches(test_images, test_labels))

  train_means = class_means(model, images, labels)
  expected = array_metrics(model, test_images, test_labels, train_means)
  for streamed, reference in zip(results["test"], expected):
    assert streamed["missing_classes"] == [1]
    assert streamed["ncc_accuracy"] == pytest.approx(reference["ncc_accuracy"])
    assert streamed["trace_within"] == pytest.approx(
        reference["trace_within"], rel=1e-4)


def test_label_out_of_range_raises():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))
  labels[5] = NUM_CLASSES

  with pytest.raises(ValueError, match="outside"):
    measurement.measure(model, batches(images, labels))


def test_empty_training_split_raises():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,), num_samples=0)

  with pytest.raises(ValueError, match="no samples"):
    measurement.measure(model, batches(images, labels))


def test_reused_measurement_follows_weights():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))
  streaming = measurement.StreamingMeasurement(model)
  before = streaming.measure(batches(images, labels))

  layer = model.get_layer("dense_2")
  layer.kernel.assign(2 * layer.kernel)
  after = streaming.measure(batches(images, labels))

  expected = array_metrics(model, images, labels)
  assert after["train"][2]["trace_within"] == pytest.approx(
      expected[2]["trace_within"], rel=1e-4)
  assert after["train"][2]["trace_within"] != pytest.approx(
      before["train"][2]["trace_within"], rel=1e-3)


def test_measure_reuses_traced_passes(monkeypatch):
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))
  builds = []
  build_probe = probe_lib.build_probe
  monkeypatch.setattr(probe_lib, "build_probe",
                      lambda m: builds.append(m) or build_probe(m))
  measurement.measure(model, batches(images, labels))

  layer = model.get_layer("dense_2")
  layer.kernel.assign(2 * layer.kernel)
  after = measurement.measure(model, batches(images, labels))
  assert len(builds) == 1
  # Other options build a new measurement for the same model.
  measurement.measure(model, batches(images, labels), jit_compile=False)
  assert len(builds) == 2

  expected = array_metrics(model, images, labels)
  for streamed, reference in zip(after["train"], expected):
    assert_results_match(streamed, reference, rtol=1e-4)


@pytest.mark.parametrize("sequential", [False, True])
def test_measure_releases_deleted_model(sequential):
  model = tiny_mlp()
  if sequential:
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
         keras.layers.Dense(NUM_CLASSES)])
  images, labels = make_data((6,))
  measurement.measure(model, batches(images, labels))
  reference = weakref.ref(model)

  del model
  gc.collect()
  assert reference() is None


def test_jit_matches_graph():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,), offset=1e4)
  test_images, test_labels = make_data((6,), num_samples=90, offset=1e4,
                                       seed=1)

  results = {}
  for jit_compile in (True, False):
    results[jit_compile] = measurement.measure(
        model, batches(images, labels), batches(test_images, test_labels),
        jit_compile=jit_compile)

  for split in ("train", "test"):
    assert len(results[True][split]) == 3
    for compiled, graph in zip(results[True][split], results[False][split]):
      assert_results_match(compiled, graph, rtol=1e-4)


@pytest.mark.parametrize("make_dataset, message", [
    (lambda images, labels: (images, labels),
     "must be a tf.data.Dataset.*got tuple"),
    (lambda images, labels: batches(images, labels).repeat(),
     "train_dataset is infinite"),
    (lambda images, labels: batches(images, labels.astype(np.float32) + 0.7),
     "integer class ids.*float32"),
    (lambda images, labels: batches(
        images, np.eye(NUM_CLASSES, dtype=np.int32)[labels]),
     r"shape \(batch,\) or \(batch, 1\).*argmax"),
    (lambda images, labels: tf.data.Dataset.from_tensor_slices(
        {"images": images, "labels": labels}).batch(8),
     "elements \\(images, labels\\), got dict"),
])
def test_unusable_training_dataset_raises(make_dataset, message):
  model = tiny_mlp()
  images, labels = make_data((6,), num_samples=40)

  with pytest.raises(ValueError, match=message):
    measurement.measure(model, make_dataset(images, labels))


def test_unusable_test_dataset_raises_early():
  model = tiny_mlp()
  images, labels = make_data((6,), num_samples=40)
  streaming = measurement.StreamingMeasurement(model)
  passes = []
  streaming._run_pass = lambda *args, **kwargs: passes.append(args)  # pylint: disable=protected-access

  with pytest.raises(ValueError, match="test_dataset is infinite"):
    streaming.measure(batches(images, labels),
                      batches(images, labels).repeat())
  assert not passes


def test_label_column_matches_flat_labels():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))

  flat = measurement.measure(model, batches(images, labels))
  column = measurement.measure(
      model, batches(images, labels[:, None].astype(np.int64)))

  for flat_point, column_point in zip(flat["train"], column["train"]):
    assert_results_match(column_point, flat_point, rtol=1e-6)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_num_classes_mismatch_raises(num_classes):
  model = tiny_mlp()

  with pytest.raises(ValueError, match=(
      f"num_classes={num_classes} does not match the {NUM_CLASSES} outputs")):
    measurement.StreamingMeasurement(model, num_classes=num_classes)


@pytest.mark.parametrize("split", ["training", "test"])
def test_non_finite_features_raise(split):
  model = tiny_mlp()
  images, labels = make_data((6,), num_samples=40)
  corrupt = images.copy()
  corrupt[7, 2] = np.nan

  train, test = (corrupt, images) if split == "training" else (images,
                                                               corrupt)
  with pytest.raises(ValueError, match=(
      f"probe point 0 \\(the input of layer 'dense_1'\\) contain NaN or "
      f"infinite values on the {split} split")):
    measurement.measure(model, batches(train, labels), batches(test, labels))


def test_non_finite_kernel_raises():
  model = tiny_mlp()
  kernel, bias = model.get_layer("dense_2").get_weights()
  kernel[3, 1] = np.inf
  model.get_layer("dense_2").set_weights([kernel, bias])
  images, labels = make_data((6,), num_samples=40)

  with pytest.raises(ValueError, match="kernel of layer 'dense_2' contains 1 NaN"):
    measurement.measure(model, batches(images, labels))


@pytest.mark.parametrize("model", ["model", None, np.zeros((4, 6))])
def test_non_model_raises(model):
  images, labels = make_data((6,))
  with pytest.raises(ValueError, match="Expected a Keras functional or "
                     "Sequential model, got"):
    measurement.measure(model, batches(images, labels))


def test_subclassed_model_raises():

  class Subclassed(keras.Model):

    def __init__(self):
      super().__init__()
      self.dense = keras.layers.Dense(NUM_CLASSES)

    def call(self, inputs):
      return self.dense(inputs)

  images, labels = make_data((6,))
  with pytest.raises(ValueError, match="no symbolic inputs"):
    measurement.measure(Subclassed(), batches(images, labels))


def test_spatial_logits_raise():
  inputs = keras.Input((6, 6, 2))
  logits = keras.layers.Conv2D(NUM_CLASSES, 3, padding="same")(inputs)
  model = keras.Model(inputs, logits)
  images, labels = make_data((6, 6, 2))

  with pytest.raises(ValueError, match=r"outputs shape \(None, 6, 6, 3\)"):
    measurement.measure(model, batches(images, labels))


@pytest.mark.parametrize("unbatched", [True, False])
def test_mismatched_image_shape_raises(unbatched):
  model = tiny_convnet()
  images, labels = make_data((6, 6, 2))
  if unbatched:
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
  else:
    dataset = batches(images.reshape(len(images), -1), labels)

  with pytest.raises(ValueError, match="train_dataset yields images of shape"):
    measurement.measure(model, dataset)


def test_image_rank_change_between_calls():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))

  flat = measurement.measure(model, batches(images, labels))
  # Keras drops a trailing axis of size 1, so these are the same images.
  column = measurement.measure(model, batches(images[..., None], labels))
  again = measurement.measure(model, batches(images, labels))

  for first, second, third in zip(flat["train"], column["train"],
                                  again["train"]):
    assert_results_match(second, first, rtol=1e-6)
    assert_results_match(third, first, rtol=1e-6)


def test_probe_of_other_model_raises():
  model = tiny_mlp()
  other = tiny_mlp()
  images, labels = make_data((6,))

  with pytest.raises(ValueError, match="probe was built from a model other than"):
    measurement.measure(model, batches(images, labels),
                        probe=probe_lib.build_probe(other))


def test_probe_model_alone_raises():
  model = tiny_mlp()
  probe_model, _ = probe_lib.build_probe(model)
  images, labels = make_data((6,))

  with pytest.raises(ValueError, match="probe must be the .probe_model, "
                     "points. pair"):
    measurement.measure(model, batches(images, labels), probe=probe_model)


def test_quantized_kernel_raises():
  model = tiny_mlp()
  model.quantize("int8")
  images, labels = make_data((6,))

  with pytest.raises(ValueError, match="has dtype int8, as in a quantized"):
    measurement.measure(model, batches(images, labels))


def test_measure_follows_replaced_variables():
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))
  measurement.measure(model, batches(images, labels))

  # LoRA adds variables that the passes traced before it would not read.
  layer = model.get_layer("dense_2")
  layer.enable_lora(2)
  layer.lora_kernel_b.assign(np.ones(layer.lora_kernel_b.shape))
  after = measurement.measure(model, batches(images, labels))

  expected = array_metrics(model, images, labels)
  for streamed, reference in zip(after["train"], expected):
    assert_results_match(streamed, reference, rtol=1e-4)


@pytest.mark.parametrize("argument, value", [
    ("max_covariance_dim", None),
    ("max_covariance_dim", "auto"),
    ("lambda_max_passes", 1.5),
    ("strategy", "cpu"),
])
def test_invalid_argument_type_raises(argument, value):
  with pytest.raises(ValueError, match=f"{argument} must be"):
    measurement.StreamingMeasurement(tiny_mlp(), **{argument: value})


def test_jit_with_cpu_replicas_raises(two_replicas):
  with two_replicas.scope():
    model = tiny_mlp()

  with pytest.raises(ValueError, match="jit_compile=True is invalid with 2 CPU"):
    measurement.StreamingMeasurement(model, strategy=two_replicas,
                                     jit_compile=True)


def test_invalid_jit_compile_raises():
  model = tiny_mlp()

  with pytest.raises(ValueError, match="jit_compile must be"):
    measurement.StreamingMeasurement(model, jit_compile="yes")


def test_invalid_host_scatter_raises():
  model = tiny_mlp()

  with pytest.raises(ValueError, match="host_scatter must be.*'never'"):
    measurement.StreamingMeasurement(model, host_scatter="never")


@pytest.mark.parametrize("direct_blas", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_scatter_matches_full_product(dtype, direct_blas):
  rng = np.random.default_rng(0)
  steps = [[rng.normal(size=(7, 300)), rng.normal(size=(0, 300))],
           [rng.normal(size=(12, 300))],
           [rng.normal(size=(1, 300)), rng.normal(size=(5, 300))]]
  scatter = measurement._HostScatter([4, 300], [dtype, dtype], fold_steps=2,
                                     direct_blas=direct_blas)

  for parts in steps:
    scatter.add(1, [part.astype(dtype) for part in parts])
  scatter.add(0, [np.ones((3, 4), dtype)])
  total = scatter.result(1)

  features = np.concatenate([part.astype(dtype) for parts in steps
                             for part in parts]).astype(np.float64)
  rtol = 1e-5 if dtype == np.float32 else 1e-12
  np.testing.assert_allclose(total, features.T @ features, rtol=rtol,
                             atol=rtol)
  np.testing.assert_array_equal(total, total.T)
  np.testing.assert_array_equal(scatter.result(0), np.full((4, 4), 3.0))


def _numpy_blas_is_openblas():
  return any(info.get("internal_api") == "openblas"
             for info in threadpoolctl.threadpool_info())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_syrk_adds_upper_triangle(dtype):
  if not _numpy_blas_is_openblas():
    pytest.skip("No OpenBLAS is loaded, so the direct syrk is not used.")
  syrk = measurement._blas_syrk(np.dtype(dtype))
  rng = np.random.default_rng(1)
  part = rng.normal(size=(50, 40)).astype(dtype)
  start = rng.normal(size=(40, 40)).astype(dtype)
  total = start.copy()

  syrk(part, total)

  expected = start.astype(np.float64) + part.T.astype(np.float64) @ part
  upper = np.triu_indices(40)
  lower = np.tril_indices(40, -1)
  rtol = 1e-5 if dtype == np.float32 else 1e-12
  np.testing.assert_allclose(total[upper], expected[upper], rtol=rtol,
                             atol=rtol)
  np.testing.assert_array_equal(total[lower], start[lower])


def test_direct_syrk_rejects_mismatched_arrays():
  if not _numpy_blas_is_openblas():
    pytest.skip("No OpenBLAS is loaded, so the direct syrk is not used.")
  syrk = measurement._blas_syrk(np.dtype(np.float32))

  with pytest.raises(ValueError, match=r"\(6, 5\) float64"):
    syrk(np.ones((6, 5)), np.zeros((5, 5), np.float32))
  with pytest.raises(ValueError, match="C-contiguous"):
    syrk(np.ones((5, 6), np.float32).T, np.zeros((5, 5), np.float32))
  with pytest.raises(ValueError, match=r"\(4, 4\) float32"):
    syrk(np.ones((6, 5), np.float32), np.zeros((4, 4), np.float32))


def test_no_direct_syrk_for_other_dtypes():
  assert measurement._blas_syrk(np.dtype(np.float16)) is None


@pytest.mark.parametrize("dim", [1, 100, 255, 256, 784, 1024, 4096])
def test_triangle_blocks_partition(dim):
  ranges = measurement.triangle_blocks(dim)

  assert ranges[0][0] == 0
  assert ranges[-1][1] == dim
  for (_, stop), (start, _) in zip(ranges, ranges[1:]):
    assert stop == start
  assert len(ranges) <= measurement.SCATTER_MAX_BLOCKS
  if dim >= 2 * measurement.SCATTER_BLOCK_MIN_WIDTH:
    assert len(ranges) > 1


def test_assemble_symmetric_matches_full_product():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(40, 300))
  ranges = measurement.triangle_blocks(300, min_width=64)
  blocks = [features[:, start:stop].T @ features[:, start:]
            for start, stop in ranges]

  assembled = measurement.assemble_symmetric(blocks, ranges)

  assert len(ranges) == 4
  np.testing.assert_allclose(assembled, features.T @ features, rtol=1e-12)
  np.testing.assert_array_equal(assembled, assembled.T)


@pytest.mark.parametrize("host_scatter", [True, False])
def test_blocked_scatter_over_chunks_matches_arrays(monkeypatch, host_scatter):
  # A 300-wide point splits into 4 scatter blocks on the replicas, and
  # one-step chunks (of 4 batches) make the pass fold its float32 sums into
  # float64 several times, on the host too.
  monkeypatch.setattr(measurement, "SCATTER_BLOCK_MIN_WIDTH", 64)
  monkeypatch.setattr(measurement, "FOLD_BATCHES", 2)
  keras.utils.set_random_seed(0)
  inputs = keras.Input((300,))
  features = keras.layers.Dense(300, activation="relu", name="dense_1")(inputs)
  logits = keras.layers.Dense(NUM_CLASSES, name="classifier")(features)
  model = keras.Model(inputs, logits)
  images, labels = make_data((300,), num_samples=230, offset=50.0)

  results = measurement.measure(model, batches(images, labels, batch_size=16),
                                host_scatter=host_scatter)

  expected = array_metrics(model, images, labels)
  for streamed, reference in zip(results["train"], expected):
    assert streamed["feature_stable_rank"] is not None
    assert_results_match(streamed, reference, rtol=1e-4)


@pytest.mark.parametrize("batch_rows, row_bytes, group", [
    (1, 4, 4), (100, 4, 4), (128, 4, 4), (256, 4, 2), (300, 4, 1),
    (512, 4, 1), (1000, 4, 1),
    # 64 MiB of features hold 2 batches of 128 rows of 256 KiB, and not one
    # batch of 512 KiB rows.
    (128, 2**18, 2), (128, 2**19, 1), (128, 2**22, 1)])
def test_batch_group(batch_rows, row_bytes, group):
  assert measurement.batch_group(batch_rows, row_bytes) == group


@pytest.mark.parametrize("max_group", [1, 4])
def test_batch_groups_match_arrays(monkeypatch, max_group):
  # In groups of 4, 230 samples in batches of 16 leave a last group of 38
  # rows, and 70 test samples in batches of 16 a last group of 6.
  monkeypatch.setattr(measurement, "MAX_GROUP", max_group)
  keras.utils.set_random_seed(0)
  # ReLU only: XLA's tanh differs from the reference's by enough to move
  # nc1 of a barely separated point by 2e-4.
  inputs = keras.Input((6,))
  features = keras.layers.Dense(16, activation="relu", name="dense_1")(inputs)
  features = keras.layers.Dense(12, activation="relu", name="dense_2")(
      features)
  logits = keras.layers.Dense(NUM_CLASSES, name="classifier")(features)
  model = keras.Model(inputs, logits)
  images, labels = make_data((6,), num_samples=300, offset=50.0)
  train_images, train_labels = images[:230], labels[:230]
  test_images, test_labels = images[230:], labels[230:]

  results = measurement.measure(
      model, batches(train_images, train_labels, batch_size=16),
      batches(test_images, test_labels, batch_size=16))

  expected = array_metrics(model, train_images, train_labels)
  assert results["train"][0]["num_samples"] == 230
  for streamed, reference in zip(results["train"], expected):
    assert_results_match(streamed, reference, rtol=1e-4)
  expected_test = array_metrics(
      model, test_images, test_labels,
      train_means=class_means(model, train_images, train_labels))
  assert results["test"][0]["num_samples"] == 70
  for streamed, reference in zip(results["test"], expected_test):
    assert_results_match(streamed, {
        k: v for k, v in reference.items() if k in streamed}, rtol=1e-4)


def test_two_replicas_one_sample_batch(two_replicas, one_replica):
  # The last batch has one sample, so the second replica gets no rows.
  images, labels = make_data((6,), num_samples=203, offset=50.0)
  with two_replicas.scope():
    keras.utils.set_random_seed(0)
    model = tiny_mlp()

  two = measurement.measure(model, batches(images, labels, batch_size=101),
                            strategy=two_replicas)
  one = measurement.measure(model, batches(images, labels, batch_size=101),
                            strategy=one_replica)

  # Both are held to the float64 reference: the one-replica step runs under
  # XLA, whose tanh differs slightly, so they may differ by twice the
  # tolerance from each other.
  expected = array_metrics(model, images, labels)
  assert two["train"][0]["num_samples"] == 203
  for replicated, single, reference in zip(two["train"], one["train"],
                                           expected):
    assert_results_match(replicated, reference, rtol=1e-4)
    assert_results_match(single, reference, rtol=1e-4)


def test_accelerator_host_thread_matches_idle_pool(monkeypatch):
  keras.utils.set_random_seed(0)
  model = tiny_mlp()
  images, labels = make_data((6,))
  test_images, test_labels = make_data((6,), num_samples=90, seed=1)
  idle_pool = measurement.measure(model, batches(images, labels),
                                  batches(test_images, test_labels),
                                  host_scatter=True)

  monkeypatch.setattr(measurement, "runs_on_accelerators",
                      lambda strategy: True)
  one_thread = measurement.measure(model, batches(images, labels),
                                   batches(test_images, test_labels),
                                   host_scatter=True)

  assert one_thread == idle_pool


def test_idle_pool_spectra_match_one_by_one():
  rng = np.random.default_rng(0)
  kernels = [rng.normal(size=(40, 30)), rng.normal(size=(30, 10)),
             rng.normal(size=(10, 10))]

  with measurement._host_executor(accelerated=False) as pool:  # pylint: disable=protected-access
    futures = [pool.submit(metrics.dense_kernel_spectrum, kernel, 3)
               for kernel in kernels]
    spectra = [pool.result(future) for future in futures]

  for kernel, spectrum in zip(kernels, spectra):
    # One BLAS thread sums in another order than several.
    for pooled, alone in zip(spectrum,
                             metrics.dense_kernel_spectrum(kernel, 3)):
      np.testing.assert_allclose(np.abs(pooled), np.abs(alone),
                                 rtol=1e-10, atol=1e-12)


def test_host_pool_runs_unstarted_task_in_caller():
  release = threading.Event()
  with measurement._HostPool(workers=1, idle=True) as pool:  # pylint: disable=protected-access
    blocker = pool.submit(release.wait, 60)
    queued = pool.submit(threading.get_ident)

    assert pool.result(queued) == threading.get_ident()
    release.set()
    assert pool.result(blocker)


def test_host_pool_runs_starved_task_in_caller():
  # A sleeping thread uses no CPU time, like a starved idle thread.
  release = threading.Event()
  calls = []

  def slow_identity(value):
    calls.append(threading.get_ident())
    if len(calls) == 1:
      release.wait(60)
    return value

  with measurement._HostPool(workers=1, idle=True) as pool:  # pylint: disable=protected-access
    future = pool.submit(slow_identity, 7)
    while not calls:
      time.sleep(0.01)

    assert pool.result(future) == 7
    assert calls[-1] == threading.get_ident()
    assert not future.done()
    release.set()


def test_host_pool_waits_for_busy_thread(monkeypatch):
  def spin_then_identify(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
      pass
    return threading.get_ident()

  # At normal priority other processes cannot starve the pool thread, so
  # the starvation check must find it busy.
  monkeypatch.setattr(measurement, "_lower_thread_priority", lambda: None)
  with measurement._HostPool(workers=1, idle=True) as pool:  # pylint: disable=protected-access
    future = pool.submit(spin_then_identify, 3 * measurement.STARVED_CHECK_SECONDS)
    time.sleep(0.05)

    assert pool.result(future) != threading.get_ident()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux only")
def test_host_pool_releases_arguments_after_result():
  class Payload:
    pass

  payload = Payload()
  reference = weakref.ref(payload)
  with measurement._HostPool(workers=1, idle=False) as pool:  # pylint: disable=protected-access
    future = pool.submit(lambda value: 1, payload)
    assert pool.result(future) == 1
    del payload, future
    gc.collect()

    assert reference() is None


def test_idle_pool_priority_and_blas_threads():
  blas_before = [info["num_threads"]
                 for info in threadpoolctl.threadpool_info()]

  with measurement._host_executor(accelerated=False) as pool:  # pylint: disable=protected-access
    policy = pool.result(pool.submit(os.sched_getscheduler, 0))
    blas_inside = [info["num_threads"]
                   for info in threadpoolctl.threadpool_info()]

  assert policy == os.SCHED_IDLE
  assert os.sched_getscheduler(0) != os.SCHED_IDLE
  assert set(blas_inside) == {1}
  assert [info["num_threads"]
          for info in threadpoolctl.threadpool_info()] == blas_before


def test_cpu_replicas_are_not_accelerators(two_replicas):
  assert not measurement.runs_on_accelerators(two_replicas)
