"""Collapse metrics of one probe point, from arrays or from streamed statistics.

Notation for one probe point and one split: `C` present classes, `n_c`
samples of class c, `N = sum n_c`, `mu_c` the class means, `mu_G` the mean of
the class means (not the sample mean), `M` the `p x C` matrix of centred class
means `mu_c - mu_G`, `Sigma_W` the population within-class covariance and
`Sigma_B = M M^T / C`. Conv features `(H, W, C_in)` are flattened to
`p = H*W*C_in` in row-major order except for the NC3 alignment.

Every metric goes through `finalize`, which needs only `ClassStats`: class
counts and means, per-class within sums of squares, and either the within
scatter matrix (`p <= max_covariance_dim`) or its projection on the span of
`M` plus an estimate of its largest eigenvalue. `layer_metrics` fills
`ClassStats` from arrays held in memory; `inc_tf.measurement` fills it from
batches streamed over a `tf.data` pipeline. Both use float64 throughout.

Conventions where a metric is undefined:

- A key whose inputs were not given is absent from the result (no kernel: no
  `alignment` and no weight keys; no predictions: no `ncc_agreement`).
- A ratio whose denominator is exactly zero is `None` (JSON `null`), for
  example `within_fraction` of a layer whose features are all equal, or
  `cdnv` when two class means coincide.
- Classes with no sample are left out of every class-wise statistic, and `C`
  in the formulas is the number of present classes. The result lists them in
  `missing_classes` and counts the others in `classes_present`. Metrics of
  the weight alone (`weight_*`) use the model's `num_classes`.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

METRIC_KEYS = (
    "trace_within",
    "trace_between",
    "trace_total",
    "within_fraction",
    "between_fraction",
    "nc1",
    "cdnv",
    "equinorm",
    "equiangularity",
    "max_angle",
    "etf_distance",
    "alignment",
    "weight_top_sv_cv",
    "self_duality",
    "am_alignment",
    "ncc_agreement",
    "ncc_accuracy",
    "feature_stable_rank",
    "weight_stable_rank",
    "weight_singular_values",
)

# Keys `inc_tf.measurement.measure` reports for the test split: everything that
# one pass can give from class sums and within sums of squares, plus NC4
# against the training-split class means.
TEST_SPLIT_KEYS = (
    "trace_within",
    "trace_between",
    "trace_total",
    "within_fraction",
    "between_fraction",
    "cdnv",
    "equinorm",
    "equiangularity",
    "max_angle",
    "etf_distance",
    "ncc_agreement",
    "ncc_accuracy",
)

# Bookkeeping keys present in every result next to the metric keys.
COUNT_KEYS = ("num_samples", "classes_present", "missing_classes")

METRIC_DESCRIPTIONS = {
    "trace_within": "Tr Sigma_W, the within-class variance (NC1).",
    "trace_between": "Tr Sigma_B, the variance of the class means (NC1).",
    "trace_total": "Tr Sigma_W + Tr Sigma_B.",
    "within_fraction": "Tr Sigma_W / total trace; near 0 means collapsed (NC1).",
    "between_fraction": "Tr Sigma_B / total trace (NC1).",
    "nc1": "Tr(Sigma_W Sigma_B^+) / C, the original NC1 measure.",
    "cdnv": "Mean over class pairs of (s_c + s_c') / (2 ||mu_c - mu_c'||^2).",
    "equinorm": "Std / mean of the centred class-mean norms (NC2).",
    "equiangularity": "Std of the pairwise cosines of centred class means (NC2).",
    "max_angle": "Mean |cos + 1/(C-1)| over class pairs (NC2).",
    "etf_distance": "Frobenius distance of the normalised mean Gram to a simplex ETF (NC2).",
    "alignment": "Mean cosine of principal angles, class means vs weight (NC3).",
    "weight_top_sv_cv": "Std / mean of the top C-1 singular values of W (NC3).",
    "self_duality": "|| W^T/||W|| - M/||M|| ||_F at the classifier (NC3).",
    "am_alignment": "Cosine between W and the associative memory Y H^T.",
    "ncc_agreement": "Fraction where the nearest class mean equals the network's class (NC4).",
    "ncc_accuracy": "Fraction where the nearest class mean equals the label (NC4).",
    "feature_stable_rank": "Tr Sigma_W / lambda_max(Sigma_W).",
    "weight_stable_rank": "sum sigma_i^2 / sigma_1^2 of W.",
    "weight_singular_values": "Top 64 singular values of W over their total sum.",
}

# Eigenvalues of Sigma_B at or below this fraction of its largest one are
# treated as zero by the pseudo-inverse in `nc1`.
PINV_RTOL = 1e-10

NUM_REPORTED_SINGULAR_VALUES = 64

DEFAULT_MAX_COVARIANCE_DIM = 4096

# Largest scatter size whose lambda_max comes from LAPACK rather than ARPACK.
# LAPACK's cost is the O(p^3) tridiagonalisation, while ARPACK needs a few
# dozen products with the matrix. For a 1024 x 1024 scatter on a shared
# 2-core CPU, ARPACK took 11 ms and LAPACK 129 ms (bench/host_linalg.py).
EIGH_MAX_DIM = 256

# Relative residual `||S v - theta v|| / theta` at which ARPACK stops. The
# error of the largest eigenvalue is about the residual squared over the
# spectral gap. So it is exact to machine precision unless the gap is below
# 1e-6 of lambda_max, and within 1e-10 (relative) otherwise.
LANCZOS_TOL = 1e-10

# Dense kernels with at least this many rows (and no more rows than columns)
# get their spectrum from the Gram matrix; smaller ones use the SVD, which is
# cheap at that size.
GRAM_SPECTRUM_MIN_DIM = 256

# Seed of the Gaussian start block of the block Krylov lambda_max estimate, so
# that two runs over the same features give the same estimate.
SKETCH_SEED = 0


@dataclasses.dataclass
class ClassStats:
  """Sufficient statistics of one probe point over one split.

  Rows of absent classes (`counts == 0`) are ignored. All arrays are float64
  except `counts`.

  Attributes:
    counts: `(num_classes,)` int64, samples per class.
    means: `(num_classes, p)` class means.
    within_ss: `(num_classes,)`, `sum_{i in c} ||h_i - mu_c||^2`.
    feature_shape: Shape of one feature vector before flattening, `(p,)` or
      `(H, W, C_in)`.
    scatter: `(p, p)` within-class scatter `N * Sigma_W`, or None where `p`
      is too large to hold it.
    between_basis: `(p, k)` orthonormal basis of the span of `M` returned by
      `between_basis(means, counts)`; only set with `within_in_basis`.
    within_in_basis: `(k, k)`, `between_basis^T (N Sigma_W) between_basis`,
      used for `nc1` when `scatter` is None.
    lambda_max: Estimate of the largest eigenvalue of `Sigma_W` when
      `scatter` is None.
    ncc_agreements: Samples whose nearest class mean is the network's
      predicted class, or None without predictions.
    ncc_corrects: Samples whose nearest class mean is their label, or None.
  """

  counts: np.ndarray
  means: np.ndarray
  within_ss: np.ndarray
  feature_shape: tuple
  scatter: Optional[np.ndarray] = None
  between_basis: Optional[np.ndarray] = None
  within_in_basis: Optional[np.ndarray] = None
  lambda_max: Optional[float] = None
  ncc_agreements: Optional[int] = None
  ncc_corrects: Optional[int] = None

  @property
  def num_samples(self):
    return int(np.sum(self.counts))


def _ratio(numerator, denominator):
  """Return `numerator / denominator` as a float, or None for a zero denominator."""
  if denominator == 0:
    return None
  return float(numerator / denominator)


def present_classes(counts):
  """Return the indices of the classes with at least one sample, `(C,)` int."""
  return np.flatnonzero(np.asarray(counts) > 0)


def centred_means(means, counts):
  """Return the centred class means `mu_c - mu_G` of present classes, `(C, p)`."""
  present = means[present_classes(counts)]
  return present - present.mean(axis=0)


def between_basis(means, counts):
  """Compute the directions of `Sigma_B` that the pseudo-inverse keeps.

  With the thin SVD `M = U S V^T`, the eigenvalues of `Sigma_B` are `s^2 / C`.
  At most `C-1` directions are kept (the columns of `M` sum to zero, so a
  `C`-th one is round-off), and only those with `s_k^2 > PINV_RTOL * s_1^2`.

  Args:
    means: `(num_classes, p)` float64 class means.
    counts: `(num_classes,)` class counts.

  Returns:
    A tuple `(basis, singular_values)`: `(p, k)` orthonormal columns and the
    `(k,)` matching singular values of `M`, with `k = 0` when all class means
    coincide.
  """
  centred = centred_means(means, counts)
  num_present = centred.shape[0]
  if num_present < 2:
    return np.zeros((centred.shape[1], 0)), np.zeros((0,))

  _, singular_values, right = scipy.linalg.svd(
      centred, full_matrices=False, lapack_driver="gesvd")
  if singular_values[0] == 0:
    return np.zeros((centred.shape[1], 0)), np.zeros((0,))

  keep = singular_values**2 > PINV_RTOL * singular_values[0]**2
  keep[num_present - 1:] = False
  return right[keep].T, singular_values[keep]


def sketch_width(num_classes):
  """Return the number of columns of each block of the lambda_max estimate."""
  return 2 * num_classes + 10


def sketch_matrix(dim, width, seed=SKETCH_SEED):
  """Return the start block `Omega` of the estimate, `(dim, width)` float64.

  The columns are Gaussian, scaled to unit norm so that all Krylov blocks
  have the same scale.
  """
  omega = np.random.default_rng(seed).standard_normal((dim, width))
  return omega / np.linalg.norm(omega, axis=0)


def next_krylov_block(blocks, images):
  """Return the next block of the block Krylov space of a PSD matrix `S`.

  Args:
    blocks: Blocks `[Q_0, ..., Q_j]`, each `(p, r)`, with `Q_0 = Omega`.
    images: Their products `[S Q_0, ..., S Q_j]`.

  Returns:
    `(p, r)` orthonormal basis of `S Q_j` with the span of the earlier blocks
    projected out; its product with `S` is the next pass's work.
  """
  basis, _ = scipy.linalg.qr(np.hstack(blocks), mode="economic")
  residual = images[-1] - basis @ (basis.T @ images[-1])
  block, _ = scipy.linalg.qr(residual, mode="economic")
  return block


def krylov_lambda_max(blocks, images):
  """Estimate the largest eigenvalue of a PSD matrix `S` from a block Krylov space.

  The blocks span `K = [Omega, S Omega, ..., S^j Omega]` (j+1 passes over the
  data, each giving one product with `S`). The estimate is the largest
  `x^T S^2 x / x^T S x` over `x` in `K`, a Ritz value of `S` on
  `S^(1/2) K`. In exact arithmetic it never exceeds the true value.

  Args:
    blocks: `[Q_0, ..., Q_j]`, each `(p, r)`.
    images: `[S Q_0, ..., S Q_j]`.

  Returns:
    The estimate as a float, 0.0 when `S` vanishes on `K`.
  """
  # The ratio does not depend on the basis of K, so the blocks need no
  # orthogonalisation. `ritz_lambda_max` drops directions where K^T S K is
  # round-off.
  return ritz_lambda_max(np.hstack(blocks), np.hstack(images))


def ritz_lambda_max(basis, image):
  """Return the largest `v^T Q^T S^2 Q v / v^T Q^T S Q v` over vectors `v`.

  Args:
    basis: `(p, r)` matrix `Q` with columns of similar norm.
    image: `(p, r)` product `S Q` with a PSD `S`.

  Returns:
    The estimate as a float, 0.0 when `S Q` is zero.
  """
  small = basis.T @ image
  small = (small + small.T) / 2
  eigenvalues, eigenvectors = scipy.linalg.eigh(small)
  if eigenvalues[-1] <= 0:
    return 0.0

  # Directions where Q^T S Q is round-off would divide by zero below.
  keep = eigenvalues > 1e-9 * eigenvalues[-1]
  whitening = eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])
  projected = image @ whitening
  squared = projected.T @ projected
  return float(scipy.linalg.eigvalsh((squared + squared.T) / 2)[-1])


def _trace_metrics(stats):
  present = present_classes(stats.counts)
  centred = centred_means(stats.means, stats.counts)
  trace_within = float(np.sum(stats.within_ss[present]) / stats.num_samples)
  trace_between = float(np.sum(centred**2) / len(present))
  trace_total = trace_within + trace_between
  return {
      "trace_within": trace_within,
      "trace_between": trace_between,
      "trace_total": trace_total,
      "within_fraction": _ratio(trace_within, trace_total),
      "between_fraction": _ratio(trace_between, trace_total),
  }


def _nc1(stats):
  """Return `Tr(Sigma_W Sigma_B^+) / C = sum_k u_k^T Sigma_W u_k / s_k^2`."""
  basis, singular_values = between_basis(stats.means, stats.counts)
  if stats.scatter is not None:
    within_in_basis = basis.T @ stats.scatter @ basis
  elif stats.within_in_basis is not None:
    if stats.within_in_basis.shape[0] != basis.shape[1]:
      raise ValueError(
          f"within_in_basis has shape {stats.within_in_basis.shape} but the "
          f"class means keep {basis.shape[1]} directions; compute it on the "
          "basis that `between_basis(means, counts)` returns.")
    within_in_basis = stats.within_in_basis
  else:
    return {}

  if basis.shape[1] == 0:
    return {"nc1": None}
  # Sigma_W is PSD, so a negative diagonal entry is round-off.
  projected = np.maximum(np.diag(within_in_basis), 0.0) / stats.num_samples
  return {"nc1": float(np.sum(projected / singular_values**2))}


def _pairwise(values):
  """Return the strictly upper triangle of a `(C, C)` array, `(C(C-1)/2,)`."""
  rows, cols = np.triu_indices(values.shape[0], k=1)
  return values[rows, cols]


def _mean_geometry_metrics(stats):
  """Return cdnv and the NC2 metrics; all need two present classes."""
  present = present_classes(stats.counts)
  num_present = len(present)
  keys = ("cdnv", "equinorm", "equiangularity", "max_angle", "etf_distance")
  if num_present < 2:
    return dict.fromkeys(keys)
  centred = centred_means(stats.means, stats.counts)
  gram = centred @ centred.T
  results = {}

  variances = stats.within_ss[present] / stats.counts[present]
  norms_squared = np.diag(gram)
  distances = _pairwise(
      norms_squared[:, None] + norms_squared[None, :] - 2 * gram)
  if np.any(distances <= 0):
    results["cdnv"] = None
  else:
    pair_variances = _pairwise(variances[:, None] + variances[None, :])
    results["cdnv"] = float(np.mean(pair_variances / (2 * distances)))

  norms = np.sqrt(norms_squared)
  results["equinorm"] = _ratio(np.std(norms), np.mean(norms))

  if np.any(norms == 0):
    results["equiangularity"] = None
    results["max_angle"] = None
  else:
    cosines = _pairwise(gram / np.outer(norms, norms))
    results["equiangularity"] = float(np.std(cosines))
    results["max_angle"] = float(
        np.mean(np.abs(cosines + 1.0 / (num_present - 1))))

  gram_norm = np.linalg.norm(gram)
  if gram_norm == 0:
    results["etf_distance"] = None
  else:
    etf = np.eye(num_present) - 1.0 / num_present
    results["etf_distance"] = float(np.linalg.norm(
        gram / gram_norm - etf / np.sqrt(num_present - 1)))
  return results


def weight_matrix(kernel):
  """Return the weight matrix whose spectrum the weight metrics use.

  Args:
    kernel: Keras kernel, `(p_in, p_out)` for Dense or
      `(kh, kw, C_in, C_out)` for Conv2D.

  Returns:
    `W`, `(p_out, p_in)` for Dense and `(C_out, kh*kw*C_in)` for Conv2D.
  """
  kernel = np.asarray(kernel, dtype=np.float64)
  if kernel.ndim == 2:
    return kernel.T
  return np.transpose(kernel, (3, 0, 1, 2)).reshape(kernel.shape[3], -1)


def _weight_metrics(kernel, num_classes, singular_values=None):
  if singular_values is None:
    singular_values = scipy.linalg.svdvals(weight_matrix(kernel))
  top = singular_values[:max(min(num_classes - 1, len(singular_values)), 1)]
  total = np.sum(singular_values)
  if total == 0:
    normalised = None
  else:
    normalised = [
        float(s) for s in
        singular_values[:NUM_REPORTED_SINGULAR_VALUES] / total]
  return {
      "weight_top_sv_cv": _ratio(np.std(top), np.mean(top)),
      "weight_stable_rank": _ratio(
          np.sum(singular_values**2), singular_values[0]**2),
      "weight_singular_values": normalised,
  }


def dense_kernel_spectrum(kernel, count):
  """Return the singular values and top left singular vectors of a Dense kernel.

  A wide kernel (`p_in <= p_out`, at least `GRAM_SPECTRUM_MIN_DIM` rows) goes
  through the eigendecomposition of its `p_in x p_in` Gram matrix
  `K K^T`, which OpenBLAS 0.3.31 computes several times faster than the SVD
  (median 0.46 s against 1.4 to 3.5 s for 1024 x 1024 on a shared 2-core
  CPU), with one tridiagonal reduction for both the eigenvalues and the top
  eigenvectors (`_gram_spectrum`: 0.32 s against 0.46 s for two LAPACK
  drivers in bench/host_linalg.py). The eigenvalues carry an absolute error of about
  `eps * sigma_1^2`, so a singular value `sigma` is off by about
  `eps * sigma_1^2 / sigma`: below 1e-12 relative to `sigma_1` for the
  kernels of a trained or freshly initialised network, but up to
  `sqrt(eps) * sigma_1` for a zero singular value. Other kernels use the SVD (`gesdd`).

  Args:
    kernel: `(p_in, p_out)` float64 Dense kernel.
    count: Number of left singular vectors requested; the result has
      `min(count, p_in, p_out)` columns.

  Returns:
    A tuple `(singular_values, left)`: the `min(p_in, p_out)` singular values
    in descending order and the `(p_in, min(count, p_in, p_out))` left
    singular vectors that belong to the largest of them.
  """
  rows, cols = kernel.shape
  count = min(count, rows, cols)
  if rows > cols or rows < GRAM_SPECTRUM_MIN_DIM:
    left, singular_values, _ = scipy.linalg.svd(
        kernel, full_matrices=False, lapack_driver="gesdd")
    return singular_values, left[:, :count]

  eigenvalues, vectors = _gram_spectrum(kernel @ kernel.T, count)
  return np.sqrt(np.maximum(eigenvalues, 0.0)), vectors


def _gram_spectrum(gram, count):
  """Return all eigenvalues and the top `count` eigenvectors of `gram`.

  One LAPACK tridiagonal reduction `gram = Q T Q^T` (`sytrd`) serves both:
  the eigenvalues of `T` come from `sterf`, the top eigenvectors of `T` from
  `scipy.linalg.eigh_tridiagonal`, and `Q` is applied to them with `ormqr`.
  These are the steps of LAPACK's `syevr` for a subset of eigenpairs,
  without a second reduction for the other eigenvalues.

  Args:
    gram: `(n, n)` symmetric float64 matrix, `n >= 2`; only its lower
      triangle is read.
    count: Number of eigenvectors, in `[0, n]`.

  Returns:
    A tuple `(eigenvalues, vectors)`: the `n` eigenvalues in descending order
    and the `(n, count)` eigenvectors of the largest of them, in the same
    order.
  """
  dim = gram.shape[0]
  lwork = int(scipy.linalg.lapack.dsytrd_lwork(dim, lower=1)[0])
  reduced, diagonal, off_diagonal, tau, info = scipy.linalg.lapack.dsytrd(
      gram, lower=1, lwork=max(lwork, 1))
  _check_lapack(info, "dsytrd")
  eigenvalues, info = scipy.linalg.lapack.dsterf(diagonal, off_diagonal)
  _check_lapack(info, "dsterf")
  if count == 0:
    return eigenvalues[::-1], np.zeros((dim, 0))

  _, vectors = scipy.linalg.eigh_tridiagonal(
      diagonal, off_diagonal, select="i", select_range=(dim - count, dim - 1))
  # With lower=1, Q = H(1) ... H(n-1) where H(i) acts on rows i+1 and below,
  # stored like a QR factor of the block below the diagonal.
  rotated, _, info = scipy.linalg.lapack.dormqr(
      "L", "N", reduced[1:, :dim - 1], tau, vectors[1:], lwork=64 * count)
  _check_lapack(info, "dormqr")
  vectors[1:] = rotated
  return eigenvalues[::-1], vectors[:, ::-1]


def _check_lapack(info, routine):
  if info != 0:
    raise np.linalg.LinAlgError(
        f"LAPACK {routine} failed with info={info}; the matrix may contain "
        "NaN or infinite values.")


def _left_singular_vectors(matrix, count):
  left, _, _ = scipy.linalg.svd(matrix, full_matrices=False)
  return left[:, :count]


def _alignment(stats, kernel, kernel_left=None):
  """Return the NC3 alignment of the class means with the weight.

  Dense: the top `k` left singular vectors of `M` (`p_in x C`) against the
  top `k` right singular vectors of `W`, `k = min(C-1, p_in, p_out)`.
  Conv2D: `M` as `C_in x (C*H*W)` and the kernel as `C_in x (kh*kw*C_out)`,
  both by their left singular vectors, `k = min(C-1, C_in, kh*kw*C_out,
  C*H*W)`.

  `kernel_left`, when given, are the left singular vectors of a Dense kernel
  (the right singular vectors of `W`), so that one SVD serves both this and
  the weight spectrum.
  """
  centred = centred_means(stats.means, stats.counts)
  num_present = centred.shape[0]
  if num_present < 2 or not np.any(centred):
    return {"alignment": None}
  kernel = np.asarray(kernel, dtype=np.float64)

  if kernel.ndim == 2:
    means_matrix = centred.T
    weight_matrix_in = kernel
  else:
    channels = kernel.shape[2]
    spatial = centred.reshape(num_present, -1, channels)
    means_matrix = np.transpose(spatial, (2, 0, 1)).reshape(channels, -1)
    weight_matrix_in = np.transpose(kernel, (2, 0, 1, 3)).reshape(channels, -1)

  k = min(num_present - 1, *means_matrix.shape, *weight_matrix_in.shape)
  means_vectors = _left_singular_vectors(means_matrix, k)
  if kernel_left is not None:
    weight_vectors = kernel_left[:, :k]
  else:
    weight_vectors = _left_singular_vectors(weight_matrix_in, k)
  cosines = np.clip(
      scipy.linalg.svdvals(weight_vectors.T @ means_vectors), 0.0, 1.0)
  return {"alignment": float(np.mean(cosines))}


def _classifier_metrics(stats, kernel):
  """Return self-duality and AM alignment over the present classes' rows of W."""
  present = present_classes(stats.counts)
  centred = centred_means(stats.means, stats.counts)
  weight = np.asarray(kernel, dtype=np.float64).T[present]
  weight_norm = np.linalg.norm(weight)
  means_norm = np.linalg.norm(centred)
  if weight_norm == 0 or means_norm == 0:
    return {"self_duality": None, "am_alignment": None}

  self_duality = np.linalg.norm(weight / weight_norm - centred / means_norm)
  memory = stats.counts[present][:, None] * centred
  am_alignment = np.sum(weight * memory) / (
      weight_norm * np.linalg.norm(memory))
  return {"self_duality": float(self_duality),
          "am_alignment": float(am_alignment)}


