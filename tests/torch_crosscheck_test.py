"""maxl_tf's meta-gradient equals an independent PyTorch implementation's, on the same weights.

tests/golden/make_torch_meta_gradient.py computed the generator's meta-gradient with PyTorch
(functional_call lookahead with create_graph=True, as in the authors' code) in float64 and saved
the weights, the batch and the gradient. This loads them into maxl_tf's Keras models and compares.
Together with meta_test (our gradient is the exact derivative of our meta loss) this shows that
our meta loss is the authors' formulation.
"""

import os

import numpy as np
import tensorflow as tf

from maxl_tf.core import hierarchy
from maxl_tf.core import meta
from maxl_tf.models import pixels
from maxl_tf.models import vgg
from tests import float64_case
from tests import tolerances

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "torch_meta_gradient.npz")


def _paths_in_torch_order(heads):
    """Keras variable paths in the order of the PyTorch modules' named_parameters()."""
    paths = []
    for block in (1, 2, 3):
        conv = f"trunk_block{block}_conv1"
        paths += [f"{conv}/kernel", f"{conv}/bias", f"{conv}_bn/gamma", f"{conv}_bn/beta"]
    for name in heads:
        paths += [f"{name}_hidden/kernel", f"{name}_hidden/bias", f"{name}_logits/kernel", f"{name}_logits/bias"]
    return paths


def _load(model, golden, prefix, heads):
    by_path = {v.path: v for v in model.trainable_variables}
    paths = _paths_in_torch_order(heads)
    assert len(paths) == len(by_path), (len(paths), len(by_path))
    for i, path in enumerate(paths):
        by_path[path].assign(golden[f"{prefix}/{i:02d}"])
    return paths


class TorchCrossCheckTest(float64_case.Float64TestCase):
    def test_meta_gradient_matches_pytorch(self):
        golden = np.load(GOLDEN)
        psi = tuple(int(n) for n in golden["psi"])
        evaluator = vgg.build_evaluator((8, 8, 1), len(psi), sum(psi), "vgg_small", 0.125)
        generator = vgg.build_generator((8, 8, 1), sum(psi), "vgg_small", 0.125)
        _load(evaluator, golden, "evaluator", ("principal", "auxiliary"))
        generator_paths = _load(generator, golden, "generator", ("generator",))

        grads, stats = meta.second_order_meta_gradient(
            evaluator,
            generator,
            # The golden images are normalised; the networks take the raw pixels that normalise to them.
            tf.constant(255.0 * (pixels.PIXEL_MEAN + pixels.PIXEL_STD * golden["images"])),
            tf.constant(golden["labels"]),
            tf.constant(hierarchy.psi_mask(psi), tf.float64),
            float(golden["inner_lr"]),
            gamma=2.0,
            entropy_weight=float(golden["entropy_weight"]),
        )

        # PyTorch takes log(p + 1e-12), we take log-softmax: each log p differs by 1e-12 / p, a
        # relative 1e-12 / (p |log p|) <= 1e-7 for every p >= 1e-5 (a random network's softmax over
        # 2 or 3 classes stays far above that; measured: 6e-9 of the loss, 2e-8 of the gradients);
        # float64's rounding, ~1e-14, is far below. Not bit-for-bit.
        formulation = 1e-7
        self.assertAllClose(stats["meta_loss"], golden["meta_loss"], rtol=formulation, atol=0)
        ours = dict(zip([v.path for v in generator.trainable_variables], grads))
        scale = max(np.abs(golden[f"grad/{i:02d}"]).max() for i in range(len(generator_paths)))
        for i, path in enumerate(generator_paths):
            expected = golden[f"grad/{i:02d}"]
            if path.endswith("conv1/bias"):
                # A bias right before batch norm has a zero gradient: both sides leave the rounding
                # of batch norm's backward, sums of up to 384 terms (6 images x 64 pixels) of the
                # gradients' scale: 384 u64 of it.
                self.assertAllClose(ours[path], expected, rtol=0, atol=384 * tolerances.FLOAT64 * scale)
                continue
            relative = np.linalg.norm(ours[path] - expected) / np.linalg.norm(expected)
            self.assertLess(relative, formulation, f"{path}: relative error {relative:.2e}")


if __name__ == "__main__":
    tf.test.main()
