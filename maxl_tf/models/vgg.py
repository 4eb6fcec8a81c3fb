"""The two networks of MAXL: a multi-task evaluator and a label generator, both VGG-BN.

Architecture as in the authors' code: conv3x3 + batch norm + ReLU blocks, a 2x2 max-pool after
each block, flatten, and per task a head Dense(hidden) - ReLU - Dense(classes), hidden as wide as
the features (models/heads.py's heads, as any backbone's). Batch norm uses PyTorch's constants
(epsilon 1e-5, momentum 0.1, i.e. Keras momentum 0.9): Keras' defaults (1e-3, 0.99) make the
moving statistics lag badly in short runs.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import evaluator as evaluator_lib
from maxl_tf.models import heads
from maxl_tf.models import pixels
from maxl_tf.models.names import ARCHITECTURES

TRUNK_PREFIX = evaluator_lib.TRUNK_PREFIX
# Input dtypes TensorFlow's fused batch-norm kernel takes (its statistics are float32).
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


# Registered so that a saved .keras file of either network loads (exports.py).
@keras.saving.register_keras_serializable(package="maxl_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' batch norm, computed by TensorFlow's fused kernel (FusedBatchNormV3) where it can be.

    Keras 3 builds batch norm from moments and elementwise ops, several passes over the
    activations forward and more backward; the fused kernel does one, and its backward one more,
    also in the meta step's second-order pass (_fused_batch_norm_training). Same variables, names
    and checkpoint layout as Keras' layer, the same normalisation (batch variance without
    Bessel's correction, exactly `epsilon`) and the same moving-statistics update. Keras' own
    computation serves what the kernel does not take: float64 (the finite-difference tests),
    synchronised replicas, masks, other layouts.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype in _FUSED_DTYPES
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if not (training and self.trainable):
            outputs, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs,
                scale=scale,
                offset=offset,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
            return tf.cast(outputs, self.compute_dtype)
        outputs, mean, unbiased_variance = _fused_batch_norm_training(inputs, scale, offset, self.epsilon)
        # The kernel normalises with the biased batch variance but returns the unbiased one;
        # Keras' moving variance follows the biased one.
        count = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32)  # N * H * W
        variance = unbiased_variance * tf.maximum(count - 1.0, 1.0) / count
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + tf.cast(batch, moving.dtype) * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


@contextlib.contextmanager
def custom_gradients_released():
    """Forgets, on leaving, the gradient functions tf.custom_gradient registered meanwhile.

    In a traced function, each call of a tf.custom_gradient function registers its gradient
    under a new name in TensorFlow's global gradient registry, which never lets go: the closure
    keeps the whole traced graph alive (about 18 MiB per smoke run, so a sweep process grew run
    by run: docs/measurements.md). Once the functions traced inside are dropped, nothing looks
    those names up again. A private registry; where it is missing, nothing is done.
    """
    from tensorflow.python.framework import ops as tf_ops

    registry = getattr(getattr(tf_ops, "_gradient_registry", None), "_registry", None)
    before = set(registry) if isinstance(registry, dict) else None
    try:
        yield
    finally:
        if before is not None:
            for name in set(registry) - before:
                if name.startswith("CustomGradient-"):
                    del registry[name]


def _fused_batch_norm_training(x, scale, offset, epsilon):
    """Training-mode batch norm by the fused kernel, with a fused second-order gradient.

    Returns (normalised x, batch mean, unbiased batch variance); the statistics feed only the
    moving averages and carry no gradient, as in TensorFlow's registered gradient. What this adds
    to the registered gradients is a fused second-order term: see _fused_batch_norm_backward.
    The statistics bypass custom_gradient's identity node, which would otherwise keep grappler
    from fusing the kernel with the ReLU that follows it.
    """
    empty = tf.zeros([0])
    statistics = []  # (mean, variance), passed around custom_gradient so it wraps y alone

    @tf.custom_gradient
    def normalise(x, scale, offset):
        # Not tf.compat.v1.nn.fused_batch_norm: it raises epsilon to cuDNN's old minimum 1.001e-5.
        y, mean, variance, *reserve = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=scale,
            offset=offset,
            mean=empty,
            variance=empty,
            epsilon=epsilon,
            data_format="NHWC",
            is_training=True,
        )
        statistics.extend([mean, variance])
        return y, lambda dy: _fused_batch_norm_backward(dy, x, scale, reserve, epsilon)

    y = normalise(x, scale, offset)
    return y, *statistics


def _fused_batch_norm_backward(dy, x, scale, reserve, epsilon):
    """(dx, dscale, doffset) of training-mode batch norm, whose own gradient in dy is fused.

    The backward is linear in dy: dx = A dy with A = scale / sigma * (I - 11'/N - xhat xhat'/N)
    per channel, dscale = sum(dy * xhat), doffset = sum(dy). A is symmetric, so the gradient in
    dy of the three outputs, given their cotangents (ddx, ddscale, ddoffset), is
    A ddx + xhat * ddscale + ddoffset: one more fused backward call plus one fused forward with
    scale ddscale and offset ddoffset. TensorFlow's registered gradient of the backward op builds
    it from a dozen elementwise passes over the activations (what it cost: docs/measurements.md).
    The gradients in x and scale keep TensorFlow's registered composite (the meta step needs
    neither).
    """

    def backward(dy, x, scale):
        return tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy,
            x=x,
            scale=scale,
            reserve_space_1=reserve[0],
            reserve_space_2=reserve[1],
            reserve_space_3=reserve[2],
            epsilon=epsilon,
            data_format="NHWC",
            is_training=True,
        )[:3]

    @tf.custom_gradient
    def fused_backward(dy, x, scale):
        def gradient(ddx, ddscale, ddoffset):
            with tf.GradientTape() as tape:
                tape.watch([x, scale])
                outputs = backward(dy, x, scale)
            dx, dscale = tape.gradient(outputs, [x, scale], output_gradients=[ddx, ddscale, ddoffset])
            xhat_term, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=ddscale,
                offset=ddoffset,
                mean=tf.zeros([0]),
                variance=tf.zeros([0]),
                epsilon=epsilon,
                data_format="NHWC",
                is_training=True,
            )  # xhat * ddscale + ddoffset
            ddy = backward(ddx, x, scale)[0] + xhat_term
            return ddy, dx, dscale

        return backward(dy, x, scale), gradient

    return fused_backward(dy, x, scale)


@keras.saving.register_keras_serializable(package="maxl_tf")
class Conv2D(keras.layers.Conv2D):
    """Keras' convolution, rearranged for the small maps where TensorFlow's CPU kernels are slow.

    A 3x3 'same' convolution (stride 1, channels last) on square maps of
      - at most 2x2 pixels (VGG-16's block 5) is matrix products: every output pixel sees every
        input pixel through some kernel tap (_small_map_product);
      - 4x4 pixels (block 4), on CPUs, runs on maps laid side by side in rows (_side_by_side);
        GPUs keep their kernels, which the extra arithmetic would only slow down.
    Both beat TensorFlow's CPU kernels on these maps, forward and both backward passes
    (docs/measurements.md). Both are compositions of differentiable ops, so they differentiate to
    any order. Same variables as Keras' layer.
    """

    def convolution_op(self, inputs, kernel):
        size = inputs.shape[1]
        if not (
            size is not None
            and inputs.shape[2] == size
            and self.kernel_size == (3, 3)
            and self.padding == "same"
            and self.strides == (1, 1)
            and self.dilation_rate == (1, 1)
            and self.data_format == "channels_last"
        ):
            return super().convolution_op(inputs, kernel)
        if size <= 2:
            return _small_map_product(inputs, kernel)
        if size == 4 and not tf.config.list_logical_devices("GPU"):
            return _side_by_side(inputs, kernel)
        return super().convolution_op(inputs, kernel)


def _small_map_product(inputs, kernel):
    """3x3 'same' convolution of [batch, s, s, cin] maps, s <= 2, as one batched matrix product.

    Output pixel p is x [batch, s*s*cin] @ W_p [s*s*cin, cout], where W_p stacks, for each input
    pixel q, the kernel tap joining q to p. The W_p are one product of a 0/1 selection matrix with
    the kernel's 9 taps: its gradient is a product too (a gather's would be a segment sum).
    """
    size, cin, cout = inputs.shape[1], kernel.shape[2], kernel.shape[3]
    places = [(row, col) for row in range(size) for col in range(size)]
    tap = [(qr - pr + 1) * 3 + (qc - pc + 1) for pr, pc in places for qr, qc in places]  # [p * q]
    select = tf.constant(np.eye(9)[tap], kernel.dtype)  # [p * q, 9]
    weights = tf.matmul(select, tf.reshape(kernel, [9, cin * cout]))
    weights = tf.reshape(weights, [size * size, size * size * cin, cout])  # [p, q * cin, cout]
    outputs = tf.matmul(tf.reshape(inputs, [1, -1, size * size * cin]), weights)  # [p, batch, cout]
    return tf.reshape(tf.transpose(outputs, [1, 0, 2]), [-1, size, size, cout])


_MAPS_PER_ROW = 8


def _side_by_side(inputs, kernel):
    """3x3 'same' convolution of [batch, 4, 4, cin] maps, computed on rows of 8 maps.

    oneDNN's channels-last kernel is markedly slower per operation on 4x4 maps than on 8x8 ones.
    Each map gets a zero column on its right, 8 of them make one [4, 40] image, and the zero
    columns keep neighbours from seeing each other; the outputs at those columns are dropped: 25%
    more arithmetic in less time. The batch is padded with empty maps to a multiple of 8 and cut
    back after.
    """
    size, cin, cout = inputs.shape[1], kernel.shape[2], kernel.shape[3]
    batch = tf.shape(inputs)[0]
    padding = -batch % _MAPS_PER_ROW
    # fmt: off
    x = tf.pad(inputs, [[0, padding], [0, 0], [0, 1], [0, 0]])                # [batch', 4, 5, cin]
    x = tf.reshape(x, [-1, _MAPS_PER_ROW, size, size + 1, cin])               # [rows, 8, 4, 5, cin]
    x = tf.transpose(x, [0, 2, 1, 3, 4])                                      # [rows, 4, 8, 5, cin]
    x = tf.reshape(x, [-1, size, _MAPS_PER_ROW * (size + 1), cin])            # [rows, 4, 40, cin]
    y = tf.nn.conv2d(x, kernel, 1, "SAME")                                    # [rows, 4, 40, cout]
    y = tf.reshape(y, [-1, size, _MAPS_PER_ROW, size + 1, cout])              # [rows, 4, 8, 5, cout]
    y = tf.transpose(y, [0, 2, 1, 3, 4])                                      # [rows, 8, 4, 5, cout]
    y = tf.reshape(y, [-1, size, size + 1, cout])                             # [batch', 4, 5, cout]
    # fmt: on
    # Cut back with splits: their gradient is a concatenation, fast and differentiable under XLA
    # (a strided slice's is slow on CPUs, a slice's has no gradient under XLA).
    y, _ = tf.split(y, tf.stack([batch, padding]), axis=0)
    y, _ = tf.split(y, [size, 1], axis=2)
    return y


def _trunk(images, architecture: str, width: float, precision, synchronized_bn: bool):
    """Shared feature extractor. images: raw pixels [batch, H, W, C] -> features [batch, hidden].

    It starts with the authors' normalisation (pixels.Normalise, in float32 under mixed precision).

    Under mixed precision, convolutions and dense layers compute in half precision with float32
    weights; batch norm keeps its statistics in float32, and max-pooling computes in float32:
    its second-order gradient (MaxPoolGradGrad) exists only for float32 under XLA.
    """
    dtype = precision  # None: Keras' global dtype policy (the float64 gradient tests set it)
    pool_dtype = "float32" if precision and precision.startswith("mixed") else dtype
    x = pixels.Normalise(dtype=pool_dtype)(images)
    for block, (filters, convs) in enumerate(ARCHITECTURES[architecture], start=1):
        for conv in range(1, convs + 1):
            name = f"{TRUNK_PREFIX}block{block}_conv{conv}"
            x = Conv2D(max(1, round(filters * width)), 3, padding="same", name=name, dtype=dtype)(x)
            x = BatchNormalization(
                momentum=0.9, epsilon=1e-5, synchronized=synchronized_bn, name=name + "_bn", dtype=dtype
            )(x)
            x = keras.layers.ReLU(dtype=dtype)(x)
        x = keras.layers.MaxPooling2D(2, name=f"{TRUNK_PREFIX}block{block}_pool", dtype=pool_dtype)(x)
    return keras.layers.Flatten(name=TRUNK_PREFIX + "flatten", dtype=dtype)(x)  # [batch, 1 * 1 * filters]


def check_input_size(architecture: str, image_size: int) -> None:
    """Raises errors.Error if the architecture's pooling would shrink the image below 1x1 (a
    module:function backbone checks its own input)."""
    if architecture not in ARCHITECTURES:
        return
    blocks = len(ARCHITECTURES[architecture])
    if image_size < 2**blocks:
        raise errors.Error(
            f"--model={architecture} pools {blocks} times and needs images of at least "
            f"{2**blocks}x{2**blocks}; this data set's are {image_size}x{image_size}. "
            f"Use --model=vgg_small."
        )


def build_evaluator(
    input_shape,
    pri_classes: int,
    aux_classes: int,
    architecture: str = "vgg16",
    width: float = 1.0,
    precision: str | None = None,
    synchronized_bn: bool = False,
) -> keras.Model:
    """Multi-task evaluator f(x) -> [principal logits, auxiliary logits] (paper Section 3.1), x raw
    pixels (models/pixels.py).

    aux_classes=0 builds a single-task network whose only output is the principal logits, still
    returned as a one-element list so callers unpack it the same way.

    Args:
      precision: one of config.PRECISIONS, or None to follow Keras' global dtype policy.
      synchronized_bn: batch statistics over all replicas of a distribution strategy.
    """
    check_input_size(architecture, input_shape[0])
    images = keras.Input(input_shape, name="images")
    features = _trunk(images, architecture, width, precision, synchronized_bn)
    return heads.evaluator(images, features, pri_classes, aux_classes, features.shape[-1], precision)


def build_generator(
    input_shape,
    aux_classes: int,
    architecture: str = "vgg16",
    width: float = 1.0,
    precision: str | None = None,
    synchronized_bn: bool = False,
) -> keras.Model:
    """Label generator g(x) -> auxiliary logits [batch, sum(psi)]; the masked softmax over the
    principal label's block is applied by losses.masked_softmax. Args as build_evaluator."""
    check_input_size(architecture, input_shape[0])
    images = keras.Input(input_shape, name="images")
    features = _trunk(images, architecture, width, precision, synchronized_bn)
    logits = heads.head(features, aux_classes, "generator", features.shape[-1], precision)
    return keras.Model(images, logits, name="generator")
