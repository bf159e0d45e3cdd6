"""Tests of the inc_tf package namespace."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code):
  return subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
      timeout=300, check=False)


def test_submodule_imported_on_access():
  result = run_python(
      "import sys, inc_tf\n"
      "assert 'inc_tf.metrics' not in sys.modules\n"
      "print(inc_tf.metrics.layer_metrics.__name__)\n")

  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "layer_metrics"


def test_unknown_attribute_raises():
  import inc_tf  # pylint: disable=import-outside-toplevel

  with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
    inc_tf.nothing  # pylint: disable=pointless-statement,no-member
