"""Unit roundoffs, and the bounds the numeric tests derive from them.

u = 2^-p for a format with p significand bits (the implicit one included): round to nearest
gives |fl(x) - x| <= u |x|. Machine epsilon, the gap above 1, is 2u (numpy's finfo.eps).
"""

import math

import numpy as np

FLOAT64 = 2.0**-53  # 1.1e-16
FLOAT32 = 2.0**-24  # 6.0e-8 (eps 1.2e-7)
FLOAT16 = 2.0**-11  # 4.9e-4
BFLOAT16 = 2.0**-8  # 3.9e-3

# The unit roundoff of the dtype a precision policy computes in.
UNIT_ROUNDOFF = {
    "float64": FLOAT64,
    "float32": FLOAT32,
    "mixed_float16": FLOAT16,
    "mixed_bfloat16": BFLOAT16,
}

# The roundings on the way from the images to the labels of a vgg_small generator under mixed
# precision (models/vgg.py): the images' cast to half precision, then in each of the three conv
# blocks the kernel's cast, the convolution's output (accumulated in float32, rounded once), the
# bias add, batch norm's output (ReLU and the float32 max-pool round nothing), and in the hidden
# dense layer the kernel's cast, the product and the bias add; the logits are float32.
VGG_SMALL_LABEL_ROUNDINGS = 1 + 3 * 4 + 3


def probabilistic_error(roundings: int, unit_roundoff: float) -> float:
    """sqrt(n) u: the relative error of a result after n roundings of independent sign, which add
    in quadrature (Higham and Mary, SIAM J. Sci. Comput. 2019), instead of the worst case n u.
    Callers multiply it by lambda, the number of such standard deviations they allow."""
    return math.sqrt(roundings) * unit_roundoff


def cosine_floor(distance: float) -> float:
    """The least cosine between g and any h with ||h - g|| <= distance * ||g|| (distance < 1):
    the angle is largest when h - g is orthogonal to h, where its sine is the distance."""
    return math.sqrt(1.0 - distance**2)


def halfway_to_nearest_wrong(gradient, terms) -> float:
    """Half the relative size of the smallest of the terms that sum to the gradient: a result
    within this distance (relative to ||gradient||) of the gradient is nearer to it than to the
    gradient with any of those terms dropped."""
    return 0.5 * min(float(np.linalg.norm(term)) for term in terms) / float(np.linalg.norm(gradient))


# The steps of one epoch of flags/smoke.cfg: 200 training images in batches of 32.
SMOKE_STEPS_PER_EPOCH = 7


def training_drift(steps: int, terms: int = 32 * 64, unit_roundoff: float = FLOAT32, lam: float = 3.0) -> float:
    """How far two float32 runs of the same training, summing in other orders, may drift apart:
    each step's gradients differ by lambda sqrt(n) u (n: the longest sum, a batch of 32 images x
    64 pixels), and over the run's steps these differences add at most linearly."""
    return steps * lam * probabilistic_error(terms, unit_roundoff)
