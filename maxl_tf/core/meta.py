"""The generator's hypergradient: how the meta loss moves with the generator's weights theta2.

The paper's (Eq. 3-4) differentiates through a one-step lookahead of the evaluator:

    theta1+ = theta1 - alpha * grad_theta1 [ L(f_pri(x; theta1), y) + L(f_aux(x; theta1), g(x, y; theta2)) ]
    meta    = L(f_pri(x; theta1+), y) + w_H * H(g(x, y; theta2))
    update  theta2 <- theta2 - beta * d meta / d theta2

d meta / d theta2 flows through theta1+, whose inner gradient depends on theta2 via the generated
labels:

    d meta / d theta2 = -alpha * d/d theta2 [ grad_theta1 L_in(theta1, theta2) . v ] + w_H * grad_theta2 H,
    v = grad L_pri(theta1+),

a mixed second derivative times a vector. Three functions compute or approximate it, with one
contract (gradients aligned with generator.trainable_variables, and a dict of scalars):

  second_order_meta_gradient  exact, a gradient of a gradient through two nested GradientTapes
  first_order_meta_gradient   the mixed product by a central finite difference (DARTS)
  implicit_meta_gradient      no lookahead: the implicit function theorem at the evaluator's
                              current weights, its inverse Hessian by a Neumann series (AuxiLearn)

Under a distribution strategy each replica holds a slice of the batches. Every vector the
evaluator's side builds (the inner gradient, the finite difference's direction, the Hessian-vector
products) and the batch's label usage (pbar of the entropy term) are averaged over replicas, so
every replica uses the vectors one device would compute on the whole batch; batch norm statistics
are synchronised by the models themselves. Each replica returns the gradient of its share of the
meta loss, and the replicas' gradients sum to the single-device one.

Every evaluator forward here runs in training mode through stateless_call (_fast_forward): batch
norm uses the batch's statistics and the evaluator's variables, moving statistics included, are
left untouched.
"""

import numpy as np
import tensorflow as tf

from maxl_tf.core import distribute
from maxl_tf.core import evaluator as evaluator_lib
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import losses
from maxl_tf.core import methods

# The finite difference's step is this radius over ||v||: theta1 moves by 1e-3 in norm whatever v's
# scale. DARTS and the authors' first-order script take 0.01, but ReLU and max-pool make the mixed
# derivative piecewise, and the difference's error grows with the radius until float32 rounding
# takes over below it (benchmarks/first_order_radius.py; docs/measurements.md).
FINITE_DIFFERENCE_RADIUS = 1e-3


def _fast_forward(model, weights, non_trainable, images):
    """Evaluator forward with the given weights, in training mode.

    Batch norm normalises with the batch's statistics; stateless_call returns the updated moving
    statistics instead of assigning them, and we drop them: the lookahead is hypothetical and
    must leave the evaluator untouched.
    """
    outputs, _ = model.stateless_call(weights, non_trainable, images, training=True)
    return evaluator_lib.outputs(outputs)


def _scaled(loss, loss_scale):
    return loss if loss_scale is None else loss * loss_scale


def _unscaled(grads, loss_scale):
    return grads if loss_scale is None else [g / tf.cast(loss_scale, g.dtype) for g in grads]


def _evaluator_values(evaluator):
    """The evaluator's (trainable, non-trainable) weights as tensors, for stateless calls."""
    return [v.value for v in evaluator.trainable_variables], [v.value for v in evaluator.non_trainable_variables]


def _inner_step(model, weights, non_trainable, images, pri_targets, aux_targets, inner_lr, gamma, loss_scale):
    """One SGD step of the evaluator's multi-task loss on copies of its weights.

    The inner gradient is averaged over replicas, so every replica steps to the same weights.
    Recorded by any enclosing tape, so the second-order gradient can see through it.

    Returns:
      (principal loss before the step, fast weights theta1+).
    """
    with tf.GradientTape() as inner:
        inner.watch(weights)
        pri_logits, aux_logits = _fast_forward(model, weights, non_trainable, images)
        loss_before = losses.focal_loss(pri_logits, pri_targets, gamma)
        scaled_inner_loss = _scaled(loss_before + losses.focal_loss(aux_logits, aux_targets, gamma), loss_scale)
    inner_grads = _unscaled(inner.gradient(scaled_inner_loss, weights), loss_scale)
    inner_grads = distribute.all_reduce_mean(inner_grads)
    fast_weights = [w - tf.cast(inner_lr, w.dtype) * g for w, g in zip(weights, inner_grads)]
    return loss_before, fast_weights


