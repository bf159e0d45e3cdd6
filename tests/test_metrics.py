"""Tests of inc_tf.metrics against a float64 reference written from the definitions.

The reference below holds all features in memory and builds every matrix
(`Sigma_W`, `Sigma_B`, `Y H^T`, ...) literally; it does not call the module
under test.
"""

import itertools
import json

import numpy as np
import pytest
import scipy.linalg

from inc_tf import metrics


def reference_metrics(features, labels, num_classes, kernel=None,
                      predictions=None, conv=False):
  """Compute the metrics from the definitions, all in float64, present classes only."""
  h = np.asarray(features, dtype=np.float64)
  feature_shape = h.shape[1:]
  h = h.reshape(h.shape[0], -1)
  n, p = h.shape
  present = [c for c in range(num_classes) if np.any(labels == c)]
  num_present = len(present)
  means = np.stack([h[labels == c].mean(axis=0) for c in present])
  global_mean = means.mean(axis=0)
  centred_means = means - global_mean

  sigma_w = np.zeros((p, p))
  for c_index, c in enumerate(present):
    diff = h[labels == c] - means[c_index]
    sigma_w += diff.T @ diff
  sigma_w /= n
  sigma_b = centred_means.T @ centred_means / num_present
  out = {}
  out["trace_within"] = np.trace(sigma_w)
  out["trace_between"] = np.trace(sigma_b)
  out["trace_total"] = np.trace(sigma_w + sigma_b)
  out["within_fraction"] = out["trace_within"] / out["trace_total"]
  out["between_fraction"] = out["trace_between"] / out["trace_total"]

  eigenvalues, eigenvectors = np.linalg.eigh(sigma_b)
  order = np.argsort(eigenvalues)[::-1][:num_present - 1]
  kept = [i for i in order if eigenvalues[i] > 1e-10 * eigenvalues[order[0]]]
  pinv = sum(np.outer(eigenvectors[:, i], eigenvectors[:, i]) / eigenvalues[i]
             for i in kept)
  out["nc1"] = np.trace(sigma_w @ pinv) / num_present

  ratios = []
  for a, b in itertools.combinations(range(num_present), 2):
    s_a = np.mean(np.sum((h[labels == present[a]] - means[a])**2, axis=1))
    s_b = np.mean(np.sum((h[labels == present[b]] - means[b])**2, axis=1))
    ratios.append((s_a + s_b) / (2 * np.sum((means[a] - means[b])**2)))
  out["cdnv"] = np.mean(ratios)

  norms = np.linalg.norm(centred_means, axis=1)
  out["equinorm"] = np.std(norms) / np.mean(norms)
  cosines = [centred_means[a] @ centred_means[b] / (norms[a] * norms[b])
             for a, b in itertools.combinations(range(num_present), 2)]
  out["equiangularity"] = np.std(cosines)
  out["max_angle"] = np.mean(np.abs(np.array(cosines) + 1 / (num_present - 1)))
  gram = centred_means @ centred_means.T
  etf = np.eye(num_present) - np.ones((num_present, num_present)) / num_present
  out["etf_distance"] = np.linalg.norm(
      gram / np.linalg.norm(gram) - etf / np.linalg.norm(etf))

  if kernel is not None:
    kernel = np.asarray(kernel, dtype=np.float64)
    if conv:
      kh, kw, c_in, c_out = kernel.shape
      columns = [centred_means[i].reshape(-1, c_in).T
                 for i in range(num_present)]
      m_matrix = np.concatenate(columns, axis=1)
      w_in = np.concatenate(
          [kernel[i, j] for i in range(kh) for j in range(kw)], axis=1)
      k = min(num_present - 1, c_in, w_in.shape[1], m_matrix.shape[1])
      u_m = np.linalg.svd(m_matrix)[0][:, :k]
      u_w = np.linalg.svd(w_in)[0][:, :k]
      w = np.stack([kernel[:, :, :, o].ravel() for o in range(c_out)])
    else:
      w = kernel.T
      k = min(num_present - 1, w.shape[0], w.shape[1])
      u_m = np.linalg.svd(centred_means.T)[0][:, :k]
      u_w = np.linalg.svd(w)[2][:k].T
    angles = scipy.linalg.subspace_angles(u_m, u_w)
    out["alignment"] = np.mean(np.cos(angles))
    sv = np.linalg.svd(w, compute_uv=False)
    top = sv[:min(num_classes - 1, len(sv))]
    out["weight_top_sv_cv"] = np.std(top) / np.mean(top)
    out["weight_stable_rank"] = np.sum(sv**2) / sv[0]**2
    out["weight_singular_values"] = list(sv[:64] / np.sum(sv))
    if not conv and kernel.shape[1] == num_classes:
      w_present = w[present]
      out["self_duality"] = np.linalg.norm(
          w_present.T / np.linalg.norm(w_present)
          - centred_means.T / np.linalg.norm(centred_means))
      one_hot = np.eye(num_classes)[labels][:, present]
      memory = one_hot.T @ (h - global_mean)
      out["am_alignment"] = np.sum(w_present * memory) / (
          np.linalg.norm(w_present) * np.linalg.norm(memory))

  nearest = np.array([
      present[np.argmin([np.linalg.norm(x - mu) for mu in means])] for x in h])
  out["ncc_accuracy"] = np.mean(nearest == labels)
  if predictions is not None:
    out["ncc_agreement"] = np.mean(nearest == predictions)
  out["feature_stable_rank"] = out["trace_within"] / np.linalg.eigvalsh(
      sigma_w)[-1]
  del feature_shape
  return out


