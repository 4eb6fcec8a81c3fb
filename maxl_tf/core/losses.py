"""Losses as pure tensor functions, written by hand so second-order gradients exist.

TensorFlow's fused soft-target cross-entropies (tf.nn.softmax_cross_entropy_with_logits, Keras'
categorical cross-entropy from logits) have no gradient of their gradient with respect to the
labels: the generator's meta-gradient would come out exactly zero, silently. Everything here is
built from elementwise ops and (log-)softmax, which differentiate twice.
"""

import numpy as np
import tensorflow as tf

from maxl_tf.core import distribute


def _full_precision(x):
    """Half-precision inputs are computed in float32; float32/float64 stay as they are."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def masked_softmax(logits, mask):
    """Softmax restricted to the classes where mask is 1 (paper Section 3.3).

    Masked-out classes get probability exactly 0. Unlike exp(M * logits) / sum(...) as printed in
    the paper, which would leave exp(0) = 1 on every masked class, this normalises over the
    allowed block only, as the authors' code does.

    Args:
      logits: [batch, aux] generator outputs.
      mask: [batch, aux] 0/1, the row of psi_mask for each example's principal label.
    Returns:
      [batch, aux] probabilities; each row sums to 1 over its block.
    """
    logits = _full_precision(logits)
    mask = tf.cast(mask, logits.dtype)
    # Shift by the max over allowed classes only, so an allowed block far below the global max
    # cannot underflow to 0/0.
    shift = tf.reduce_max(tf.where(mask > 0, logits, logits.dtype.min), axis=-1, keepdims=True)
    unnormalised = tf.exp(tf.minimum(logits - tf.stop_gradient(shift), 0.0)) * mask
    return unnormalised / tf.reduce_sum(unnormalised, axis=-1, keepdims=True)


def focal_loss(logits, targets, gamma=2.0):
    """Mean over the batch of -sum_k y_k (1 - p_k)^gamma log p_k, p = softmax(logits) (paper Eq. 1).

    gamma=0 is the ordinary cross-entropy. Targets may be soft (generated labels) and the loss is
    differentiable twice in both arguments.

    Args:
      logits: [batch, classes].
      targets: [batch, classes] probabilities (one-hot or soft).
    Returns:
      scalar, float32 (float64 for float64 inputs).
    """
    logits = _full_precision(logits)
    targets = tf.cast(targets, logits.dtype)
    log_p = tf.nn.log_softmax(logits, axis=-1)
    weight = 1.0
    if gamma:
        # 1 - p, accurate near p = 1 and clamped away from 0: for gamma < 1 the gradient of
        # (1 - p)^gamma is infinite at a saturated prediction, and inf * 0 would be NaN.
        tiny = np.finfo(logits.dtype.as_numpy_dtype).tiny
        weight = tf.maximum(-tf.math.expm1(log_p), tiny) ** gamma
    return tf.reduce_mean(-tf.reduce_sum(targets * weight * log_p, axis=-1))


def entropy_regulariser(generated_labels):
    """sum_k pbar_k log pbar_k, pbar = batch mean of the generated labels (paper Eq. 5).

    This is the negative entropy of the batch's label usage: minimising it spreads the generator's
    assignments over all auxiliary classes, which counters the collapsing-class problem (3.4).
    Under a distribution strategy pbar is the mean over the whole global batch (an all-reduce
    across replicas, differentiable); elsewhere it is this batch's mean.

    Args:
      generated_labels: [batch, aux] probabilities (this replica's slice).
    Returns:
      scalar in [-log(aux), 0].
    """
    mean = distribute.all_reduce_mean(tf.reduce_mean(_full_precision(generated_labels), axis=0))
    return tf.reduce_sum(mean * tf.math.log(mean + 1e-12))


def accuracy(logits, labels):
    """Fraction of argmax(logits) == labels. labels: [batch] int."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int64)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32))
