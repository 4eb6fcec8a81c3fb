"""The cheaper hypergradients compute what they claim.

first_order against the exact second-order gradient; implicit against the implicit-function
theorem's hypergradient solved densely; both with the entropy term's share, on the quickstart
models and under mixed precision.
"""

import keras
import numpy as np
import tensorflow as tf

from maxl_tf.core import hierarchy
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import losses
from maxl_tf.core import meta
from maxl_tf.models import pixels
from maxl_tf.models import vgg
from tests import float64_case
from tests import tolerances

PSI = (2, 3)
INNER_LR = 0.1
ENTROPY_WEIGHT = 0.2  # MixedPrecisionTest's w_H, meta's default


def _flat(tensors):
    return np.concatenate([np.ravel(t) for t in tensors])


def _cosine(a, b):
    a, b = _flat(a), _flat(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _pixels(normalised):
    """The raw pixels the networks' first layer (pixels.Normalise) maps to these values: standard
    normal draws become images whose normalised values are standard normal."""
    return 255.0 * (pixels.PIXEL_MEAN + pixels.PIXEL_STD * normalised)


def _entropy_gradient(generator, images, labels, mask):
    """grad_theta2 H of the generated labels, directly."""
    with tf.GradientTape() as tape:
        entropy = losses.entropy_regulariser(labels_lib.generated_labels(generator, images, labels, mask, True))
    return tape.gradient(entropy, generator.trainable_variables)


class Float64TestCase(float64_case.Float64TestCase):
    def setUp(self):
        super().setUp()
        self.mask = tf.constant(hierarchy.psi_mask(PSI), tf.float64)


class FirstOrderTest(Float64TestCase):
    """meta_test.py's tiny VGG pair, whose second-order gradient is checked against differences."""

    def setUp(self):
        super().setUp()
        self.evaluator = vgg.build_evaluator((8, 8, 1), 2, sum(PSI), "vgg_small", 0.05)
        self.generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.05)
        self.images = tf.constant(_pixels(np.random.default_rng(0).normal(size=(6, 8, 8, 1))))
        self.labels = tf.constant([0, 1, 0, 1, 1, 0])

    def _gradient(self, function, entropy_weight, **kwargs):
        return function(
            self.evaluator, self.generator, self.images, self.labels, self.mask, INNER_LR, 2.0, entropy_weight, **kwargs
        )

    def test_agrees_with_second_order(self):
        # entropy_weight 0: the finite difference is the whole gradient; 10: the entropy term dominates.
        for entropy_weight in (0.0, 0.2, 10.0):
            with self.subTest(entropy_weight=entropy_weight):
                exact, exact_stats = self._gradient(meta.second_order_meta_gradient, entropy_weight)
                approximate, stats = self._gradient(meta.first_order_meta_gradient, entropy_weight)
                self.assertGreater(float(tf.linalg.global_norm(exact)), 1e-6)  # non-zero: 10^10 float64 roundings
                # The difference errs by O(radius^2) where the network is smooth and O(radius)
                # where its step crosses a ReLU or max-pool kink: the radius, relative.
                radius = meta.FINITE_DIFFERENCE_RADIUS
                self.assertGreater(_cosine(approximate, exact), tolerances.cosine_floor(radius))
                self.assertAllClose(_flat(approximate), _flat(exact), rtol=0, atol=radius * np.abs(_flat(exact)).max())
                # The same meta loss, before and after: the same float64 forward passes, equal but for
                # the order of sums of up to 384 terms (6 images x 64 pixels): 384 u64.
                self.assertAllClose(stats, exact_stats, rtol=384 * tolerances.FLOAT64)

    def test_error_shrinks_with_the_radius_until_rounding(self):
        exact, _ = self._gradient(meta.second_order_meta_gradient, 0.0)
        errors = [
            np.linalg.norm(_flat(self._gradient(meta.first_order_meta_gradient, 0.0, radius=radius)[0]) - _flat(exact))
            / np.linalg.norm(_flat(exact))
            for radius in (1e-2, 1e-3, 1e-4)
        ]
        self.assertLess(errors[1], errors[0])
        self.assertLess(errors[2], errors[1])
        # At radius 1e-4 no kink is crossed: the error is c radius^2 (c = 1.2 at both radii here)
        # plus rounding u / radius = 1e-12; 1e-6 is 100 radius^2.
        self.assertLess(errors[2], 100 * 1e-4**2)

    def test_entropy_share_is_kept(self):
        # The authors' first-order script drops this term; a generator gradient without it fails here.
        with_entropy, _ = self._gradient(meta.first_order_meta_gradient, 0.5)
        without, _ = self._gradient(meta.first_order_meta_gradient, 0.0)
        entropy_gradient = _entropy_gradient(self.generator, self.images, self.labels, self.mask)
        self.assertGreater(float(tf.linalg.global_norm(entropy_gradient)), 1e-4)
        # The two share every term but the entropy cotangent, which one backward sums with the rest:
        # they differ from 0.5 h by the rounding of sums of up to 384 terms (6 images x 64 pixels),
        # 384 u64 of the largest entry (measured: 1e-16 of it).
        scale = max(float(np.abs(a).max()) for a in with_entropy)
        for a, b, h in zip(with_entropy, without, entropy_gradient):
            self.assertAllClose(a - b, 0.5 * h, rtol=0, atol=384 * tolerances.FLOAT64 * scale)

    def test_leaves_the_evaluator_untouched(self):
        before = [v.numpy().copy() for v in self.evaluator.variables]
        _, stats = self._gradient(meta.first_order_meta_gradient, 0.2)
        for old, variable in zip(before, self.evaluator.variables):
            self.assertAllEqual(old, variable.numpy())  # weights and batch-norm moving statistics
        self.assertLess(float(stats["loss_after"]), float(stats["loss_before"]))