def assert_matches(result, expected, rtol):
  for key, value in expected.items():
    assert key in result, key
    # atol covers values that are zero up to round-off, like max_angle of
    # two classes.
    np.testing.assert_allclose(result[key], value, rtol=rtol, atol=1e-12,
                               err_msg=key)


def make_features(num_samples=240, dim=12, num_classes=4, spread=3.0, seed=0,
                  dtype=np.float64):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=num_samples)
  centres = spread * rng.normal(size=(num_classes, dim))
  scales = np.linspace(0.3, 1.5, dim)
  features = centres[labels] + rng.normal(size=(num_samples, dim)) * scales
  return features.astype(dtype), labels


def simplex_etf(num_classes, dim, scale=1.0):
  """Return `(C, dim)` centred class means forming a simplex ETF."""
  etf = np.eye(num_classes) - 1.0 / num_classes
  rotation = np.linalg.qr(np.random.default_rng(3).normal(
      size=(dim, num_classes)))[0]
  return scale * etf @ rotation.T


@pytest.mark.parametrize("dtype,offset,rtol", [
    (np.float64, 0.0, 1e-6),
    (np.float64, 1e4, 1e-6),
    (np.float32, 0.0, 1e-4),
    (np.float32, 1e4, 1e-4),
])
def test_dense_matches_reference(dtype, offset, rtol):
  features, labels = make_features()
  features = (features + offset).astype(dtype)
  kernel = np.random.default_rng(1).normal(size=(12, 4))
  predictions = np.random.default_rng(2).integers(0, 4, size=len(labels))

  result = metrics.layer_metrics(features, labels, 4, kernel=kernel,
                                 predictions=predictions)

  expected = reference_metrics(features, labels, 4, kernel, predictions)
  assert_matches(result, expected, rtol)
  assert tuple(k for k in result if k in metrics.METRIC_KEYS) == (
      metrics.METRIC_KEYS)


def test_hidden_dense_has_no_classifier_keys():
  features, labels = make_features()
  kernel = np.random.default_rng(1).normal(size=(12, 7))

  result = metrics.layer_metrics(features, labels, 4, kernel=kernel)

  assert_matches(result, reference_metrics(features, labels, 4, kernel), 1e-6)
  assert "self_duality" not in result
  assert "am_alignment" not in result


def test_conv_matches_reference():
  rng = np.random.default_rng(4)
  labels = np.arange(90) % 5
  centres = rng.normal(size=(5, 4, 4, 6))
  features = centres[labels] + 0.7 * rng.normal(size=(90, 4, 4, 6))
  kernel = rng.normal(size=(3, 3, 6, 8))

  result = metrics.layer_metrics(features, labels, 5, kernel=kernel)

  expected = reference_metrics(features, labels, 5, kernel, conv=True)
  assert_matches(result, expected, 1e-6)
  assert "self_duality" not in result


def test_without_kernel_leaves_out_weight_keys():
  features, labels = make_features()

  result = metrics.layer_metrics(features, labels, 4)

  for key in ("alignment", "weight_top_sv_cv", "weight_stable_rank",
              "weight_singular_values", "self_duality", "am_alignment",
              "ncc_agreement"):
    assert key not in result, key
  assert "ncc_accuracy" in result


