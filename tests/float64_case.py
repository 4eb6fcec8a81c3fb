"""A tf.test.TestCase whose Keras models are built in float64, for gradients compared to tight tolerances."""

import keras
import tensorflow as tf


class Float64TestCase(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        # The global dtype policy, not only floatx: an earlier test may already have fixed it.
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        keras.utils.set_random_seed(0)

    def tearDown(self):
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
        super().tearDown()