def _largest_eigenvalue(matrix):
  """Return the largest eigenvalue of a symmetric PSD matrix.

  Matrices up to `EIGH_MAX_DIM` use LAPACK (`syevr` for the top eigenvalue
  only). Larger ones use Lanczos (ARPACK) to the relative residual
  `LANCZOS_TOL`, which avoids the O(p^3) tridiagonalisation, and fall back to
  LAPACK if it does not converge. The start vector is Gaussian with a fixed
  seed, so that repeated calls give the same value.
  """
  dim = matrix.shape[0]
  if dim > EIGH_MAX_DIM and np.any(matrix):
    start = np.random.default_rng(SKETCH_SEED).normal(size=dim)
    try:
      return float(scipy.sparse.linalg.eigsh(
          matrix, k=1, which="LA", tol=LANCZOS_TOL, v0=start,
          return_eigenvectors=False)[0])
    except scipy.sparse.linalg.ArpackNoConvergence:
      pass
  return float(scipy.linalg.eigh(
      matrix, eigvals_only=True, subset_by_index=[dim - 1, dim - 1])[0])


def _feature_stable_rank(stats, trace_within):
  if stats.scatter is not None:
    lambda_max = _largest_eigenvalue(stats.scatter) / stats.num_samples
  elif stats.lambda_max is not None:
    lambda_max = stats.lambda_max
  else:
    return {}
  if lambda_max <= 0:
    return {"feature_stable_rank": None}
  return {"feature_stable_rank": float(trace_within / lambda_max)}