def test_etf_without_noise_is_collapsed():
  num_classes, dim = 5, 9
  means = simplex_etf(num_classes, dim) + 7.0
  labels = np.repeat(np.arange(num_classes), 4)
  features = means[labels]

  result = metrics.layer_metrics(features, labels, num_classes)

  for key in ("trace_within", "within_fraction", "nc1", "cdnv", "equinorm",
              "equiangularity", "max_angle", "etf_distance"):
    assert result[key] == pytest.approx(0.0, abs=1e-12), key
  assert result["between_fraction"] == pytest.approx(1.0)
  assert result["ncc_accuracy"] == 1.0
  assert result["feature_stable_rank"] is None


def test_etf_with_isotropic_noise():
  num_classes, dim, sigma = 4, 6, 0.1
  rng = np.random.default_rng(5)
  means = simplex_etf(num_classes, dim, scale=2.0)
  labels = np.repeat(np.arange(num_classes), 5000)
  features = means[labels] + sigma * rng.normal(size=(len(labels), dim))

  result = metrics.layer_metrics(features, labels, num_classes)

  # Tr Sigma_B of an ETF with scale s: C rows of norm^2 s^2 (C-1)/C, over C.
  assert result["trace_between"] == pytest.approx(4.0 * 3 / 4, rel=1e-2)
  assert result["trace_within"] == pytest.approx(dim * sigma**2, rel=0.02)
  assert result["feature_stable_rank"] == pytest.approx(dim, rel=0.1)
  assert result["equiangularity"] < 0.01
  assert result["etf_distance"] < 0.01


def test_missing_class_is_reported_and_left_out():
  features, labels = make_features(num_classes=4)
  keep = labels != 2
  features, labels = features[keep], labels[keep]
  kernel = np.random.default_rng(1).normal(size=(12, 4))

  result = metrics.layer_metrics(features, labels, 4, kernel=kernel)

  assert result["missing_classes"] == [2]
  assert result["classes_present"] == 3
  assert_matches(result, reference_metrics(features, labels, 4, kernel), 1e-6)


def test_layer_narrower_than_classes():
  features, labels = make_features(dim=2, num_classes=6, num_samples=300)
  kernel = np.random.default_rng(1).normal(size=(2, 6))

  result = metrics.layer_metrics(features, labels, 6, kernel=kernel)

  assert_matches(result, reference_metrics(features, labels, 6, kernel), 1e-6)
  assert result["nc1"] >= 0


def test_dead_layer_gives_none_not_nan():
  labels = np.arange(30) % 3
  features = np.zeros((30, 5), dtype=np.float32)
  kernel = np.ones((5, 3))

  result = metrics.layer_metrics(features, labels, 3, kernel=kernel,
                                 predictions=labels)

  assert result["trace_total"] == 0.0
  for key in ("within_fraction", "between_fraction", "nc1", "cdnv",
              "equinorm", "equiangularity", "max_angle", "etf_distance",
              "alignment", "self_duality", "am_alignment",
              "feature_stable_rank"):
    assert result[key] is None, key
  assert "NaN" not in json.dumps(result)


def test_two_classes():
  features, labels = make_features(num_classes=2)
  kernel = np.random.default_rng(1).normal(size=(12, 2))

  result = metrics.layer_metrics(features, labels, 2, kernel=kernel)

  assert_matches(result, reference_metrics(features, labels, 2, kernel), 1e-6)
  assert result["equiangularity"] == 0.0
  assert result["max_angle"] == pytest.approx(0.0, abs=1e-12)


def test_fewer_samples_than_dimensions():
  features, labels = make_features(num_samples=20, dim=50, num_classes=4)
  kernel = np.random.default_rng(1).normal(size=(50, 4))

  result = metrics.layer_metrics(features, labels, 4, kernel=kernel)

  assert_matches(result, reference_metrics(features, labels, 4, kernel), 1e-6)


def test_low_rank_between_in_float32():
  # Four class means on one line: Sigma_B has rank 1 up to float32 round-off.
  rng = np.random.default_rng(6)
  labels = np.arange(400) % 4
  direction = rng.normal(size=8)
  features = (np.arange(4)[labels, None] * direction + 1e3
              + 0.5 * rng.normal(size=(400, 8))).astype(np.float32)

  result = metrics.layer_metrics(features, labels, 4)

  expected = reference_metrics(features, labels, 4)
  assert result["nc1"] >= 0
  assert result["nc1"] == pytest.approx(expected["nc1"], rel=1e-4)


