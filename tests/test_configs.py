"""Tests for the flagfiles in configs/: they parse and match Rangamani et al."""

import glob
import logging
import os

from absl import flags
import pytest

from inc_tf import config as config_lib
from inc_tf import flags as flags_lib
# Imported for their flags, which some flagfiles set.
from inc_tf import etf_experiment  # pylint: disable=unused-import
from inc_tf import sweep  # pylint: disable=unused-import

FLAGS = flags.FLAGS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          "configs")
ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.cfg")))

# Rangamani et al. (ICML 2023), Appendix A, and the learning rates of their
# reference runs: (dataset, model, lr, weight_decay, lr_decay, depth, width).
# Depth is None for the ResNets, whose depth comes from the variant.
PAPER = {
    "mnist_mlp": ("mnist", "mlp", 0.02, 2e-3, 0.2, 10, 1024),
    "fashion_mnist_mlp": ("fashion_mnist", "mlp", 0.01, 2e-3, 0.2, 10, 1024),
    "cifar10_mlp": ("cifar10", "mlp", 0.01, 2e-3, 0.2, 10, 1024),
    "svhn_mlp": ("svhn", "mlp", 0.005, 2e-3, 0.2, 10, 1024),
    "mnist_convnet": ("mnist", "convnet", 0.01, 2e-3, 0.2, 20, 128),
    "fashion_mnist_convnet": ("fashion_mnist", "convnet", 0.01, 2e-3, 0.2,
                              20, 128),
    "cifar10_convnet": ("cifar10", "convnet", 0.01, 2e-3, 0.2, 20, 128),
    "svhn_convnet": ("svhn", "convnet", 0.01, 2e-3, 0.2, 20, 128),
    "mnist_resnet18": ("mnist", "resnet18", 0.0184, 5e-4, 0.1, None, 64),
    "fashion_mnist_resnet18": ("fashion_mnist", "resnet18", 0.094, 5e-4, 0.1,
                               None, 64),
    "svhn_resnet34": ("svhn", "resnet34", 0.0096, 5e-4, 0.1, None, 64),
    "cifar10_resnet50": ("cifar10", "resnet50", 0.03, 5e-4, 0.1, None, 64),
}

CPU_COMPANIONS = ("fashion_mnist_convnet_cpu", "fashion_mnist_resnet18_cpu")


def _path(name):
  return os.path.join(CONFIG_DIR, name + ".cfg")


def _load(path):
  """Parse one flagfile into a `RunConfig` without training."""
  try:
    FLAGS(["test", f"--flagfile={path}"])
    return flags_lib.config_from_flags(["test", f"--flagfile={path}"])
  finally:
    FLAGS.unparse_flags()


def _header(path):
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  header = []
  for line in lines:
    if not line.startswith("#"):
      break
    header.append(line)
  return header


def test_paper_and_companion_files_exist():
  names = {os.path.splitext(os.path.basename(p))[0] for p in ALL_CONFIGS}
  assert set(PAPER) <= names
  assert set(CPU_COMPANIONS) <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_config_parses(path):
  config = _load(path)
  assert isinstance(config, config_lib.RunConfig)
  assert config.dataset in config_lib.DATASETS
  assert config.model in config_lib.MODELS
  assert config.workdir == os.path.join(
      "runs", os.path.splitext(os.path.basename(path))[0])


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_config_header(path):
  header = _header(path)
  assert header, f"{path} must start with # comment lines"
  text = "\n".join(header)
  assert "Cost" in text
  assert "Expect" in text


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings(name):
  dataset, model, lr, weight_decay, lr_decay, depth, width = PAPER[name]
  config = _load(_path(name))
  assert config.dataset == dataset
  assert config.model == model
  assert config.lr == pytest.approx(lr)
  assert config.weight_decay == pytest.approx(weight_decay)
  assert config.lr_decay == pytest.approx(lr_decay)
  assert config.width == width
  if depth is not None:
    assert config.depth == depth


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_shared_settings(name):
  config = _load(_path(name))
  assert config.examples_per_class is None
  assert config.epochs == 350
  assert config.batch_size == 128
  assert config.momentum == pytest.approx(0.9)
  assert config.warmup_epochs == 1
  # Three steps give two decays, at epochs 350 / 3 and 2 * 350 / 3.
  assert config.lr_decay_steps == 3
  assert config.etf_layers == 0
  assert 0 in config.measure_epochs
  assert config.epochs_to_measure()[-1] == 350


@pytest.mark.parametrize("name", CPU_COMPANIONS)
def test_cpu_companion_is_subset(name):
  config = _load(_path(name))
  assert config.dataset == "fashion_mnist"
  assert config.examples_per_class is not None
  assert config.epochs < 350
  assert "MEASURED" not in "\n".join(_header(_path(name)))


@pytest.mark.parametrize("warmup_epochs, warned", [(3, True), (2, False)])
def test_warmup_longer_than_training_warns(warmup_epochs, warned, caplog):
  try:
    FLAGS(["test", "--epochs=2", f"--warmup_epochs={warmup_epochs}"])
    with caplog.at_level(logging.WARNING):
      config = flags_lib.config_from_flags(["test"])
  finally:
    FLAGS.unparse_flags()

  assert config.warmup_epochs == warmup_epochs
  assert ("never reaches --lr" in caplog.text) == warned