def _share(loss_scale):
    """What a replica's gradient of its meta loss is multiplied by: its share, times the loss scale."""
    replicas = distribute.num_replicas()
    return 1.0 / replicas if loss_scale is None else loss_scale / replicas


def second_order_meta_gradient(
    evaluator,
    generator,
    images,
    labels,
    mask_table,
    inner_lr,
    gamma=2.0,
    entropy_weight=0.2,
    loss_scale=None,
    lookahead_model=None,
):
    """Meta loss and its exact gradient with respect to the generator's weights.

    Args:
      evaluator, generator: Keras models (models/vgg.build_evaluator / build_generator).
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
        (models/vgg.build_evaluator with precision="float32"): the meta-gradient is a sum of inner
        products of nearly orthogonal gradients, which half precision cannot resolve.
    Returns:
      (gradients aligned with generator.trainable_variables, of this replica's share of the meta
       loss, times loss_scale; dict of scalars for this replica's slice: meta_loss, loss_before /
       loss_after = principal loss before / after the lookahead, entropy).
    """
    num_pri = mask_table.shape[0]
    pri_targets = tf.one_hot(labels, num_pri, dtype=images.dtype)
    lookahead_model = lookahead_model or evaluator
    weights, non_trainable = _evaluator_values(evaluator)
    # The outer tape sees the generator's variables and everything computed from them,
    # including the inner gradient, so it can differentiate through the lookahead.
    with tf.GradientTape() as outer:
        generated = labels_lib.generated_labels(generator, images, labels, mask_table, training=True)
        loss_before, fast_weights = _inner_step(
            lookahead_model, weights, non_trainable, images, pri_targets, generated, inner_lr, gamma, loss_scale
        )
        pri_logits_after, _ = _fast_forward(lookahead_model, fast_weights, non_trainable, images)
        loss_after = losses.focal_loss(pri_logits_after, pri_targets, gamma)
        entropy = losses.entropy_regulariser(generated)  # pbar over the global batch
        meta_loss = loss_after + entropy_weight * entropy
        objective = _scaled(distribute.replica_share(meta_loss), loss_scale)
    grads = outer.gradient(objective, generator.trainable_variables)
    return grads, {"meta_loss": meta_loss, "loss_before": loss_before, "loss_after": loss_after, "entropy": entropy}


