"""scikit-learn's 8x8 digits: 1,797 real images that ship with scikit-learn, so tests and the
quickstart run offline in minutes. A fixed stratified 20% is the test set (random_state 0, the
same for every run seed)."""

import numpy as np

from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.data import source as source_lib

# A human hierarchy over the ten digits by stroke shape: 0 curved (0,2,3,5,6,8,9), 1 straight (1,4,7).
DIGITS_TO_2 = (0, 1, 0, 0, 1, 0, 0, 1, 0, 0)
DIGIT_NAMES = tuple(str(d) for d in range(10))
DIGITS_2_NAMES = ("curved", "straight")


class Digits(source_lib.Source):
    name = "digits"
    augmentation = source_lib.Augmentation(
        1, horizontal_flip=False
    )  # the 8x8 digits shift by one pixel; a mirrored digit is no digit

    def __init__(self, options: source_lib.Options = source_lib.DEFAULTS):
        del options  # bundled with scikit-learn: nothing to find

    def levels(self) -> hierarchy_lib.Hierarchy:
        return hierarchy_lib.Hierarchy(
            "digits", {10: np.arange(10), 2: np.asarray(DIGITS_TO_2)}, {10: DIGIT_NAMES, 2: DIGITS_2_NAMES}
        )

    def identity(self) -> dict:
        import sklearn

        return {"kind": "package", "name": "scikit-learn load_digits", "version": sklearn.__version__}

    def load(self) -> source_lib.Loaded:
        import sklearn.datasets
        import sklearn.model_selection

        digits = sklearn.datasets.load_digits()
        images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., np.newaxis]
        labels = digits.target.astype(np.int64)
        # random_state is fixed on purpose: the test set must not change with the run seed.
        train_x, test_x, train_y, test_y = sklearn.model_selection.train_test_split(
            images, labels, test_size=0.2, stratify=labels, random_state=0
        )
        loaded = source_lib.Loaded(
            source_lib.Split(train_x, train_y), source_lib.Split(test_x, test_y), "scikit-learn load_digits"
        )
        for split, name in ((loaded.train, "train"), (loaded.test, "test")):
            source_lib.check_split(split, (8, 8, 1), 10, f"{loaded.description} ({name} split)", "digits")
        return loaded
