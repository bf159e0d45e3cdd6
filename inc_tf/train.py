"""The custom training loop: MSE loss, SGD, MirroredStrategy, checkpoints.

`run` trains one model described by a `RunConfig`, writes the run directory
(history, metrics, TensorBoard, checkpoints) and resumes from the last
checkpoint when the same run directory is used again.
"""

import dataclasses
import json
import os
import sys
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from inc_tf import callbacks as callbacks_lib
from inc_tf import data as data_lib
from inc_tf import models as models_lib
from inc_tf import probe as probe_lib
from inc_tf import records
from inc_tf import schedule as schedule_lib

# Settings that may change between an interrupted run and its resumption;
# every other RunConfig field must match the run directory's config.json.
RESUMABLE_FIELDS = frozenset({
    "data_dir", "workdir", "checkpoint_every", "measure_epochs",
    "eval_batch_size", "jit_compile", "max_covariance_dim",
})


# Steps between two checks of the loss for NaN or inf within an epoch.
CHECK_EVERY = 50


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass
class RunResult:
  """Outcome of `run`.

  Attributes:
    workdir: The run directory.
    final_train_accuracy: Train accuracy of the last epoch (running average
      over the epoch's batches, training-mode BatchNorm).
    final_test_accuracy: Test accuracy after the last epoch.
    diverged: Whether the loss became non-finite (set by callers that catch
      `NonFiniteLossError`; `run` itself raises).
    onset: Collapse onset of the final epoch on the training split, or None.
    total_weight_layers: Number of Dense and Conv2D layers of the model.
    epochs_completed: Epochs trained, including those of earlier attempts.
  """

  workdir: str
  final_train_accuracy: float
  final_test_accuracy: float
  diverged: bool
  onset: int | None
  total_weight_layers: int
  epochs_completed: int


def mse_loss_sum(logits, labels, num_classes):
  """Return the sum over the batch of the per-example MSE.

  The per-example loss is the mean over classes of `(logits - one_hot)^2`.

  Args:
    logits: `(batch, num_classes)` float tensor.
    labels: `(batch,)` integer class ids.
    num_classes: Number of classes C.

  Returns:
    A scalar: the sum of per-example losses.
  """
  one_hot = tf.one_hot(labels, num_classes, dtype=logits.dtype)
  per_example = tf.reduce_mean(tf.square(logits - one_hot), axis=-1)
  return tf.reduce_sum(per_example)


def _sum_variable(name, dtype=tf.float32):
  """Create a replica-local counter whose read value is the sum over replicas."""
  return tf.Variable(
      tf.zeros((), dtype), name=name, trainable=False,
      synchronization=tf.VariableSynchronization.ON_READ,
      aggregation=tf.VariableAggregation.SUM)