def first_order_meta_gradient(
    evaluator,
    generator,
    images,
    labels,
    mask_table,
    inner_lr,
    gamma=2.0,
    entropy_weight=0.2,
    loss_scale=None,
    lookahead_model=None,
    radius=FINITE_DIFFERENCE_RADIUS,
):
    """Meta loss and its gradient with the mixed second derivative by a central finite difference.

    Approximates second_order_meta_gradient's gradient as DARTS does (Liu et al., 2019), with
    theta1 the evaluator's current weights and v = grad L_pri(theta1+) on the meta batch:

        d meta / d theta2 ~= -alpha * [grad_theta2 L_in(theta1 + eps v) - grad_theta2 L_in(theta1 - eps v)] / (2 eps)
                             + w_H * grad_theta2 H,        eps = radius / ||v||,

    with an O(eps^2) error where the network is smooth; the ReLU and max-pool kinks the step
    crosses add an O(eps) one (FINITE_DIFFERENCE_RADIUS says how the radius was chosen). L_in
    depends on theta2 only through the generated labels, and linearly (the auxiliary focal loss
    is a sum over targets), so each gradient in brackets is the auxiliary loss's slope in the
    labels at the shifted weights, an evaluator forward with no evaluator backward, and the
    generator is differentiated once, through the difference of the slopes plus the entropy term.
    The entropy term's gradient is kept: the authors' model_vgg_maxl_firstorder.py overwrites the
    generator's gradient with the finite-difference term alone, so there the entropy regulariser
    never reaches the generator.

    Cost, in convolutions of VGG-16 as BUILD.md counts the second-order step (a forward 13, a
    backward 25): generator forward 13, inner forward and backward 38, lookahead forward and
    backward 38, two shifted forwards 26, generator backward 25: 140. The second-order step
    counts 139: the same without the shifted forwards, plus its second-order pass, the inner
    backward's transpose in its incoming gradient (25). So the finite difference saves no
    arithmetic; it saves memory: the second-order step keeps the inner forward and backward and
    the lookahead's activations until its outer backward, this one one network's graph at a time.

    Args:
      as second_order_meta_gradient's, and
      radius: ||theta1 +- eps v - theta1||, the finite difference's step in weight space.
    Returns:
      as second_order_meta_gradient's.
    """
    num_pri = mask_table.shape[0]
    pri_targets = tf.one_hot(labels, num_pri, dtype=images.dtype)
    lookahead_model = lookahead_model or evaluator
    weights, non_trainable = _evaluator_values(evaluator)
    with tf.GradientTape() as tape:
        generated = labels_lib.generated_labels(generator, images, labels, mask_table, training=True)
        entropy = losses.entropy_regulariser(generated)  # pbar over the global batch
    # Nothing below is recorded: the evaluator's side reaches the generator only as the
    # coefficient of the generated labels in the final backward.
    loss_before, fast_weights = _inner_step(
        lookahead_model, weights, non_trainable, images, pri_targets, generated, inner_lr, gamma, loss_scale
    )
    with tf.GradientTape() as lookahead:
        lookahead.watch(fast_weights)
        pri_logits_after, _ = _fast_forward(lookahead_model, fast_weights, non_trainable, images)
        loss_after = losses.focal_loss(pri_logits_after, pri_targets, gamma)
        scaled_loss_after = _scaled(loss_after, loss_scale)
    # The auxiliary head does not reach the principal loss: its part of v is 0.
    direction = distribute.all_reduce_mean(
        _unscaled(
            lookahead.gradient(scaled_loss_after, fast_weights, unconnected_gradients=tf.UnconnectedGradients.ZERO),
            loss_scale,
        )
    )  # v
    norm = tf.linalg.global_norm(direction)
    eps = tf.cast(radius, norm.dtype) / tf.maximum(norm, np.finfo(norm.dtype.as_numpy_dtype).tiny)

    def label_slope(sign):
        """d L_aux / d labels at theta1 + sign * eps * v. [batch, aux]"""
        shifted = [w + sign * eps * v for w, v in zip(weights, direction)]
        _, aux_logits = _fast_forward(lookahead_model, shifted, non_trainable, images)
        with tf.GradientTape() as slope:
            slope.watch(generated)
            aux_loss = losses.focal_loss(aux_logits, generated, gamma)
        return slope.gradient(aux_loss, generated)

    difference = label_slope(1.0) - label_slope(-1.0)
    coefficient = -tf.cast(inner_lr, difference.dtype) * difference / (2 * tf.cast(eps, difference.dtype))
    share = _share(loss_scale)
    grads = tape.gradient(
        [generated, entropy],
        generator.trainable_variables,
        output_gradients=[
            coefficient * tf.cast(share, coefficient.dtype),
            tf.cast(entropy_weight * share, entropy.dtype),
        ],
    )
    return grads, {
        "meta_loss": loss_after + entropy_weight * entropy,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "entropy": entropy,
    }


def neumann_inverse_hvp(hessian_product, vector, step_size, terms):
    """step_size * sum_{j=0..terms} (I - step_size * H)^j vector: H^{-1} vector by a truncated Neumann series.

    The series converges to H^{-1} vector when every eigenvalue of H lies in (0, 2 / step_size)
    (on the part of the space vector spans). Truncated, it is where terms + 1 steps of gradient
    descent of step_size on the quadratic u'Hu / 2 - vector'u lead from u = 0, which stays finite
    for a few terms where H has negative eigenvalues or ones above 2 / step_size.

    Args:
      hessian_product: function taking a list of tensors u to the list H u.
      vector: list of tensors (shaped like the weights).
      step_size: alpha.
      terms: K, a Python int >= 0; K Hessian-vector products.
    Returns:
      list of tensors shaped like vector.
    """
    term = total = list(vector)
    for _ in range(terms):
        term = [t - tf.cast(step_size, t.dtype) * p for t, p in zip(term, hessian_product(term))]
        total = [s + t for s, t in zip(total, term)]
    return [tf.cast(step_size, s.dtype) * s for s in total]


