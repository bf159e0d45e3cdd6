"""Tests of the learning-rate schedule."""

import numpy as np
import pytest

from inc_tf import schedule


def test_decay_boundaries_thirds():
  assert schedule.decay_boundaries(300, 3) == (100.0, 200.0)
  assert schedule.decay_boundaries(10, 1) == ()


def test_warmup_is_linear_from_first_batch():
  rates = schedule.WarmupStepDecay(0.1, steps_per_epoch=4, epochs=9)
  np.testing.assert_allclose([rates.value(s) for s in range(5)],
                             [0.025, 0.05, 0.075, 0.1, 0.1])


@pytest.mark.parametrize("epoch,expected", [
    (1, 0.1), (2, 0.1), (3, 0.02), (5, 0.02), (6, 0.004), (8, 0.004)])
def test_step_decay_by_epoch(epoch, expected):
  rates = schedule.WarmupStepDecay(0.1, steps_per_epoch=4, epochs=9,
                                   decay=0.2, decay_steps=3)
  assert rates.value(epoch * 4) == pytest.approx(expected)
  assert rates.value(epoch * 4 + 3) == pytest.approx(expected)


def test_tensor_schedule_matches_python_values():
  rates = schedule.WarmupStepDecay(0.05, steps_per_epoch=3, epochs=7,
                                   warmup_epochs=2, decay=0.1, decay_steps=2)
  steps = np.arange(7 * 3)
  tensor_values = [float(rates(int(s))) for s in steps]
  np.testing.assert_allclose(tensor_values, [rates.value(s) for s in steps],
                             rtol=1e-6)


def test_no_warmup_starts_at_peak():
  rates = schedule.WarmupStepDecay(0.3, steps_per_epoch=2, epochs=4,
                                   warmup_epochs=0, decay_steps=1)
  assert rates.value(0) == pytest.approx(0.3)
  assert float(rates(0)) == pytest.approx(0.3)


def test_invalid_steps_per_epoch_raises():
  with pytest.raises(ValueError, match="steps_per_epoch must be at least 1, got 0"):
    schedule.WarmupStepDecay(0.1, steps_per_epoch=0, epochs=3)
