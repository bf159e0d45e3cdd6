"""Learning-rate schedule: linear warm-up, then step decay at fixed epochs."""

import math

import keras
from keras import ops


def decay_boundaries(epochs, decay_steps):
  """Return the epochs at which the rate is multiplied by the decay factor.

  Args:
    epochs: Total training epochs.
    decay_steps: Number of equal parts training is cut into; the rate decays
      at the start of every part but the first.

  Returns:
    A tuple of `decay_steps - 1` epoch boundaries `i * epochs / decay_steps`,
    as floats, for `i = 1 .. decay_steps - 1`.
  """
  return tuple(i * epochs / decay_steps for i in range(1, decay_steps))


class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 to `peak_lr`, then multiply by `decay` at boundaries.

  During the first `warmup_epochs` epochs the rate of update `s` (0-based)
  is `peak_lr * (s + 1) / warmup_steps`, so it reaches `peak_lr` on the last
  warm-up batch and the first update is not wasted at rate 0. After that the
  rate is `peak_lr * decay**k`, where `k` counts the boundaries of
  `decay_boundaries(epochs, decay_steps)` at or below the current epoch
  (`update // steps_per_epoch`).

  Args:
    peak_lr: Rate after warm-up, before any decay.
    steps_per_epoch: Optimizer updates per epoch.
    epochs: Total training epochs.
    warmup_epochs: Epochs of warm-up; 0 disables it.
    decay: Multiplicative factor at each boundary, in (0, 1].
    decay_steps: Number of equal parts; 1 disables decay.
  """

  def __init__(self, peak_lr, steps_per_epoch, epochs, warmup_epochs=1,
               decay=0.1, decay_steps=3):
    if steps_per_epoch < 1:
      raise ValueError(
          f"steps_per_epoch must be at least 1, got {steps_per_epoch}; "
          "use a batch size no larger than the training set.")
    if decay_steps < 1:
      raise ValueError(f"decay_steps must be at least 1, got {decay_steps}.")
    self.peak_lr = float(peak_lr)
    self.steps_per_epoch = int(steps_per_epoch)
    self.epochs = int(epochs)
    self.warmup_epochs = int(warmup_epochs)
    self.decay = float(decay)
    self.decay_steps = int(decay_steps)

  def __call__(self, step):
    step = ops.cast(step, "float32")
    epoch = ops.floor(step / self.steps_per_epoch)

    decays = ops.zeros((), "float32")
    for boundary in decay_boundaries(self.epochs, self.decay_steps):
      decays = decays + ops.cast(epoch >= boundary, "float32")
    rate = self.peak_lr * ops.power(self.decay, decays)

    warmup_steps = self.warmup_epochs * self.steps_per_epoch
    if warmup_steps > 0:
      warmup_rate = self.peak_lr * (step + 1.0) / warmup_steps
      rate = ops.where(step < warmup_steps, warmup_rate, rate)
    return rate

  def value(self, step):
    """Return the rate of update `step` as a Python float, without TensorFlow."""
    warmup_steps = self.warmup_epochs * self.steps_per_epoch
    if step < warmup_steps:
      return self.peak_lr * (step + 1) / warmup_steps
    epoch = step // self.steps_per_epoch
    decays = sum(1 for b in decay_boundaries(self.epochs, self.decay_steps)
                 if epoch >= b)
    return self.peak_lr * math.pow(self.decay, decays)

  def get_config(self):
    return {
        "peak_lr": self.peak_lr,
        "steps_per_epoch": self.steps_per_epoch,
        "epochs": self.epochs,
        "warmup_epochs": self.warmup_epochs,
        "decay": self.decay,
        "decay_steps": self.decay_steps,
    }
