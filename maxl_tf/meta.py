"""The generator's hypergradient through a one-step lookahead of the evaluator (paper Eq. 3-4).

    theta1+ = theta1 - alpha * grad_theta1 [ L(f_pri(x; theta1), y) + L(f_aux(x; theta1), g(x, y; theta2)) ]
    meta    = L(f_pri(x; theta1+), y) + w_H * H(g(x, y; theta2))
    update  theta2 <- theta2 - beta * d meta / d theta2

d meta / d theta2 flows through theta1+, whose inner gradient depends on theta2 via the generated
labels: a gradient of a gradient (second order), taken with two nested GradientTapes.

Under a distribution strategy each replica holds a slice of the meta batch. The inner gradient
and the batch's label usage (pbar of the entropy term) are averaged over replicas, so every
replica steps to the same theta1+ that one device would reach on the whole batch; batch norm
statistics are synchronised by the models themselves. The all-reduces are differentiable, so the
outer tape sees through them and the replicas' meta-gradients sum to the single-device one.
"""
import tensorflow as tf

from maxl_tf import distribute
from maxl_tf import labels as labels_lib
from maxl_tf import losses
from maxl_tf import models


def _fast_forward(model, weights, non_trainable, images):
    """Evaluator forward with the given weights, in training mode.

    Batch norm normalises with the batch's statistics; stateless_call returns the updated moving
    statistics instead of assigning them, and we drop them: the lookahead is hypothetical and
    must leave the evaluator untouched.
    """
    outputs, _ = model.stateless_call(weights, non_trainable, images, training=True)
    return models.evaluator_outputs(outputs)


def second_order_meta_gradient(evaluator, generator, images, labels, mask_table, inner_lr,
                               gamma=2.0, entropy_weight=0.2, loss_scale=None, lookahead_model=None):
    """Meta loss and its exact gradient with respect to the generator's weights.

    Args:
      evaluator, generator: Keras models (models.build_evaluator / build_generator).
      images: [batch, H, W, C] meta batch (this replica's slice); labels: [batch] int principal labels.
      mask_table: [pri, aux] psi_mask.
      inner_lr: step size alpha of the lookahead: the evaluator's current learning rate.
      gamma: focal-loss focusing parameter (0 = cross-entropy).
      entropy_weight: w_H, weight of the entropy regulariser (0 disables it).
      loss_scale: float16 loss scale (None: no scaling). Both backward passes run on scaled
        losses so half-precision gradients do not underflow; the inner gradient is unscaled
        before the lookahead, the returned gradients are left scaled for a LossScaleOptimizer.
      lookahead_model: the network that runs the lookahead with the evaluator's weights
        (default: the evaluator itself). Under mixed precision, a float32 twin
        (models.build_evaluator with precision="float32"): the meta-gradient is a sum of inner
        products of nearly orthogonal gradients, which half precision cannot resolve.
    Returns:
      (gradients aligned with generator.trainable_variables, of this replica's share of the meta
       loss, times loss_scale; dict of scalars for this replica's slice: meta_loss, loss_before /
       loss_after = principal loss before / after the lookahead, entropy).
    """
    num_pri = mask_table.shape[0]
    pri_targets = tf.one_hot(labels, num_pri, dtype=images.dtype)
    lookahead_model = lookahead_model or evaluator
    weights = [v.value for v in evaluator.trainable_variables]
    non_trainable = [v.value for v in evaluator.non_trainable_variables]
    scale = (lambda loss: loss) if loss_scale is None else (lambda loss: loss * loss_scale)
    # The outer tape sees the generator's variables and everything computed from them,
    # including the inner gradient, so it can differentiate through the lookahead.
    with tf.GradientTape() as outer:
        generated = labels_lib.generated_labels(generator, images, labels, mask_table, training=True)
        # The inner tape differentiates the evaluator's multi-task loss w.r.t. its weights.
        with tf.GradientTape() as inner:
            inner.watch(weights)
            pri_logits, aux_logits = _fast_forward(lookahead_model, weights, non_trainable, images)
            loss_before = losses.focal_loss(pri_logits, pri_targets, gamma)
            scaled_inner_loss = scale(loss_before + losses.focal_loss(aux_logits, generated, gamma))
        inner_grads = inner.gradient(scaled_inner_loss, weights)
        if loss_scale is not None:
            inner_grads = [g / tf.cast(loss_scale, g.dtype) for g in inner_grads]
        inner_grads = distribute.all_reduce_mean(inner_grads)
        fast_weights = [w - tf.cast(inner_lr, w.dtype) * g for w, g in zip(weights, inner_grads)]
        pri_logits_after, _ = _fast_forward(lookahead_model, fast_weights, non_trainable, images)
        loss_after = losses.focal_loss(pri_logits_after, pri_targets, gamma)
        entropy = losses.entropy_regulariser(generated)   # pbar over the global batch
        meta_loss = loss_after + entropy_weight * entropy
        objective = scale(distribute.replica_share(meta_loss))
    grads = outer.gradient(objective, generator.trainable_variables)
    return grads, {"meta_loss": meta_loss, "loss_before": loss_before, "loss_after": loss_after,
                   "entropy": entropy}