def test_wide_path_matches_exact_path():
  features, labels = make_features(num_samples=400, dim=40, num_classes=4)
  kernel = np.random.default_rng(1).normal(size=(40, 4))

  exact = metrics.layer_metrics(features, labels, 4, kernel=kernel)
  # Three Krylov blocks of 18 columns span all 40 dimensions, so the
  # lambda_max estimate is exact here.
  wide = metrics.layer_metrics(features, labels, 4, kernel=kernel,
                               max_covariance_dim=8, lambda_max_passes=1)

  assert set(wide) == set(exact)
  for key in exact:
    if key != "feature_stable_rank":
      np.testing.assert_allclose(wide[key], exact[key], rtol=1e-10,
                                 err_msg=key)
  assert wide["feature_stable_rank"] == pytest.approx(
      exact["feature_stable_rank"], rel=1e-8)


@pytest.mark.parametrize("decay,passes,rtol", [
    (1.0, 0, 1e-3),
    (0.5, 0, 3e-2),
    (0.5, 2, 1e-4),
    (0.0, 3, 5e-2),
])
def test_wide_lambda_max_accuracy(decay, passes, rtol):
  # Within-class spectrum i^-decay in 600 dimensions; decay 0 is the flat
  # Marchenko-Pastur case, the hardest for a few Krylov blocks.
  rng = np.random.default_rng(7)
  dim, num_samples = 600, 1200
  labels = np.arange(num_samples) % 3
  scales = np.arange(1, dim + 1)**(-decay / 2)
  features = rng.normal(size=(num_samples, dim)) * scales + 5 * np.eye(
      3, dim)[labels]

  exact = metrics.layer_metrics(features, labels, 3)
  wide = metrics.layer_metrics(features, labels, 3, max_covariance_dim=100,
                               lambda_max_passes=passes)

  # A lower bound on lambda_max gives an upper bound on the stable rank.
  assert wide["feature_stable_rank"] >= exact["feature_stable_rank"] * (
      1 - 1e-9)
  assert wide["feature_stable_rank"] == pytest.approx(
      exact["feature_stable_rank"], rel=rtol)


def test_train_means_drive_ncc():
  labels = np.array([0, 0, 1, 1])
  features = np.array([[0.0], [0.2], [1.0], [1.2]])
  # Class 0's training mean sits far right, so every sample is nearest to it
  # except none: class 1's mean at 0.1 wins for all four.
  train_means = np.array([[5.0], [0.1]])

  result = metrics.layer_metrics(features, labels, 2,
                                 predictions=np.array([1, 1, 1, 0]),
                                 train_means=train_means)

  assert result["ncc_accuracy"] == 0.5
  assert result["ncc_agreement"] == 0.75


def test_train_means_nan_row_is_never_predicted():
  labels = np.array([0, 1, 1])
  features = np.array([[0.0], [1.0], [1.1]])
  train_means = np.array([[0.0], [np.nan]])

  result = metrics.layer_metrics(features, labels, 2, train_means=train_means)

  assert result["ncc_accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("case,match", [
    ("features_3d", "features must be"),
    ("length_mismatch", "labels must have shape"),
    ("label_out_of_range", "must lie in"),
    ("float_labels", "integer class ids"),
    ("dense_mismatch", "Dense kernel"),
    ("conv_channel_mismatch", "Conv2D kernel"),
    ("conv_kernel_flat_features", "Conv2D kernel"),
    ("nan_features", "NaN"),
    ("one_class", "num_classes"),
    ("bad_train_means", "train_means"),
])
def test_layer_metrics_rejects(case, match):
  features = np.zeros((6, 4))
  labels = np.array([0, 1, 2, 0, 1, 2])
  kwargs = {}
  num_classes = 3
  if case == "features_3d":
    features = np.zeros((6, 2, 2))
  elif case == "length_mismatch":
    labels = labels[:5]
  elif case == "label_out_of_range":
    labels = np.array([0, 1, 3, 0, 1, 2])
  elif case == "float_labels":
    labels = labels.astype(np.float32)
  elif case == "dense_mismatch":
    kwargs["kernel"] = np.zeros((5, 3))
  elif case == "conv_channel_mismatch":
    features = np.zeros((6, 2, 2, 4))
    kwargs["kernel"] = np.zeros((3, 3, 5, 8))
  elif case == "conv_kernel_flat_features":
    kwargs["kernel"] = np.zeros((3, 3, 4, 8))
  elif case == "nan_features":
    features[2, 1] = np.nan
  elif case == "one_class":
    num_classes = 1
  elif case == "bad_train_means":
    kwargs["train_means"] = np.zeros((3, 5))

  with pytest.raises(ValueError, match=match):
    metrics.layer_metrics(features, labels, num_classes, **kwargs)