def _ncc_metrics(stats):
  results = {}
  if stats.ncc_corrects is not None:
    results["ncc_accuracy"] = float(stats.ncc_corrects / stats.num_samples)
  if stats.ncc_agreements is not None:
    results["ncc_agreement"] = float(stats.ncc_agreements / stats.num_samples)
  return results


def default_is_classifier(kernel, num_classes):
  """Return True when `kernel` is a Dense kernel with `num_classes` outputs."""
  return (kernel is not None and np.ndim(kernel) == 2
          and np.shape(kernel)[1] == num_classes)


def finalize(stats, num_classes, kernel=None, is_classifier=None,
             kernel_spectrum=None):
  """Compute every metric that `stats` and `kernel` determine.

  Args:
    stats: `ClassStats` of one probe point over one split, with at least one
      sample.
    num_classes: Number of classes of the model.
    kernel: Keras kernel of the layer consuming the features,
      `(p, p_out)` for Dense or `(kh, kw, C_in, C_out)` for Conv2D, or None.
    is_classifier: Whether the layer is the classifier (adds `self_duality`
      and `am_alignment`). Defaults to `default_is_classifier(kernel,
      num_classes)`.
    kernel_spectrum: `dense_kernel_spectrum(kernel, max(num_classes - 1, 1))`
      of a Dense `kernel`, computed beforehand (for example while the data
      passes run). Defaults to None: computed here.

  Returns:
    A dict with the keys of `COUNT_KEYS` and the applicable keys of
    `METRIC_KEYS`, in that order; see the module docstring for None values.
  """
  if stats.num_samples == 0:
    raise ValueError(
        "Cannot compute metrics from zero samples; pass a split with at "
        "least one sample.")
  if is_classifier is None:
    is_classifier = default_is_classifier(kernel, num_classes)
  present = present_classes(stats.counts)

  results = {
      "num_samples": stats.num_samples,
      "classes_present": int(len(present)),
      "missing_classes": [
          int(c) for c in np.flatnonzero(stats.counts[:num_classes] == 0)],
  }
  results.update(_trace_metrics(stats))
  results.update(_nc1(stats))
  results.update(_mean_geometry_metrics(stats))
  if kernel is not None:
    kernel = np.asarray(kernel, dtype=np.float64)
    kernel_left = singular_values = None
    if kernel.ndim == 2:
      # One decomposition serves both the alignment and the weight spectrum.
      if kernel_spectrum is None:
        kernel_spectrum = dense_kernel_spectrum(
            kernel, max(num_classes - 1, 1))
      singular_values, kernel_left = kernel_spectrum
    results.update(_alignment(stats, kernel, kernel_left))
    results.update(_weight_metrics(kernel, num_classes, singular_values))
    if is_classifier:
      results.update(_classifier_metrics(stats, kernel))
  results.update(_ncc_metrics(stats))
  results.update(_feature_stable_rank(stats, results["trace_within"]))

  order = COUNT_KEYS + METRIC_KEYS
  return {key: results[key] for key in order if key in results}


