"""Settings of one training run.

`RunConfig` is what the library below `main` receives instead of absl flags,
so that sweeps and experiments can derive runs with `dataclasses.replace`.
"""

import dataclasses
from typing import Optional, Tuple

DATASETS = ("mnist", "fashion_mnist", "cifar10", "svhn")
MODELS = ("mlp", "convnet", "resnet18", "resnet34", "resnet50")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything that determines one run; field meanings match the flags.

  Attributes:
    dataset: One of `DATASETS`.
    data_dir: Folder holding the dataset's standard files, or None to use the
      default locations and tensorflow-datasets.
    examples_per_class: Size of the balanced training subset per class, or
      None for the whole training split.
    test_examples_per_class: Size of the balanced test subset per class, or
      None for the whole test split; for quick CPU runs.
    seed: Seed of the subset, the initial weights and the data order.
    model: One of `MODELS`.
    depth: Hidden layers (MLP) or 3x3 blocks (ConvNet); ignored by ResNets.
    width: Units (MLP), channels (ConvNet) or base channels (ResNet).
    epochs: Number of training epochs.
    batch_size: Global batch size, summed over replicas.
    lr: Peak learning rate, reached at the end of the warm-up.
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to every trainable variable's gradient.
    warmup_epochs: Epochs of linear warm-up from 0 to `lr`.
    lr_decay: Factor applied at each decay step.
    lr_decay_steps: The rate is multiplied by `lr_decay` at epochs
      `i * epochs / lr_decay_steps` for `i = 1 .. lr_decay_steps - 1`.
    measure_epochs: Epochs after which every probe point is measured; 0 is
      the initialisation. The final epoch is always measured.
    epsilon: Within-class fraction below which a probe point counts as
      collapsed.
    max_covariance_dim: Widest feature dimension for which the p x p
      within-class covariance is formed.
    eval_batch_size: Batch size for evaluation and measurement.
    checkpoint_every: Epochs between checkpoints; the final epoch is always
      saved.
    workdir: Run directory.
    jit_compile: "auto", "true" or "false": whether to XLA-compile the step.
    etf_layers: Number of top weight layers fixed to simplex ETFs (0: none).
  """

  dataset: str = "fashion_mnist"
  data_dir: Optional[str] = None
  examples_per_class: Optional[int] = None
  test_examples_per_class: Optional[int] = None
  seed: int = 0
  model: str = "mlp"
  depth: int = 10
  width: int = 1024
  epochs: int = 350
  batch_size: int = 128
  lr: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 5e-4
  warmup_epochs: int = 1
  lr_decay: float = 0.2
  lr_decay_steps: int = 3
  measure_epochs: Tuple[int, ...] = (0,)
  epsilon: float = 0.2
  max_covariance_dim: int = 4096
  eval_batch_size: int = 1000
  checkpoint_every: int = 10
  workdir: str = "runs/default"
  jit_compile: str = "auto"
  etf_layers: int = 0

  def epochs_to_measure(self):
    """Return the sorted measured epochs, the final one included."""
    epochs = {e for e in self.measure_epochs if 0 <= e <= self.epochs}
    epochs.add(self.epochs)
    return tuple(sorted(epochs))