def _linear_trunk(features, pri, aux):
    """An evaluator whose trainable part is a linear trunk under two fixed random heads: its
    logits are linear in its weights, so its cross-entropy (gamma = 0) is convex in them, and the
    shared trunk couples the tasks as the VGG trunk does. Small enough to form its Hessian."""
    inputs = keras.Input((features,))
    trunk = keras.layers.Dense(features, name="trunk")(inputs)
    heads = [
        keras.layers.Dense(classes, trainable=False, name=name)(trunk)
        for classes, name in ((pri, "pri_logits"), (aux, "aux_logits"))
    ]
    return keras.Model(inputs, heads)


class ImplicitTest(Float64TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.evaluator = _linear_trunk(3, len(PSI), sum(PSI))
        inputs = keras.Input((3,))
        self.generator = keras.Model(inputs, keras.layers.Dense(sum(PSI))(keras.layers.Dense(4, "tanh")(inputs)))
        self.train = (tf.constant(rng.normal(size=(32, 3))), tf.constant(rng.integers(0, len(PSI), 32)))
        self.meta = (tf.constant(rng.normal(size=(16, 3))), tf.constant(rng.integers(0, len(PSI), 16)))

    def _implicit(self, neumann_terms, inner_lr, entropy_weight=0.0):
        grads, _ = meta.implicit_meta_gradient(
            self.evaluator,
            self.generator,
            *self.train,
            *self.meta,
            self.mask,
            inner_lr,
            0.0,
            entropy_weight,
            neumann_terms=neumann_terms,
        )
        return _flat(grads)

    def _dense_problem(self):
        """(H, M, g): the training loss's Hessian in theta1 [n1, n1], its mixed derivative
        d grad_theta1 L_T / d theta2 [n1, n2], the meta loss's gradient [n1], all formed densely."""
        weights = self.evaluator.trainable_variables
        images, labels = self.train
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                pri_logits, aux_logits = self.evaluator(images)
                generated = labels_lib.generated_labels(self.generator, images, labels, self.mask, True)
                loss = losses.focal_loss(
                    pri_logits, tf.one_hot(labels, len(PSI), dtype=tf.float64), 0.0
                ) + losses.focal_loss(aux_logits, generated, 0.0)
            grad = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, weights)], 0)
        hessian = np.concatenate([np.reshape(j, (len(grad), -1)) for j in outer.jacobian(grad, weights)], 1)
        mixed = np.concatenate(
            [np.reshape(j, (len(grad), -1)) for j in outer.jacobian(grad, self.generator.trainable_variables)], 1
        )
        with tf.GradientTape() as tape:
            pri_logits, _ = self.evaluator(self.meta[0])
            meta_loss = losses.focal_loss(pri_logits, tf.one_hot(self.meta[1], len(PSI), dtype=tf.float64), 0.0)
        meta_grad = _flat(tape.gradient(meta_loss, weights))
        return hessian, mixed, meta_grad

    def test_converges_to_the_exact_implicit_hypergradient(self):
        hessian, mixed, meta_grad = self._dense_problem()
        eigenvalues = np.linalg.eigvalsh(hessian)
        # Positive definite, by a margin 10^13 times float64's rounding of H (u ||H|| = 1e-16).
        self.assertGreater(eigenvalues.min(), 1e-2)
        solution = np.linalg.solve(hessian, meta_grad)
        exact = -mixed.T @ solution
        self.assertGreater(np.linalg.norm(exact), 1e-2)  # non-zero, likewise
        # The series converges for alpha < 2 / lambda_max, at the rate 1 - alpha * lambda_min.
        inner_lr = 1.5 / eigenvalues.max()
        errors = [
            np.linalg.norm(self._implicit(terms, inner_lr) - exact) / np.linalg.norm(exact) for terms in (1, 5, 20, 200)
        ]
        self.assertAllInRange(errors, 0.0, 1.0)
        for fewer, more in zip(errors, errors[1:]):
            self.assertLess(more, fewer)
        # After K terms w errs by (I - alpha H)^(K+1) H^-1 g: at most rate^(K+1) ||H^-1 g||, and the
        # hypergradient by ||M|| times that (5e-8 here); float64's rounding adds ~1e-14.
        rate = max(abs(1 - inner_lr * eigenvalues.min()), abs(1 - inner_lr * eigenvalues.max()))
        bound = rate**201 * np.linalg.norm(mixed, 2) * np.linalg.norm(solution) / np.linalg.norm(exact)
        self.assertLess(errors[-1], bound)
        # No terms: w = alpha * g, the same float64 products: sums of up to 32 terms (the batch), 32 u.
        expected = -inner_lr * mixed.T @ meta_grad
        self.assertAllClose(
            self._implicit(0, inner_lr), expected, rtol=0, atol=32 * tolerances.FLOAT64 * np.abs(expected).max()
        )

    def test_entropy_share_is_kept(self):
        with_entropy = self._implicit(3, 0.5, entropy_weight=0.5)
        without = self._implicit(3, 0.5)
        entropy_gradient = _flat(_entropy_gradient(self.generator, self.train[0], self.train[1], self.mask))
        self.assertGreater(np.linalg.norm(entropy_gradient), 1e-4)  # non-zero: 10^12 float64 roundings
        # As FirstOrderTest's: one backward sums both cotangents, over up to 32 terms (the batch).
        scale = np.abs(with_entropy).max()
        self.assertAllClose(
            with_entropy - without, 0.5 * entropy_gradient, rtol=0, atol=32 * tolerances.FLOAT64 * scale
        )

    def test_neumann_series_of_a_matrix(self):
        matrix = np.array([[2.0, 0.5], [0.5, 1.0]])
        vector = np.array([1.0, -2.0])

        def product(u):
            return [tf.linalg.matvec(tf.constant(matrix), u[0])]

        def series(terms):
            return meta.neumann_inverse_hvp(product, [tf.constant(vector)], 0.4, terms)[0].numpy()

        self.assertAllClose(series(0), 0.4 * vector)
        step = np.eye(2) - 0.4 * matrix
        self.assertAllClose(series(3), 0.4 * sum(np.linalg.matrix_power(step, j) @ vector for j in range(4)))
        self.assertAllClose(series(200), np.linalg.solve(matrix, vector))