def _check_layer_inputs(features, labels, num_classes, kernel, predictions,
                        train_means):
  """Validate the arguments of `layer_metrics`; raise ValueError on misuse."""
  if isinstance(num_classes, bool) or not isinstance(
      num_classes, (int, np.integer)) or num_classes < 2:
    raise ValueError(
        f"num_classes must be an integer >= 2, got {num_classes!r}.")
  if features.ndim not in (2, 4):
    raise ValueError(
        f"features must be (N, p) or (N, H, W, C_in), got shape "
        f"{features.shape}; reshape them to one of these.")
  if not np.issubdtype(features.dtype, np.floating):
    raise ValueError(
        f"features must be floating point, got dtype {features.dtype}; cast "
        "them with .astype(np.float32).")
  if not np.all(np.isfinite(features)):
    raise ValueError(
        f"features contain {np.sum(~np.isfinite(features))} NaN or infinite "
        "values; the network diverged or the input is corrupt. Check the "
        "layer output before measuring it.")
  _check_class_ids(labels, "labels", features.shape[0], num_classes)
  if predictions is not None:
    _check_class_ids(predictions, "predictions", features.shape[0],
                     num_classes)

  if kernel is not None:
    kernel_shape = np.shape(kernel)
    p = int(np.prod(features.shape[1:]))
    if len(kernel_shape) == 2:
      if kernel_shape[0] != p:
        raise ValueError(
            f"Dense kernel of shape {kernel_shape} expects {kernel_shape[0]} "
            f"input features but the features have {p} (shape "
            f"{features.shape}); pass the kernel of the layer that consumes "
            "these features.")
    elif len(kernel_shape) == 4:
      if features.ndim != 4 or kernel_shape[2] != features.shape[3]:
        raise ValueError(
            f"Conv2D kernel of shape {kernel_shape} expects features "
            f"(N, H, W, {kernel_shape[2]}), got {features.shape}; pass the "
            "kernel of the layer that consumes these features.")
    else:
      raise ValueError(
          f"kernel must be a Dense (p_in, p_out) or Conv2D (kh, kw, C_in, "
          f"C_out) kernel, got shape {kernel_shape}.")

  if train_means is not None:
    p = int(np.prod(features.shape[1:]))
    if np.shape(train_means)[0] != num_classes or np.size(
        train_means) != num_classes * p:
      raise ValueError(
          f"train_means must have shape ({num_classes}, {p}), got "
          f"{np.shape(train_means)}; pass one training-split mean per class.")