class Trainer:
  """Training and evaluation steps of one model under one strategy.

  Built inside `strategy.scope()` after callbacks have run `on_train_begin`,
  because the ETF callback freezes kernels there and the optimizer must be
  built on the variables that remain trainable.

  Args:
    model: The classifier, created in `strategy.scope()`.
    strategy: A `tf.distribute.Strategy`.
    num_classes: Number of classes C.
    learning_rate: A float or a `LearningRateSchedule`.
    momentum: SGD momentum.
    weight_decay: L2 coefficient; `weight_decay * w` is added to the gradient
      of every trainable variable `w`, as PyTorch's SGD `weight_decay` does.
    jit_compile: Whether to XLA-compile the per-replica steps.
  """

  def __init__(self, model, strategy, num_classes, learning_rate, momentum,
               weight_decay, jit_compile):
    self.model = model
    self.strategy = strategy
    self.num_classes = num_classes
    self.weight_decay = weight_decay
    self.variables = list(model.trainable_variables)

    with strategy.scope():
      self.optimizer = keras.optimizers.SGD(
          learning_rate=learning_rate, momentum=momentum)
      # Creating the slot variables inside the first replicated step fails
      # with two replicas (TF 2.21, Keras 3.15), so build them here.
      self.optimizer.build(self.variables)
      self.loss_sum = _sum_variable("loss_sum")
      self.correct = _sum_variable("correct")
      self.count = _sum_variable("count")

    replica_train = tf.function(self._replica_train_step,
                                jit_compile=jit_compile, reduce_retracing=True)
    replica_eval = tf.function(self._replica_eval_step,
                               jit_compile=jit_compile, reduce_retracing=True)

    def train_step(batch):
      return strategy.run(replica_train, args=batch)

    def eval_step(batch):
      return strategy.run(replica_eval, args=batch)

    self._train_step = tf.function(train_step, reduce_retracing=True)
    self._eval_step = tf.function(eval_step, reduce_retracing=True)

  def _replica_train_step(self, images, labels):
    context = tf.distribute.get_replica_context()
    local_count = tf.cast(tf.shape(labels)[0], tf.float32)
    global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, local_count)

    # Forward and loss. Each replica divides its loss sum by the global batch
    # size, and the optimizer sums gradients over replicas. The update is
    # therefore the gradient of the mean loss over the global batch for any
    # number of replicas, also for a partial last batch.
    with tf.GradientTape() as tape:
      logits = self.model(images, training=True)
      loss_sum = mse_loss_sum(logits, labels, self.num_classes)
      loss = loss_sum / global_count

    # Gradients with weight decay. The decay term is divided by the number of
    # replicas because the cross-replica gradient sum adds it once per replica.
    gradients = tape.gradient(loss, self.variables)
    decay = self.weight_decay / context.num_replicas_in_sync
    gradients = [g + decay * v for g, v in zip(gradients, self.variables)]
    self.optimizer.apply_gradients(zip(gradients, self.variables))

    # Metric updates.
    predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    self.loss_sum.assign_add(loss_sum)
    self.correct.assign_add(
        tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32)))
    self.count.assign_add(local_count)
    return loss

  def _replica_eval_step(self, images, labels):
    logits = self.model(images, training=False)
    predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    self.correct.assign_add(
        tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32)))
    self.count.assign_add(tf.cast(tf.shape(labels)[0], tf.float32))

  def reset_counters(self):
    for variable in (self.loss_sum, self.correct, self.count):
      variable.assign(tf.zeros_like(variable))

  def train_epoch(self, dataset, progress=None):
    """Train one epoch.

    Args:
      dataset: A `tf.data.Dataset` of global `(images, labels)` batches.
      progress: Optional `keras.utils.Progbar`, updated every step.

    Returns:
      `(mean_loss, accuracy, first_nonfinite_step)`, the last being the
      0-based step of the first non-finite loss in the epoch, or None. The
      epoch stops within `CHECK_EVERY` steps of a non-finite loss.
    """
    self.reset_counters()
    step_losses = []
    for step, batch in enumerate(
        self.strategy.experimental_distribute_dataset(dataset)):
      step_losses.append(self._train_step(batch))
      # Reading a loss waits for its step, so it is read only every
      # CHECK_EVERY steps (or every step when a progress bar shows it).
      if progress is not None or step % CHECK_EVERY == CHECK_EVERY - 1:
        loss = self._step_loss(step_losses[-1])
        if not np.isfinite(loss):
          break
        if progress is not None:
          progress.update(step + 1, values=[("loss", loss)])

    first_bad = None
    for step, per_replica_loss in enumerate(step_losses):
      if not np.isfinite(self._step_loss(per_replica_loss)):
        first_bad = step
        break
    count = float(self.count.read_value())
    mean_loss = float(self.loss_sum.read_value()) / max(count, 1.0)
    accuracy = float(self.correct.read_value()) / max(count, 1.0)
    return mean_loss, accuracy, first_bad

  def _step_loss(self, per_replica_loss):
    """Return the global mean loss of one step from its per-replica parts."""
    return float(sum(np.asarray(t) for t in
                     self.strategy.experimental_local_results(per_replica_loss)))

  def weights_finite(self):
    """Return whether every trainable variable is free of NaN and inf."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.variables)

  def evaluate(self, dataset):
    """Return the accuracy of the model in inference mode over a dataset."""
    self.reset_counters()
    for batch in self.strategy.experimental_distribute_dataset(dataset):
      self._eval_step(batch)
    return float(self.correct.read_value()) / max(float(self.count.read_value()), 1.0)


_DEFAULT_STRATEGY = []


def default_strategy():
  """Return the process-wide `MirroredStrategy` over all local GPUs or the CPU.

  Every new MirroredStrategy numbers its collective ops from the same keys
  (TF 2.21), so a second strategy over the same devices in one process can
  fail with "Shape mismatch in the collective instance". Runs in one
  process (sweeps, the ETF experiment) therefore share this one.
  """
  if not _DEFAULT_STRATEGY:
    _DEFAULT_STRATEGY.append(tf.distribute.MirroredStrategy())
  return _DEFAULT_STRATEGY[0]


def _check_config_matches(workdir, config):
  """Raise if the run directory contains a run with other settings."""
  path = os.path.join(workdir, "config.json")
  current = dataclasses.asdict(config)
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    stored = json.load(f)
  differences = sorted(
      name for name in current
      if name not in RESUMABLE_FIELDS
      and json.loads(json.dumps(current[name])) != stored.get(name))
  if differences:
    details = ", ".join(
        f"{name}: {stored.get(name)!r} there, {current[name]!r} now"
        for name in differences)
    raise ValueError(
        f"Run directory {workdir} contains a run with other settings "
        f"({details}). Pass a new --workdir, or delete the directory to start "
        "over.")


def _latest_checkpoint_epoch(path):
  """Return the epoch of a checkpoint path such as ".../ckpt-40", 0 for None."""
  if path is None:
    return 0
  return int(path.rsplit("-", 1)[-1])


def _use_jit(setting, strategy):
  if setting == "true":
    return True
  if setting == "false":
    return False
  # An XLA-compiled replica step failed on two logical CPU devices with
  # "Trying to access resource ... located in device CPU:1 from device CPU:0"
  # (TF 2.21), so compile only with a single replica.
  return strategy.num_replicas_in_sync == 1


def _format_duration(seconds):
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{seconds:02d}s"


def pad_size_for(model_name, dataset):
  """Return the side to zero-pad images to: 32 for conv nets on 28 x 28 data."""
  if model_name != "mlp" and dataset in ("mnist", "fashion_mnist"):
    return 32
  return None


def _check_workdir_path(workdir):
  """Raise ValueError if `workdir` is a file."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(
        f"workdir {workdir!r} is a file, not a directory; pass another "
        "--workdir or move the file.")