def implicit_meta_gradient(
    evaluator,
    generator,
    train_images,
    train_labels,
    meta_images,
    meta_labels,
    mask_table,
    inner_lr,
    gamma=2.0,
    entropy_weight=0.2,
    loss_scale=None,
    lookahead_model=None,
    neumann_terms=3,
):
    """Meta loss and its implicit hypergradient at the evaluator's current weights (AuxiLearn).

    Navon et al. (ICLR 2021): if the evaluator's weights theta1 minimise its training loss L_T
    (principal plus auxiliary focal losses, the generator's labels as targets), they move with
    theta2 as d theta1 / d theta2 = -H^{-1} d^2 L_T / d theta1 d theta2 (implicit function theorem,
    H = d^2 L_T / d theta1^2), so for the principal loss L_M on the meta batch

        d meta / d theta2 = -d/d theta2 [ grad_theta1 L_T . w ] + w_H * grad_theta2 H,
        w = H^{-1} grad_theta1 L_M ~= alpha * sum_{j=0..K} (I - alpha H)^j grad_theta1 L_M,

    at the current weights, without a lookahead; K = neumann_terms. Between steps the weights
    are not at a minimum of L_T, so this is an approximation whose error the truncation at K
    bounds: K = 0 gives w = alpha * grad L_M, the one-step lookahead's hypergradient with v taken
    at theta1 instead of theta1+ (and the inner step's loss on the training batch).

    Which step size: alpha is the evaluator's learning rate. Each Neumann term is a gradient
    step of the quadratic model of L_T, which is stable for the step size the evaluator trains
    with (the largest curvature SGD tolerates), and K = 0 then matches the lookahead's scale, so
    the generator's learning rate means the same for every hypergradient. AuxiLearn also uses
    the inner learning rate, but drops the leading alpha (a constant factor on the
    hypergradient); we keep it so the series converges to H^{-1} g itself.

    Which batches: L_T and so H and the mixed derivative on the training batch the evaluator
    just stepped on (the lower-level problem is the evaluator's training, and these are the
    labels it trained against), L_M on the meta batch (the upper-level objective, data the
    evaluator does not train on). The generator labels the training batch, in training mode as
    in the other meta steps, and the entropy term is over those labels: they are the ones the
    evaluator learns, whose collapse the regulariser prevents.

    Cost, in convolutions of VGG-16 as BUILD.md counts the second-order step (a forward 13, a
    backward 25): generator forward 13, meta-batch forward and backward 38, training-batch
    forward and backward 38, each Hessian-vector product 75 (back through the gradient's
    backward, 50, and its forward, 25), the mixed derivative 25 (the gradient's backward
    transposed in its incoming gradient, as in the second-order pass), generator backward 25:
    139 + 75K, the second-order step's 139 at K = 0.

    Batch norm: the Hessian-vector products differentiate batch norm's backward in its input,
    which the lookahead never does. TensorFlow's fused kernel (models/vgg.BatchNormalization in
    float32, the float32 twin under mixed precision) and Keras' synchronised statistics get that
    second derivative right; Keras' unsynchronised path, used in float64, computes the variance
    with the mean's gradient stopped (tf.nn.moments), exact to first order only, so float64
    checks of this function build their models with synchronized_bn=True.

    Args:
      evaluator, generator: Keras models (models/vgg.build_evaluator / build_generator).
      train_images: [batch, H, W, C] the training batch (this replica's slice); train_labels: [batch] int.
      meta_images, meta_labels: the meta batch, likewise.
      mask_table: [pri, aux] psi_mask.
      inner_lr: alpha, the evaluator's current learning rate.
      gamma, entropy_weight, loss_scale, lookahead_model: as second_order_meta_gradient's. Under
        mixed precision the Hessian-vector products, like the lookahead, need the float32 twin.
      neumann_terms: K >= 0, a Python int: the number of Hessian-vector products.
    Returns:
      (gradients aligned with generator.trainable_variables, of this replica's share of the meta
       loss, times loss_scale; dict of scalars for this replica's slices: meta_loss = L_M + w_H * H,
       loss_before = loss_after = L_M (no lookahead: both are the principal loss on the meta
       batch at the current weights), entropy).
    """
    num_pri = mask_table.shape[0]
    model = lookahead_model or evaluator
    weights, non_trainable = _evaluator_values(evaluator)
    with tf.GradientTape() as meta_tape:
        meta_tape.watch(weights)
        pri_logits, _ = _fast_forward(model, weights, non_trainable, meta_images)
        meta_pri_loss = losses.focal_loss(pri_logits, tf.one_hot(meta_labels, num_pri, dtype=meta_images.dtype), gamma)
        scaled_meta_loss = _scaled(meta_pri_loss, loss_scale)
    meta_grads = distribute.all_reduce_mean(
        _unscaled(  # grad_theta1 L_M, 0 on the auxiliary head
            meta_tape.gradient(scaled_meta_loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO),
            loss_scale,
        )
    )
    # The outer tape records the training loss's gradient as a function of theta1 (for the
    # Hessian-vector products) and of theta2 through the generated labels (for the mixed one).
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(weights)
        generated = labels_lib.generated_labels(generator, train_images, train_labels, mask_table, training=True)
        entropy = losses.entropy_regulariser(generated)  # pbar over the global batch
        with tf.GradientTape() as inner:
            inner.watch(weights)
            pri_logits, aux_logits = _fast_forward(model, weights, non_trainable, train_images)
            train_loss = losses.focal_loss(
                pri_logits, tf.one_hot(train_labels, num_pri, dtype=train_images.dtype), gamma
            ) + losses.focal_loss(aux_logits, generated, gamma)
            scaled_train_loss = _scaled(train_loss, loss_scale)
        scaled_train_grads = inner.gradient(scaled_train_loss, weights)

    def hessian_product(vector):
        products = outer.gradient(scaled_train_grads, weights, output_gradients=vector)
        return distribute.all_reduce_mean(_unscaled(products, loss_scale))

    solution = neumann_inverse_hvp(hessian_product, meta_grads, inner_lr, neumann_terms)  # w
    share = _share(loss_scale)
    # One generator backward for both terms; scaled_train_grads already carry the loss scale.
    grads = outer.gradient(
        [*scaled_train_grads, entropy],
        generator.trainable_variables,
        output_gradients=[-w * tf.cast(1.0 / distribute.num_replicas(), w.dtype) for w in solution]
        + [tf.cast(entropy_weight * share, entropy.dtype)],
    )
    return grads, {
        "meta_loss": meta_pri_loss + entropy_weight * entropy,
        "loss_before": meta_pri_loss,
        "loss_after": meta_pri_loss,
        "entropy": entropy,
    }


