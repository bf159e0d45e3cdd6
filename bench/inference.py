"""The plain inference pass that the measurement benchmarks compare against."""

import tensorflow as tf


def inference_pass(model, jit_compile):
  """Return a `tf.function(dataset)` that runs `model` over every batch.

  Each batch runs forward with `training=False`, and only a cheap reduction
  of the logits is kept, as `model.predict` would without collecting them.

  Args:
    model: Keras classifier whose output is the logits.
    jit_compile: Whether the per-batch forward pass is XLA-compiled.
  """
  def forward(images):
    logits = model(images, training=False)
    return tf.reduce_sum(tf.argmax(logits, axis=-1))

  if jit_compile:
    forward = tf.function(forward, jit_compile=True)

  @tf.function
  def run(dataset):
    total = tf.constant(0, tf.int64)
    for images, _ in dataset:
      total += forward(images)
    return total

  return run