def _make_workdir(workdir):
  """Create the run directory `workdir`, or raise ValueError saying why not."""
  _check_workdir_path(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(
        f"workdir {workdir!r} cannot be created: {e.strerror or e}. Pass a "
        "--workdir in a folder you can write to.") from e


def run(config, strategy=None, extra_callbacks=(), flags_text=None):
  """Train one model and measure it, resuming an interrupted run.

  Args:
    config: A `RunConfig`.
    strategy: A `tf.distribute.Strategy`; defaults to `default_strategy()`,
      a MirroredStrategy over all local GPUs, or the CPU when there is none.
    extra_callbacks: Keras callbacks run after the built-in ones.
    flags_text: Resolved flags to write to `flags.txt`, reusable as a
      flagfile; not written when None.

  Returns:
    A `RunResult`.

  Raises:
    NonFiniteLossError: The loss became NaN or infinite; the message names the
      epoch and step. Checkpoints and metric files written before stay valid.
    ValueError: The run directory contains a run with other settings.
  """
  if strategy is None:
    strategy = default_strategy()
  workdir = config.workdir
  _check_workdir_path(workdir)
  _check_config_matches(workdir, config)

  # Data.
  splits = data_lib.load_dataset(
      config.dataset, data_dir=config.data_dir,
      examples_per_class=config.examples_per_class, seed=config.seed,
      pad_to=pad_size_for(config.model, config.dataset))
  if config.test_examples_per_class:
    keep = data_lib.balanced_subset(
        splits.y_test, splits.num_classes, config.test_examples_per_class,
        config.seed, split="test", option="test_examples_per_class")
    splits = dataclasses.replace(splits, x_test=splits.x_test[keep],
                                 y_test=splits.y_test[keep])
  pipeline = data_lib.TrainPipeline(
      splits.x_train, splits.y_train, config.batch_size, config.seed)
  test_batches = data_lib.eval_batches(
      splits.x_test, splits.y_test, config.eval_batch_size)
  logging.info("Data: %s, %d training and %d test images of shape %s, from %s.",
               config.dataset, len(splits.y_train), len(splits.y_test),
               splits.x_train.shape[1:], splits.source)

  # Model, under the strategy so that its variables are mirrored.
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    model = models_lib.build_model(
        config.model, splits.x_train.shape[1:], splits.num_classes,
        depth=None if config.model.startswith("resnet") else config.depth,
        width=config.width)
  total_weight_layers = len(probe_lib.probe_points(model))
  etf_callback = None
  if config.etf_layers > 0:
    from inc_tf import etf  # pylint: disable=g-import-not-at-top
    etf_callback = etf.FixTopLayersToETF(config.etf_layers)
    etf_callback.check(model)

  # The run directory is created only now, so that a run rejected for its
  # data or its model leaves no empty directory behind.
  _make_workdir(workdir)

  # Checkpoints: the epoch to resume from is known before callbacks start,
  # so that the measurement callback does not measure epoch 0 again.
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  epoch_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
  initial_epoch = _latest_checkpoint_epoch(
      tf.train.latest_checkpoint(checkpoint_dir))
  for name in ("history.jsonl", "metrics.jsonl", "onset.jsonl"):
    dropped = records.keep_epochs_up_to(os.path.join(workdir, name),
                                        initial_epoch)
    if dropped:
      logging.info("Dropped %d records of %s written after the checkpoint of "
                   "epoch %d; they will be written again.", dropped, name,
                   initial_epoch)

  # Callbacks.
  writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
  callback_objects = []
  if etf_callback is not None:
    callback_objects.append(etf_callback)
  measurement = callbacks_lib.CollapseMeasurement(
      train_data=data_lib.eval_batches(splits.x_train, splits.y_train,
                                       config.eval_batch_size),
      test_data=test_batches,
      num_classes=splits.num_classes,
      epochs=config.epochs_to_measure(),
      workdir=workdir,
      epsilon=config.epsilon,
      strategy=strategy,
      max_covariance_dim=config.max_covariance_dim,
      writer=writer)
  callback_objects.append(measurement)
  callback_objects.extend(extra_callbacks)
  callback_list = keras.callbacks.CallbackList(callback_objects, model=model)
  callback_list.set_params({
      "epochs": config.epochs, "steps": pipeline.steps_per_epoch,
      "initial_epoch": initial_epoch, "verbose": 0})

  # The ETF callback fixes and freezes kernels in on_train_begin, so the
  # optimizer is built afterwards on what is still trainable. The checkpoint,
  # if any, then overwrites every variable.
  callback_list.on_train_begin()

  # The settings are written only now, after data, model and callbacks were
  # set up, so that a run rejected at start-up (a missing file, an invalid
  # flag) does not lock the directory to its settings.
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)
  if flags_text is not None:
    with open(os.path.join(workdir, "flags.txt"), "w", encoding="utf-8") as f:
      f.write(flags_text)
  schedule = schedule_lib.WarmupStepDecay(
      config.lr, pipeline.steps_per_epoch, config.epochs,
      warmup_epochs=config.warmup_epochs, decay=config.lr_decay,
      decay_steps=config.lr_decay_steps)
  jit = _use_jit(config.jit_compile, strategy)
  trainer = Trainer(model, strategy, splits.num_classes, schedule,
                    config.momentum, config.weight_decay, jit)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=trainer.optimizer,
                                   epoch=epoch_variable)
  manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir,
                                       max_to_keep=3)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    logging.info("Resumed from %s (epoch %d).", manager.latest_checkpoint,
                 initial_epoch)
  logging.info("Training %s (%d parameters) on %d replica(s), XLA %s, "
               "epochs %d..%d.", model.name, model.count_params(),
               strategy.num_replicas_in_sync, "on" if jit else "off",
               initial_epoch + 1, config.epochs)

  history = records.read_jsonl(os.path.join(workdir, "history.jsonl"))
  last = history[-1] if history else {}
  train_accuracy = last.get("train_accuracy", float("nan"))
  test_accuracy = last.get("test_accuracy", float("nan"))
  start_time = time.time()
  interactive = sys.stderr.isatty()

  for epoch in range(initial_epoch + 1, config.epochs + 1):
    epoch_start = time.time()
    callback_list.on_epoch_begin(epoch - 1)
    progress = (keras.utils.Progbar(pipeline.steps_per_epoch, unit_name="step")
                if interactive else None)
    learning_rate = schedule.value((epoch - 1) * pipeline.steps_per_epoch)

    loss, train_accuracy, bad_step = trainer.train_epoch(
        pipeline.epoch(epoch), progress)
    if bad_step is not None:
      raise NonFiniteLossError(
          f"The training loss became non-finite at epoch {epoch}, step "
          f"{bad_step + 1} of {pipeline.steps_per_epoch} "
          f"(learning rate {learning_rate:g}). Lower --lr or --weight_decay; "
          f"files in {workdir} up to the last checkpoint are intact.")
    # The last update of an epoch can overflow the weights after the last
    # finite loss was computed, so the weights are checked too.
    if not trainer.weights_finite():
      raise NonFiniteLossError(
          f"The weights became non-finite in the last step of epoch {epoch} "
          f"(learning rate {learning_rate:g}). Lower --lr or --weight_decay; "
          f"files in {workdir} up to the last checkpoint are intact.")
    test_accuracy = trainer.evaluate(test_batches)
    seconds = time.time() - epoch_start

    logs = {"loss": loss, "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy, "learning_rate": learning_rate}
    callback_list.on_epoch_end(epoch - 1, logs)
    records.append_jsonl(os.path.join(workdir, "history.jsonl"),
                         {"epoch": epoch, **logs, "seconds": seconds})
    with writer.as_default(step=epoch):
      tf.summary.scalar("train/loss", loss)
      tf.summary.scalar("train/accuracy", train_accuracy)
      tf.summary.scalar("test/accuracy", test_accuracy)
      tf.summary.scalar("learning_rate", learning_rate)
    writer.flush()

    if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
      epoch_variable.assign(epoch)
      manager.save(checkpoint_number=epoch)

    elapsed = time.time() - start_time
    remaining = elapsed / (epoch - initial_epoch) * (config.epochs - epoch)
    logging.info(
        "epoch %d/%d: loss %.5f, train_accuracy %.4f, test_accuracy %.4f, "
        "lr %.4g, %.1f steps/s, ETA %s", epoch, config.epochs, loss,
        train_accuracy, test_accuracy, learning_rate,
        pipeline.steps_per_epoch / max(seconds, 1e-9),
        _format_duration(remaining))

  callback_list.on_train_end()
  writer.close()
  return RunResult(
      workdir=workdir,
      final_train_accuracy=train_accuracy,
      final_test_accuracy=test_accuracy,
      diverged=False,
      onset=measurement.final_onset(),
      total_weight_layers=total_weight_layers,
      epochs_completed=config.epochs)
