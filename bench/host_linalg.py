"""Benchmark the host-side linear algebra of one measurement.

Times, on 1024 x 1024 matrices (1024 is the hidden width of the paper's
MLP):

- `metrics.dense_kernel_spectrum` (one tridiagonal reduction of `K K^T`)
  against two LAPACK drivers on the same Gram matrix: `syevd` for all
  eigenvalues and `syevr` for the top eigenvectors.
- `metrics._largest_eigenvalue` of a within-class scatter (Lanczos above
  `EIGH_MAX_DIM`) against LAPACK's top eigenvalue (`syevr`).
- The spectra of 10 kernels (the hidden layers of the MLP) in the pool the
  measurement uses on CPU replicas (one idle-priority thread per core, one
  BLAS thread each), against one after another with the default BLAS
  threads. Nothing else runs here, so the idle priority does not slow the
  pool.
  Wall and process CPU seconds are printed, because extra BLAS threads can
  cost CPU time without saving wall time.
- One step of the host scatter (`measurement._HostScatter.add`) on a
  `--scatter_rows x dim` float32 block with one BLAS thread: OpenBLAS
  `syrk` called directly against NumPy's `dot(D.T, D)` plus the add.

The inputs are a Gaussian kernel and the scatter of random ReLU features
with a few strong directions. Each timing is the median over `--repeats`
runs, and the ratio new / old is printed. Both results are checked against
each other.

Run: python bench/host_linalg.py [--dim=1024] [--repeats=7]
  [--scatter_rows=1000]
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import scipy.linalg  # pylint: disable=g-import-not-at-top,wrong-import-position
import threadpoolctl  # pylint: disable=g-import-not-at-top,wrong-import-position

from inc_tf import measurement  # pylint: disable=g-import-not-at-top,wrong-import-position
from inc_tf import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

_DIM = flags.DEFINE_integer("dim", 1024, "Matrix size p.", lower_bound=300)
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed runs per method.",
                                lower_bound=1)
_SCATTER_ROWS = flags.DEFINE_integer(
    "scatter_rows", 1000, "Rows of one host-scatter step.", lower_bound=1)

NUM_VECTORS = 9


def _median_wall_and_cpu(function, repeats):
  """Return the median wall and process CPU seconds of `function()`."""
  walls, cpus = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    walls.append(time.perf_counter() - start)
    cpus.append(time.process_time() - start_cpu)
  return statistics.median(walls), statistics.median(cpus)


def _median_seconds(function, repeats):
  """Return the median wall time of `function()` over `repeats` runs."""
  return _median_wall_and_cpu(function, repeats)[0]


def _two_driver_spectrum(kernel, count):
  """Return the singular values and top left vectors with syevd and syevr."""
  gram = kernel @ kernel.T
  rows = gram.shape[0]
  eigenvalues = scipy.linalg.eigh(gram, eigvals_only=True, driver="evd")
  _, vectors = scipy.linalg.eigh(
      gram, subset_by_index=[rows - count, rows - 1], driver="evr")
  return np.sqrt(np.maximum(eigenvalues[::-1], 0.0)), vectors[:, ::-1]


def _lapack_largest(matrix):
  dim = matrix.shape[0]
  return scipy.linalg.eigh(
      matrix, eigvals_only=True, subset_by_index=[dim - 1, dim - 1])[0]


def main(argv):
  del argv  # Unused.
  dim, repeats = _DIM.value, _REPEATS.value
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  features = np.maximum(rng.normal(size=(4 * dim, dim)), 0.0)
  features[:, :5] *= 5.0
  features -= features.mean(axis=0)
  scatter = features.T @ features

  new_values, new_vectors = metrics.dense_kernel_spectrum(kernel, NUM_VECTORS)
  old_values, old_vectors = _two_driver_spectrum(kernel, NUM_VECTORS)
  cosines = np.linalg.svd(old_vectors.T @ new_vectors, compute_uv=False)
  print(f"kernel spectrum, {dim} x {dim}: max singular value difference "
        f"{np.max(np.abs(new_values - old_values)) / old_values[0]:.1e} "
        f"(relative), min cosine of the top {NUM_VECTORS} vectors "
        f"{cosines.min():.12f}")
  new = _median_seconds(
      lambda: metrics.dense_kernel_spectrum(kernel, NUM_VECTORS), repeats)
  old = _median_seconds(
      lambda: _two_driver_spectrum(kernel, NUM_VECTORS), repeats)
  print(f"  one reduction {new * 1000:.0f} ms, two drivers "
        f"{old * 1000:.0f} ms, ratio {new / old:.2f}")

  lanczos = metrics._largest_eigenvalue(scatter)  # pylint: disable=protected-access
  lapack = _lapack_largest(scatter)
  print(f"lambda_max of a {dim} x {dim} scatter: relative difference "
        f"{abs(lanczos - lapack) / lapack:.1e}")
  new = _median_seconds(
      lambda: metrics._largest_eigenvalue(scatter), repeats)  # pylint: disable=protected-access
  old = _median_seconds(lambda: _lapack_largest(scatter), repeats)
  print(f"  _largest_eigenvalue {new * 1000:.0f} ms, LAPACK syevr "
        f"{old * 1000:.0f} ms, ratio {new / old:.2f}")

  kernels = [rng.normal(size=(dim, dim)) / np.sqrt(dim) for _ in range(10)]

  def in_parallel():
    with measurement._host_executor(accelerated=False) as pool:  # pylint: disable=protected-access
      futures = [pool.submit(metrics.dense_kernel_spectrum, one_kernel,
                             NUM_VECTORS) for one_kernel in kernels]
      for future in futures:
        pool.result(future)

  def in_order():
    for one_kernel in kernels:
      metrics.dense_kernel_spectrum(one_kernel, NUM_VECTORS)

  new_wall, new_cpu = _median_wall_and_cpu(in_parallel, repeats)
  old_wall, old_cpu = _median_wall_and_cpu(in_order, repeats)
  print(f"10 kernel spectra, idle-priority pool with one BLAS thread: "
        f"{new_wall:.2f} s wall, {new_cpu:.2f} s CPU; one after another: "
        f"{old_wall:.2f} s wall, {old_cpu:.2f} s CPU; ratios "
        f"{new_wall / old_wall:.2f} wall, {new_cpu / old_cpu:.2f} CPU")

  block = rng.normal(size=(_SCATTER_ROWS.value, dim)).astype(np.float32)
  sums = {}
  times = {}
  with threadpoolctl.threadpool_limits(limits=1):
    for direct in (True, False):
      scatter_sum = measurement._HostScatter(  # pylint: disable=protected-access
          [dim], [np.float32], fold_steps=repeats + 1, direct_blas=direct)
      times[direct] = _median_seconds(
          lambda: scatter_sum.add(0, [block]), repeats)  # pylint: disable=cell-var-from-loop
      sums[direct] = scatter_sum.result(0)
  if measurement._blas_syrk(np.dtype(np.float32)) is None:  # pylint: disable=protected-access
    print("host scatter step: no OpenBLAS found, both runs used np.dot")
  difference = np.max(np.abs(sums[True] - sums[False])) / np.max(
      np.abs(sums[False]))
  print(f"host scatter step, {_SCATTER_ROWS.value} x {dim} float32, one "
        f"BLAS thread: direct syrk {times[True] * 1000:.1f} ms, np.dot and "
        f"add {times[False] * 1000:.1f} ms, ratio "
        f"{times[True] / times[False]:.2f}; sums differ by {difference:.1e} "
        f"(relative)")


if __name__ == "__main__":
  app.run(main)