def _check_class_ids(values, name, num_samples, num_classes):
  if values.ndim != 1 or values.shape[0] != num_samples:
    raise ValueError(
        f"{name} must have shape ({num_samples},) to match the features, got "
        f"{values.shape}.")
  if not np.issubdtype(values.dtype, np.integer):
    raise ValueError(
        f"{name} must be integer class ids, got dtype {values.dtype}; convert "
        "one-hot labels with argmax and float ids with .astype(int).")
  if values.size and (values.min() < 0 or values.max() >= num_classes):
    raise ValueError(
        f"{name} must lie in [0, {num_classes - 1}], got values from "
        f"{values.min()} to {values.max()}; check num_classes.")


def nearest_class(features, means, valid):
  """Return the index of the nearest class mean of each row, `(N,)` int.

  Args:
    features: `(N, p)` float64.
    means: `(num_classes, p)` float64.
    valid: `(num_classes,)` bool; other classes are never chosen.
  """
  # Distances are computed around the mean of the valid class means so that a
  # large common offset does not cancel in ||h||^2 - 2 h.mu + ||mu||^2.
  origin = means[valid].mean(axis=0)
  shifted = features - origin
  shifted_means = means - origin
  distances = (-2 * shifted @ shifted_means.T
               + np.sum(shifted_means**2, axis=1)[None, :])
  distances[:, ~valid] = np.inf
  return np.argmin(distances, axis=1)