class QuickstartModelsTest(tf.test.TestCase):
    """The quickstart preset's networks, float32: digits-shaped inputs, vgg_small at width 0.5."""

    def setUp(self):
        super().setUp()
        psi = (7, 3)
        keras.utils.set_random_seed(0)
        self.evaluator = vgg.build_evaluator((8, 8, 1), 2, sum(psi), "vgg_small", 0.5)
        self.generator = vgg.build_generator((8, 8, 1), sum(psi), "vgg_small", 0.5)
        self.mask = tf.constant(hierarchy.psi_mask(psi))
        rng = np.random.default_rng(0)
        self.batches = [
            (
                tf.constant(rng.uniform(0, 255, size=(16, 8, 8, 1)), tf.float32),
                tf.constant(rng.integers(0, 2, 16), tf.int64),
            )
            for _ in range(2)
        ]

    def _gradients(self, entropy_weight):
        (train_images, train_labels), (images, labels) = self.batches
        args = (self.mask, INNER_LR, 2.0, entropy_weight)
        return {
            "second_order": meta.second_order_meta_gradient(self.evaluator, self.generator, images, labels, *args),
            "first_order": meta.first_order_meta_gradient(self.evaluator, self.generator, images, labels, *args),
            "implicit": meta.implicit_meta_gradient(
                self.evaluator, self.generator, train_images, train_labels, images, labels, *args
            ),
        }

    def test_gradients_are_finite_and_non_zero(self):
        before = [v.numpy().copy() for v in self.evaluator.variables]
        # Without the entropy term the hypergradient's own path is all there is.
        for entropy_weight in (0.0, 0.2):
            for name, (grads, stats) in self._gradients(entropy_weight).items():
                with self.subTest(name=name, entropy_weight=entropy_weight):
                    self.assertLen(grads, len(self.generator.trainable_variables))
                    for grad, variable in zip(grads, self.generator.trainable_variables):
                        self.assertEqual(grad.shape, variable.shape)
                        self.assertTrue(np.all(np.isfinite(grad)))
                    self.assertGreater(float(tf.linalg.global_norm(grads)), 1e-6)  # non-zero: 16 float32 roundings
                    self.assertAllClose(stats["meta_loss"], stats["loss_after"] + entropy_weight * stats["entropy"])
        for old, variable in zip(before, self.evaluator.variables):
            self.assertAllEqual(old, variable.numpy())  # weights and batch-norm moving statistics

    def test_first_order_radius_on_the_quickstart_model(self):
        # The default radius keeps the float32 first-order gradient near the exact one's direction:
        # its error is O(radius) where the step crosses ReLU and max-pool kinks, with a constant set
        # by the jumps crossed (tens: 0.21 at radius 1e-2 in FirstOrderTest), plus float32's rounding
        # of the difference, u / radius = 6e-5. cos 0.999 allows 0.045, 45 radii (measured: 0.007).
        gradients = self._gradients(0.0)
        self.assertGreater(_cosine(gradients["first_order"][0], gradients["second_order"][0]), 0.999)