# One signature for the three, keyed by methods.HYPERGRADIENTS' names:
#   fn(evaluator, generator, train_batch, meta_batch, mask_table, inner_lr, neumann_terms, **options)
# train_batch is the batch the evaluator just stepped on (only the implicit one reads it); options
# are gamma, entropy_weight, loss_scale and lookahead_model.
def _with_lookahead(meta_gradient):
    def hypergradient(evaluator, generator, train_batch, meta_batch, mask_table, inner_lr, neumann_terms, **options):
        del train_batch, neumann_terms  # the lookahead steps on the meta batch itself
        return meta_gradient(
            evaluator, generator, meta_batch["images"], meta_batch["labels"], mask_table, inner_lr, **options
        )

    return hypergradient


def _implicit(evaluator, generator, train_batch, meta_batch, mask_table, inner_lr, neumann_terms, **options):
    if train_batch is None:
        raise ValueError("the implicit hypergradient needs the training batch the evaluator stepped on")
    return implicit_meta_gradient(
        evaluator,
        generator,
        train_batch["images"],
        train_batch["labels"],
        meta_batch["images"],
        meta_batch["labels"],
        mask_table,
        inner_lr,
        neumann_terms=neumann_terms,
        **options,
    )


HYPERGRADIENTS = {
    "second_order": _with_lookahead(second_order_meta_gradient),
    "first_order": _with_lookahead(first_order_meta_gradient),
    "implicit": _implicit,
}
assert tuple(HYPERGRADIENTS) == methods.HYPERGRADIENTS, "core/methods.py names the same hypergradients"