def stats_from_arrays(features, labels, num_classes, predictions=None,
                      train_means=None,
                      max_covariance_dim=DEFAULT_MAX_COVARIANCE_DIM,
                      lambda_max_passes=0):
  """Compute `ClassStats` from features held in memory, in float64.

  Args: See `layer_metrics`; the inputs are assumed valid.

  Returns:
    `ClassStats` with `scatter` when `p <= max_covariance_dim`, else with
    `within_in_basis` and the block Krylov `lambda_max` estimate.
  """
  feature_shape = tuple(features.shape[1:])
  flat = np.asarray(features, dtype=np.float64).reshape(features.shape[0], -1)
  labels = np.asarray(labels)

  counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
  sums = np.zeros((num_classes, flat.shape[1]))
  np.add.at(sums, labels, flat)
  means = sums / np.maximum(counts, 1)[:, None]
  centred = flat - means[labels]
  within_ss = np.bincount(
      labels, weights=np.sum(centred**2, axis=1), minlength=num_classes)
  stats = ClassStats(counts, means, within_ss, feature_shape)

  if flat.shape[1] <= max_covariance_dim:
    stats.scatter = centred.T @ centred
  else:
    basis, _ = between_basis(means, counts)
    projected = centred @ basis
    stats.between_basis = basis
    stats.within_in_basis = projected.T @ projected
    blocks = [sketch_matrix(flat.shape[1], sketch_width(num_classes))]
    images = [centred.T @ (centred @ blocks[0])]
    for _ in range(1 + lambda_max_passes):
      blocks.append(next_krylov_block(blocks, images))
      images.append(centred.T @ (centred @ blocks[-1]))
    stats.lambda_max = krylov_lambda_max(blocks, images) / flat.shape[0]

  if train_means is None:
    ncc_means, valid = means, counts > 0
  else:
    ncc_means = np.asarray(train_means, dtype=np.float64).reshape(
        num_classes, -1)
    valid = np.all(np.isfinite(ncc_means), axis=1)
    ncc_means = np.where(valid[:, None], ncc_means, 0.0)
  nearest = nearest_class(flat, ncc_means, valid)
  stats.ncc_corrects = int(np.sum(nearest == labels))
  if predictions is not None:
    stats.ncc_agreements = int(np.sum(nearest == np.asarray(predictions)))
  return stats


