"""Every command-line flag of the training commands, defined in one place.

Commands call `define_flags()` once at import, then `config_from_flags()`
inside `main` to turn the parsed flags into a `RunConfig`. Flags given on
the command line after `--flagfile` override the flagfile's values.
"""

import os

from absl import flags
from absl import logging

from inc_tf import config as config_lib

FLAGS = flags.FLAGS

# Names of the flags defined here, in definition order; `flags_text` writes
# exactly these to the run directory's flags.txt.
RUN_FLAG_NAMES = []


def _define(definer, name, default, *args, **kwargs):
  # `*args` passes DEFINE_enum's `enum_values` before the help text.
  definer(name, default, *args, **kwargs)
  RUN_FLAG_NAMES.append(name)


def define_flags():
  """Define the run flags; calling it again does nothing."""
  if RUN_FLAG_NAMES:
    return

  # Data.
  _define(flags.DEFINE_enum, "dataset", "fashion_mnist",
          list(config_lib.DATASETS), "Dataset name.")
  _define(flags.DEFINE_string, "data_dir", None,
          "Folder holding the dataset's standard files (IDX files for MNIST "
          "and Fashion-MNIST, the batches inside cifar-10-batches-py/ for "
          "CIFAR-10, train_32x32.mat and test_32x32.mat for SVHN). Default: "
          "the Debian location for Fashion-MNIST, then tensorflow-datasets.")
  _define(flags.DEFINE_integer, "examples_per_class", 0,
          "Training examples per class in a balanced, seeded subset; 0 uses "
          "the whole training split.", lower_bound=0)
  _define(flags.DEFINE_integer, "test_examples_per_class", 0,
          "Test examples per class in a balanced, seeded subset of the test "
          "split, to make quick CPU runs cheaper; 0 uses the whole test "
          "split, as the paper does.", lower_bound=0)
  _define(flags.DEFINE_integer, "seed", 0,
          "Seed of the subset, the initial weights and the data order.",
          lower_bound=0)

  # Model.
  _define(flags.DEFINE_enum, "model", "mlp", list(config_lib.MODELS),
          "Architecture.")
  _define(flags.DEFINE_integer, "depth", 10,
          "Hidden layers (mlp) or 3x3 conv blocks (convnet); ignored by the "
          "ResNets. Range: >= 1.", lower_bound=1)
  _define(flags.DEFINE_integer, "width", 1024,
          "Units per hidden layer (mlp), channels (convnet) or base channels "
          "(resnet, 64 in the standard ResNets). Range: >= 1.", lower_bound=1)

  # Optimisation.
  _define(flags.DEFINE_integer, "epochs", 350, "Training epochs. Range: >= 1.",
          lower_bound=1)
  _define(flags.DEFINE_integer, "batch_size", 128,
          "Global batch size in examples, summed over replicas. Range: >= 1.",
          lower_bound=1)
  _define(flags.DEFINE_float, "lr", 0.01,
          "Peak learning rate, reached at the end of the warm-up. Range: > 0.",
          lower_bound=0.0)
  _define(flags.DEFINE_float, "momentum", 0.9, "SGD momentum. Range: [0, 1).",
          lower_bound=0.0, upper_bound=1.0)
  _define(flags.DEFINE_float, "weight_decay", 5e-4,
          "L2 coefficient added to the gradient of every trainable variable. "
          "Range: >= 0.", lower_bound=0.0)
  _define(flags.DEFINE_integer, "warmup_epochs", 1,
          "Epochs of linear learning-rate warm-up from 0. Range: >= 0.",
          lower_bound=0)
  _define(flags.DEFINE_float, "lr_decay", 0.2,
          "Factor multiplying the learning rate at each decay boundary. "
          "Range: (0, 1].", lower_bound=0.0, upper_bound=1.0)
  _define(flags.DEFINE_integer, "lr_decay_steps", 3,
          "The rate is multiplied by --lr_decay at epochs i * epochs / "
          "lr_decay_steps for i = 1 .. lr_decay_steps - 1; 1 disables decay. "
          "Range: >= 1.", lower_bound=1)

  # Measurement.
  _define(flags.DEFINE_list, "measure_epochs", ["0"],
          "Comma-separated epochs after which every layer is measured; 0 is "
          "the initialisation. The final epoch is always measured.")
  _define(flags.DEFINE_float, "epsilon", 0.2,
          "Within-class variance fraction below which a layer counts as "
          "collapsed. Range: (0, 1).", lower_bound=0.0, upper_bound=1.0)
  _define(flags.DEFINE_integer, "max_covariance_dim", 4096,
          "Widest feature dimension for which the p x p within-class "
          "covariance is formed; wider layers use the C-1 class-mean "
          "directions and an iterative top eigenvalue. Range: >= 1.",
          lower_bound=1)
  _define(flags.DEFINE_integer, "eval_batch_size", 1000,
          "Batch size in examples for evaluation and measurement. "
          "Range: >= 1.", lower_bound=1)

  # Run directory and execution.
  _define(flags.DEFINE_integer, "checkpoint_every", 10,
          "Epochs between checkpoints; the final epoch is always saved. "
          "Range: >= 1.", lower_bound=1)
  _define(flags.DEFINE_string, "workdir", None,
          "Run directory. Default: runs/<flagfile name without .cfg>, or "
          "runs/default without a flagfile.")
  _define(flags.DEFINE_enum, "jit_compile", "auto", ["auto", "true", "false"],
          "XLA-compile the training step; auto compiles with a single "
          "replica only.")
  _define(flags.DEFINE_integer, "etf_layers", 0,
          "Number of top weight layers (classifier included) fixed to "
          "canonical simplex ETFs and frozen; 0 trains all layers. "
          "Range: >= 0.", lower_bound=0)

  flags.register_validator(
      "measure_epochs", _valid_epoch_list,
      message="--measure_epochs must be comma-separated integers >= 0, "
      "for example --measure_epochs=0,10,50.")
  flags.register_validator(
      "lr", lambda value: value > 0,
      message="--lr must be greater than 0.")
  flags.register_validator(
      "lr_decay", lambda value: value > 0,
      message="--lr_decay must be greater than 0.")
  flags.register_validator(
      "epsilon", lambda value: 0 < value < 1,
      message="--epsilon must be in (0, 1); the paper uses 0.2.")
  flags.register_validator(
      "momentum", lambda value: value < 1,
      message="--momentum must be below 1.")