class BatchNormSecondDerivativeTest(tf.test.TestCase):
    """The implicit hypergradient differentiates batch norm's backward in its input: the trainer's
    float32 path (TensorFlow's fused kernel) must give what exact float64 arithmetic gives."""

    def test_fused_float32_matches_exact_float64(self):
        psi = (3, 2)
        rng = np.random.default_rng(0)
        batches = [(_pixels(rng.normal(size=(8, 8, 8, 1))), rng.integers(0, len(psi), 8)) for _ in range(2)]
        results = []
        for dtype in ("float64", "float32"):
            keras.config.set_dtype_policy(dtype)
            try:
                keras.utils.set_random_seed(0)
                # float64 runs Keras' own batch norm; synchronised, its statistics are
                # E[x^2] - E[x]^2, exact to second order (see meta.implicit_meta_gradient).
                synchronized = dtype == "float64"
                evaluator = vgg.build_evaluator(
                    (8, 8, 1), len(psi), sum(psi), "vgg_small", 0.125, synchronized_bn=synchronized
                )
                generator = vgg.build_generator((8, 8, 1), sum(psi), "vgg_small", 0.125, synchronized_bn=synchronized)
                if results:
                    self.assertIsInstance(evaluator.get_layer("trunk_block1_conv1_bn"), vgg.BatchNormalization)
                    for model, weights in zip((evaluator, generator), results[0][1]):
                        model.set_weights(weights)
                inputs = [
                    tensor for images, labels in batches for tensor in (tf.constant(images, dtype), tf.constant(labels))
                ]
                grads, _ = meta.implicit_meta_gradient(
                    evaluator,
                    generator,
                    *inputs,
                    tf.constant(hierarchy.psi_mask(psi), dtype),
                    0.05,
                    2.0,
                    0.0,
                    neumann_terms=2,
                )
                results.append((_flat(grads).astype(np.float64), (evaluator.get_weights(), generator.get_weights())))
            finally:
                keras.config.set_dtype_policy("float32")
        (exact, _), (fused, _) = results
        # float32's worst case over the longest sums, 512 terms (8 images x 64 pixels), through the
        # few passes (forward, backward, the Hessian-vector products' two): 3 x 512 u32 = 9e-5.
        self.assertLess(np.linalg.norm(fused - exact) / np.linalg.norm(exact), 3 * 512 * tolerances.FLOAT32)