@pytest.mark.parametrize("fractions,onset", [
    ([0.9, 0.8, 0.5], None),
    ([0.9, 0.8, 0.1], 2),
    ([0.9, 0.1, 0.5, 0.1, 0.05], 3),
    ([0.1, 0.1, 0.1], 0),
    ([0.1, None, 0.1], 2),
    ([0.1, 0.1, None], None),
    ([], None),
])
def test_collapse_onset(fractions, onset):
  assert metrics.collapse_onset(fractions) == onset


def test_collapse_onset_epsilon():
  assert metrics.collapse_onset([0.5, 0.3, 0.25], epsilon=0.4) == 1


def test_descriptions_cover_keys():
  assert set(metrics.METRIC_DESCRIPTIONS) == set(metrics.METRIC_KEYS)
  assert set(metrics.TEST_SPLIT_KEYS) <= set(metrics.METRIC_KEYS)


@pytest.mark.parametrize("rows, cols", [(300, 400), (400, 300), (100, 120)])
def test_dense_kernel_spectrum_matches_svd(rows, cols):
  kernel = np.random.default_rng(0).normal(size=(rows, cols))

  singular_values, left = metrics.dense_kernel_spectrum(kernel, 9)

  left_svd, singular_values_svd, _ = np.linalg.svd(kernel, full_matrices=False)
  assert left.shape == (rows, 9)
  np.testing.assert_allclose(singular_values, singular_values_svd, rtol=1e-10)
  cosines = np.linalg.svd(left_svd[:, :9].T @ left, compute_uv=False)
  np.testing.assert_allclose(cosines, 1.0, atol=1e-10)


def test_kernel_spectrum_equal_top_values():
  # The top 9 singular values are nearly equal, as for an ETF layer, so only
  # the span of their vectors is well determined.
  rng = np.random.default_rng(0)
  basis, _ = np.linalg.qr(rng.normal(size=(300, 9)))
  kernel = np.zeros((300, 320))
  kernel[:, :9] = 3.0 * basis
  kernel += 1e-3 * rng.normal(size=kernel.shape)

  singular_values, left = metrics.dense_kernel_spectrum(kernel, 9)

  left_svd, exact, _ = np.linalg.svd(kernel, full_matrices=False)
  np.testing.assert_allclose(singular_values, exact, rtol=1e-9, atol=1e-12)
  cosines = np.linalg.svd(left_svd[:, :9].T @ left, compute_uv=False)
  np.testing.assert_allclose(cosines, 1.0, atol=1e-10)


@pytest.mark.parametrize("dim", [100, 400])
def test_largest_eigenvalue_small_gap(dim):
  # 400 is above EIGH_MAX_DIM, so Lanczos runs. A second eigenvalue only
  # 1e-4 (relative) below the first makes it converge slowly.
  rng = np.random.default_rng(0)
  basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  eigenvalues = np.concatenate(
      [[10.0, 10.0 - 1e-3], rng.uniform(0.0, 9.0, dim - 2)])
  matrix = (basis * eigenvalues) @ basis.T

  assert metrics._largest_eigenvalue(matrix) == pytest.approx(10.0, rel=1e-12)


def test_dense_kernel_spectrum_of_low_rank():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 400))

  singular_values, _ = metrics.dense_kernel_spectrum(kernel, 9)

  exact = np.linalg.svd(kernel, compute_uv=False)
  np.testing.assert_allclose(singular_values[:5], exact[:5], rtol=1e-10)
  # A zero singular value comes back as at most sqrt(eps) * sigma_1.
  assert np.all(singular_values[5:] < 1e-7 * exact[0])
  assert np.sum(singular_values) == pytest.approx(np.sum(exact), rel=1e-6)