def _valid_epoch_list(values):
  try:
    return all(int(v) >= 0 for v in values)
  except ValueError:
    return False


def default_workdir(argv):
  """Return runs/<flagfile name> for the last --flagfile in argv."""
  flagfile = None
  for arg in argv:
    if arg.startswith("--flagfile="):
      flagfile = arg.split("=", 1)[1]
  if flagfile is None:
    return os.path.join("runs", "default")
  name = os.path.splitext(os.path.basename(flagfile))[0]
  return os.path.join("runs", name)


def config_from_flags(argv=()):
  """Return the `RunConfig` of the parsed flags.

  Args:
    argv: The command line, used only to name the default run directory.

  Raises:
    ValueError: A combination of flags is invalid; the message names it.
  """
  measure_epochs = tuple(sorted({int(v) for v in FLAGS.measure_epochs}))
  late = [e for e in measure_epochs if e > FLAGS.epochs]
  if late:
    raise ValueError(
        f"--measure_epochs lists epochs after the last epoch "
        f"{FLAGS.epochs}: {', '.join(str(e) for e in late)}. Remove them or "
        "raise --epochs.")
  if FLAGS.warmup_epochs > FLAGS.epochs:
    logging.warning(
        "--warmup_epochs=%d is longer than --epochs=%d, so the learning rate "
        "never reaches --lr=%g. Lower --warmup_epochs if that is not meant.",
        FLAGS.warmup_epochs, FLAGS.epochs, FLAGS.lr)
  return config_lib.RunConfig(
      dataset=FLAGS.dataset,
      data_dir=FLAGS.data_dir,
      examples_per_class=FLAGS.examples_per_class or None,
      test_examples_per_class=FLAGS.test_examples_per_class or None,
      seed=FLAGS.seed,
      model=FLAGS.model,
      depth=FLAGS.depth,
      width=FLAGS.width,
      epochs=FLAGS.epochs,
      batch_size=FLAGS.batch_size,
      lr=FLAGS.lr,
      momentum=FLAGS.momentum,
      weight_decay=FLAGS.weight_decay,
      warmup_epochs=FLAGS.warmup_epochs,
      lr_decay=FLAGS.lr_decay,
      lr_decay_steps=FLAGS.lr_decay_steps,
      measure_epochs=measure_epochs,
      epsilon=FLAGS.epsilon,
      max_covariance_dim=FLAGS.max_covariance_dim,
      eval_batch_size=FLAGS.eval_batch_size,
      checkpoint_every=FLAGS.checkpoint_every,
      workdir=FLAGS.workdir or default_workdir(argv),
      jit_compile=FLAGS.jit_compile,
      etf_layers=FLAGS.etf_layers)


def flags_text(config):
  """Return the run flags as flagfile lines, with the resolved workdir."""
  lines = []
  for name in RUN_FLAG_NAMES:
    if name == "workdir":
      lines.append(f"--workdir={config.workdir}")
      continue
    serialized = FLAGS[name].serialize()
    if serialized:
      lines.append(serialized)
  return "\n".join(lines) + "\n"