class MixedPrecisionTest(tf.test.TestCase):
    """Like precision_test.py's check of the second-order gradient: a float32 twin runs the
    evaluator's side, and the half-precision gradient points the float32 way."""

    def _gradient(self, function, precision, loss_scale=None):
        """(flat gradient, stats, flat entropy term w_H grad H: float32 only, else None)."""
        psi = (3, 2)
        keras.utils.set_random_seed(0)  # same float32 weights whatever the compute precision
        evaluator = vgg.build_evaluator((8, 8, 1), len(psi), sum(psi), "vgg_small", 0.25, precision)
        generator = vgg.build_generator((8, 8, 1), sum(psi), "vgg_small", 0.25, precision)
        twin = (
            vgg.build_evaluator((8, 8, 1), len(psi), sum(psi), "vgg_small", 0.25, "float32")
            if precision != "float32"
            else None
        )
        rng = np.random.default_rng(0)
        batches = [
            (
                tf.constant(_pixels(rng.normal(size=(64, 8, 8, 1))), tf.float32),
                tf.constant(rng.integers(0, len(psi), 64), tf.int64),
            )
            for _ in range(2)
        ]
        mask = tf.constant(hierarchy.psi_mask(psi))
        args = (mask, 0.1, 2.0, ENTROPY_WEIGHT)
        options = dict(loss_scale=loss_scale, lookahead_model=twin)
        # The generator labels the training batch for the implicit gradient, the meta batch for the others.
        labelled = batches[0] if function is meta.implicit_meta_gradient else batches[1]
        if function is meta.implicit_meta_gradient:
            grads, stats = function(evaluator, generator, *batches[0], *batches[1], *args, **options)
        else:
            grads, stats = function(evaluator, generator, *batches[1], *args, **options)
        flat = tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in grads], 0)
        entropy_term = (
            ENTROPY_WEIGHT * _flat(_entropy_gradient(generator, *labelled, mask)) if precision == "float32" else None
        )
        return (flat if loss_scale is None else flat / loss_scale), stats, entropy_term

    def test_half_precision_points_the_float32_way(self):
        # Not a multiple of u. Half precision moves this gradient less by rounding than by the ReLU
        # and max-pool decisions its rounding flips, each an O(1) change to one term of a nearly
        # cancelling sum: float16 (u = 2^-11) errs about as much as bfloat16 (2^-8), and errors of
        # rounding at different places do not add up (docs/measurements.md, "Precision checks on
        # an AVX2 CPU"). So the
        # bound is what the check must tell apart: the half-precision gradient must point nearer
        # the float32 one than halfway (in angle) to the float32 gradient missing its smallest term.
        # For first_order that is the entropy term (52% of the norm: cos >= 0.966); a lookahead in
        # half precision (cos 0.45) or a dropped entropy term (0.85) fails. The implicit gradient's
        # entropy term, 0.3% of it, is below what half precision resolves (ImplicitTest checks it
        # in float64): there the hypergradient term is the one told apart (cos >= 0.87).
        for function in (meta.first_order_meta_gradient, meta.implicit_meta_gradient):
            reference, reference_stats, entropy_term = self._gradient(function, "float32")
            self.assertGreater(float(tf.norm(reference)), 1e-3)  # non-zero: 10^4 float32 roundings of its O(1) losses
            terms = [reference.numpy() - entropy_term]
            if function is not meta.implicit_meta_gradient:
                terms.append(entropy_term)
            floor = tolerances.cosine_floor(tolerances.halfway_to_nearest_wrong(reference.numpy(), terms))
            for precision, loss_scale in (("mixed_bfloat16", None), ("mixed_float16", 2.0**10)):
                with self.subTest(function=function.__name__, precision=precision):
                    grads, stats, _ = self._gradient(function, precision, loss_scale)
                    self.assertEqual(grads.dtype, tf.float32)
                    self.assertGreaterEqual(_cosine([grads], [reference]), floor)
                    # A forward value, continuous where ReLU and max-pool switch: rounding alone
                    # moves it, as much as the labels' sqrt(16) u (tolerances.py): 1.6% in
                    # bfloat16, 0.2% in float16. Without the entropy term it moves by 12%.
                    rtol = tolerances.probabilistic_error(
                        tolerances.VGG_SMALL_LABEL_ROUNDINGS, tolerances.UNIT_ROUNDOFF[precision]
                    )
                    self.assertAllClose(stats["meta_loss"], reference_stats["meta_loss"], rtol=rtol)


if __name__ == "__main__":
    tf.test.main()
