"""The one input contract: every network takes raw pixels.

An evaluator or generator, the built-in VGGs as well as a backbone of your own (models/heads.py,
--model=module:function), is called on images [batch, H, W, C] of float32 pixel values in
0..255, as the data set stores them (uint8 cast to float, or floats on the same scale): from the
command line's pipeline, from `MAXL.fit`, in the exports and in serving/. Whatever scaling a
network wants belongs to the network, keras-hub's way: the built-in VGGs start with `Normalise`
(the authors' (x / 255 - 0.5) / 0.2), keras.applications models that include their
preprocessing start with theirs, and a backbone of your own starts with its own `Rescaling`, or
with `Normalise()` for the VGGs' scaling.

`check_images` and `check_labels` are the door every user's data passes (a Source's arrays, fit's
arrays and pipelines): uint8, or floats 0..255 with no NaN, [N, H, W, C] with 1 to 4 channels,
one integer label per image in range. Float images that all lie within [0, 1] are refused rather
than guessed at: scaled by 255 they would train; left as they are, they are nearly black.
"""

import keras
import numpy as np

# The authors' normalisation: pixels in [0, 1], then (x - 0.5) / 0.2.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.2


@keras.saving.register_keras_serializable(package="maxl_tf")
class Normalise(keras.layers.Layer):
    """(pixels / 255 - mean) / std, in float32 under mixed precision (the networks' first layer).

    The same three operations, in the same order, that the pipeline applied before networks took
    raw pixels, so runs and checkpoints of the built-in VGGs keep their numbers (tested). No
    weights. export.portable swaps it for Keras' Rescaling, so exported files load without maxl_tf.
    """

    def __init__(self, mean: float = PIXEL_MEAN, std: float = PIXEL_STD, **kwargs):
        kwargs.setdefault("name", "normalise")
        super().__init__(**kwargs)
        self.mean, self.std = float(mean), float(std)

    def call(self, pixels):
        x = keras.ops.cast(pixels, self.compute_dtype)
        # divide_no_nan, not "/": in a traced graph, grappler's constant folding turns a division
        # by a constant into a product with its reciprocal, which rounds differently (4.8e-7 off);
        # it leaves DivNoNan alone, so the networks see the very values the pipeline computed.
        scaled = keras.ops.divide_no_nan(x, 255.0)
        return keras.ops.divide_no_nan(scaled - self.mean, self.std)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}

    def as_rescaling(self) -> keras.layers.Layer:
        """Keras' own layer computing the same map (x * scale + offset; equal to float32 rounding)."""
        return keras.layers.Rescaling(
            1.0 / (255.0 * self.std), offset=-self.mean / self.std, name=self.name, dtype=self.dtype_policy
        )


def check_images(images, where: str) -> None:
    """Refuses images that break the contract above, naming `where` (a Source, fit's x, ...).

    images: an array [N, H, W, C], or a row file with dtype and shape (images.DiskImages: only
    its dtype and shape are checked; its rows are uint8 by construction).

    Raises:
      ValueError: one line naming `where`, what was found and the fix.
    """
    shape, dtype = tuple(images.shape), np.dtype(images.dtype)
    if len(shape) != 4:
        hint = " (add a channel axis: images[..., None])" if len(shape) == 3 else ""
        raise ValueError(f"{where}: images must be [N, height, width, channels]; got shape {shape}{hint}")
    if not 1 <= shape[-1] <= 4:
        raise ValueError(
            f"{where}: images of shape {shape} have {shape[-1]} channels; 1 to 4 on the last axis (channels last)"
        )
    if dtype == np.uint8:
        return
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{where}: images must be uint8, or floats 0..255; got {dtype}")
    if not isinstance(images, np.ndarray) or not images.size:
        return
    low, high = float(np.min(images)), float(np.max(images))  # NaN propagates into both
    if np.isnan(low) or np.isnan(high) or np.isinf(low) or np.isinf(high):
        raise ValueError(f"{where}: images hold NaN or infinite values; every pixel must be a number in 0..255")
    if low < 0 or high > 255:
        raise ValueError(
            f"{where}: float images range {low:g}..{high:g}; networks take raw pixels 0..255 "
            f"(normalised images: undo the normalisation and let the network scale, e.g. keras.layers.Rescaling)"
        )
    if 0 < high <= 1.0:
        raise ValueError(
            f"{where}: float images all lie within [0, 1] ({low:g}..{high:g}); networks take raw pixels 0..255: "
            f"pass images * 255 (or the uint8 originals)"
        )


def check_labels(labels, num_images: int, num_classes: int | None, where: str) -> None:
    """Refuses labels that are not one integer class index per image, in range.

    Raises:
      ValueError: one line naming `where`, what was found and the fix.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(
            f"{where}: labels must be integer class indices [N]; got {labels.dtype} of shape {labels.shape}"
        )
    if len(labels) != num_images:
        raise ValueError(f"{where}: {len(labels)} labels for {num_images} images; give one label per image")
    if not len(labels) or num_classes is None:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{where}: labels range {low}..{high}; the {num_classes} classes are numbered 0..{num_classes - 1}"
        )