def layer_metrics(features, labels, num_classes, kernel=None, predictions=None,
                  train_means=None, is_classifier=None,
                  max_covariance_dim=DEFAULT_MAX_COVARIANCE_DIM,
                  lambda_max_passes=0):
  """Compute every collapse metric of one probe point from in-memory arrays.

  Example:

  >>> rng = np.random.default_rng(0)
  >>> labels = np.repeat(np.arange(3), 50)
  >>> features = rng.normal(size=(150, 8)) + 10 * np.eye(3, 8)[labels]
  >>> result = layer_metrics(features, labels, num_classes=3)
  >>> result["within_fraction"] < 0.2
  True

  Args:
    features: `(N, p)` or `(N, H, W, C_in)` float features. Any float dtype;
      all sums use float64.
    labels: `(N,)` integer class ids in `[0, num_classes)`.
    num_classes: Number of classes of the model, at least 2.
    kernel: Kernel of the layer that consumes the features: Dense
      `(p, p_out)` or Conv2D `(kh, kw, C_in, C_out)`. Defaults to None, which
      leaves out `alignment`, the `weight_*` keys and the classifier keys.
    predictions: `(N,)` integer classes predicted by the network. Defaults to
      None, which leaves out `ncc_agreement`.
    train_means: `(num_classes, p)` class means used by the nearest class
      centre rule, for NC4 on a split other than the one that gave them. Rows
      of NaN mark classes with no training sample, which the rule never
      predicts. Defaults to None: the features' own class means.
    is_classifier: Whether `kernel` is the classifier's, which adds
      `self_duality` and `am_alignment`. Defaults to None: True exactly when
      the kernel is 2-D with `num_classes` outputs.
    max_covariance_dim: Largest `p` for which the `p x p` within-class scatter
      is formed and `lambda_max(Sigma_W)` is exact. Above it, `nc1` uses the
      span of the class means (still exact) and `lambda_max` is the block
      Krylov estimate of `krylov_lambda_max`, which never overestimates.
      Defaults to 4096.
    lambda_max_passes: Krylov blocks added to the two that
      `inc_tf.measurement.measure` gets from its two training passes; each
      costs one more pass there. More blocks make the estimate more accurate
      (see BUILD_NOTES.md for measured errors). Defaults to 0.

  Returns:
    A dict: `num_samples`, `classes_present`, `missing_classes` (list of
    class ids with no sample), then every key of `METRIC_KEYS` that the
    arguments determine, in that order. Values are floats, None where a
    denominator is zero, and a list of floats for `weight_singular_values`.

  Raises:
    ValueError: On a wrong shape or dtype, labels or predictions out of
      range, non-finite features, or a kernel that does not match the
      features.
  """
  features = np.asarray(features)
  labels = np.asarray(labels)
  if predictions is not None:
    predictions = np.asarray(predictions)
  _check_layer_inputs(features, labels, num_classes, kernel, predictions,
                      train_means)
  if features.shape[0] == 0:
    raise ValueError(
        "features has no samples; pass at least one sample per measured "
        "split.")

  stats = stats_from_arrays(features, labels, num_classes, predictions,
                            train_means, max_covariance_dim,
                            lambda_max_passes)
  return finalize(stats, num_classes, kernel, is_classifier)


def collapse_onset(within_fractions: Sequence[Optional[float]],
                   epsilon: float = 0.2) -> Optional[int]:
  """Return the first probe index from which every point is collapsed.

  A point is collapsed when its `within_fraction` is below `epsilon`; a None
  value counts as not collapsed.

  Args:
    within_fractions: `within_fraction` of each probe point in order.
    epsilon: Collapse threshold. Defaults to 0.2.

  Returns:
    The smallest index `l` such that points `l, l+1, ...` are all collapsed,
    or None when the last point is not collapsed (or there are no points).
  """
  onset = None
  for index in range(len(within_fractions) - 1, -1, -1):
    value = within_fractions[index]
    if value is None or not value < epsilon:
      break
    onset = index
  return onset
