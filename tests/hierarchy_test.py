"""Tests for maxl_tf.core.hierarchy against hand-written psi, masks and label placements.

Expected values are written out literally from the paper's Appendix A (Table 1) and checked by
hand against the tables in data/cifar.py, mnist.py and digits.py; nothing here recomputes them
with the library's code.
"""

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import hierarchy
from maxl_tf.core import psi as psi_lib
from maxl_tf.data import cifar
from maxl_tf.data import registry


def _levels(dataset: str) -> hierarchy.Hierarchy:
    """A built-in data set's label levels, as a run gets them."""
    return registry.get(dataset).levels()


# psi of every CIFAR-100 (pri, aux) pair of the paper, derived by hand from Appendix A.
# 10-class level: 0 large animals (reptiles, large carnivores, large omnivores: 3 superclasses),
# 1 medium animals (aquatic mammals, medium-sized mammals: 2), 2 small animals (small mammals,
# fish: 2), 3 invertebrates (insects, non-insect invertebrates: 2), 4 people (1),
# 5 vegetations (flowers, fruit and vegetables, trees: 3), 6 household objects (food containers,
# electrical devices, furniture: 3), 7 construction (1), 8 natural scenes (1), 9 vehicles (2).
# 3-class level: animals = 10-classes 0-4, vegetations = 5, objects and scenes = 6-9.
_CIFAR100_PSI = {
    (3, 10): [5, 1, 4],
    (3, 20): [10, 3, 7],  # 3+2+2+2+1, 3, 3+1+1+2
    (3, 100): [50, 15, 35],  # 5 fine classes per superclass
    (10, 20): [3, 2, 2, 2, 1, 3, 3, 1, 1, 2],
    (10, 100): [15, 10, 10, 10, 5, 15, 15, 5, 5, 10],
    (20, 100): [5] * 20,
}

# A few CIFAR-100 fine labels (alphabetical order of the data set) with their 20-class label.
APPLE, BABY, BEAR, BED, BICYCLE = 0, 2, 3, 5, 8  # coarse 4, 14, 8, 6, 18
MUSHROOM, PEAR, SWEET_PEPPER = 51, 57, 83  # coarse 4 (fruit and vegetables)


class PsiMaskTest(tf.test.TestCase):
    def test_paper_example(self):
        mask = hierarchy.psi_mask([2, 2, 1])
        self.assertEqual(mask.dtype, np.float32)
        self.assertAllEqual(mask, [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
        self.assertAllEqual(hierarchy.owners([2, 2, 1]), [0, 0, 1, 1, 2])

    def test_non_uniform_mask(self):
        mask = hierarchy.psi_mask([5, 1, 4])
        expected = np.zeros((3, 10), np.float32)
        expected[0, 0:5] = 1
        expected[1, 5] = 1
        expected[2, 6:10] = 1
        self.assertAllEqual(mask, expected)

    def test_block_offsets(self):
        self.assertAllEqual(hierarchy.block_offsets([2, 2, 1]), [0, 2, 4])
        self.assertAllEqual(hierarchy.block_offsets([5, 1, 4]), [0, 5, 6])
        self.assertAllEqual(
            hierarchy.block_offsets([3, 2, 2, 2, 1, 3, 3, 1, 1, 2]), [0, 3, 5, 7, 9, 10, 13, 16, 17, 18]
        )
        self.assertAllEqual(hierarchy.block_offsets([7]), [0])
        self.assertEqual(hierarchy.block_offsets([2, 2, 1]).dtype, np.int64)

    def test_offsets_are_first_one_of_each_mask_row(self):
        psi = [3, 1, 4, 1, 5]
        mask = hierarchy.psi_mask(psi)
        self.assertAllEqual(np.argmax(mask, axis=1), hierarchy.block_offsets(psi))
        self.assertAllEqual(mask.sum(axis=1), psi)
        self.assertAllEqual(mask.sum(axis=0), np.ones(sum(psi)))


class CifarHierarchyTest(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.cifar100 = _levels("cifar100")

    def test_levels(self):
        self.assertEqual(sorted(self.cifar100.levels), [3, 10, 20, 100])
        self.assertEqual(self.cifar100.finest, 100)
        # Hand-checked entries: apple -> fruit and vegetables (4) -> vegetations (5) -> 1;
        # bear -> large carnivores (8) -> large animals (0) -> animals (0);
        # bicycle -> vehicles 1 (18) -> vehicles (9) -> objects and scenes (2).
        fine = np.asarray([APPLE, BEAR, BICYCLE, BED, BABY])
        self.assertAllEqual(self.cifar100.labels_at(20, fine), [4, 8, 18, 6, 14])
        self.assertAllEqual(self.cifar100.labels_at(10, fine), [5, 0, 9, 6, 4])
        self.assertAllEqual(self.cifar100.labels_at(3, fine), [1, 0, 2, 2, 0])
        self.assertAllEqual(self.cifar100.labels_at(100, fine), fine)

    @parameterized.parameters(*_CIFAR100_PSI)
    def test_cifar100_psi(self, pri, aux):
        expected = _CIFAR100_PSI[(pri, aux)]
        self.assertEqual(sum(expected), aux)
        self.assertEqual(hierarchy.human_psi(self.cifar100, pri, aux), tuple(expected))
        self.assertEqual(hierarchy.resolve_psi(self.cifar100, pri, aux), tuple(expected))

    def test_human_psi_none_for_non_levels_or_reversed(self):
        self.assertIsNone(hierarchy.human_psi(self.cifar100, 20, 40))
        self.assertIsNone(hierarchy.human_psi(self.cifar100, 20, 10))
        self.assertIsNone(hierarchy.human_psi(self.cifar100, 20, 20))

    # --- human auxiliary labels ---------------------------------------------------------------

    def test_human_labels_3_10(self):
        # psi [5,1,4]: block 0 at 0..4, block 1 (vegetations only) at 5, block 2 at 6..9; the
        # 10-class labels are already in block order, so the slot equals the 10-class label.
        fine = np.asarray([APPLE, MUSHROOM, BEAR, BABY, BED, BICYCLE])
        labels = hierarchy.human_aux_labels(self.cifar100, 3, 10, fine)
        self.assertAllEqual(labels, [5, 5, 0, 4, 6, 9])
        # Every 10-class label lands on itself: 6..9 at 6..9, 5 at 5, 0..4 at 0..4.
        fine_to_10 = self.cifar100.levels[10]
        all_labels = hierarchy.human_aux_labels(self.cifar100, 3, 10, np.arange(100))
        self.assertAllEqual(all_labels, fine_to_10)

    def test_human_labels_3_20(self):
        # Block 0 (animals) holds superclasses 0,1,7,8,11,12,13,14,15,16 at slots 0..9;
        # block 1 (vegetations) holds 2,4,17 at 10..12; block 2 holds 3,5,6,9,10,18,19 at 13..19.
        fine = np.asarray([APPLE, BEAR, BED, BICYCLE, BABY])
        labels = hierarchy.human_aux_labels(self.cifar100, 3, 20, fine)
        self.assertAllEqual(labels, [11, 3, 15, 18, 7])
        slot_of_coarse = {
            0: 0,
            1: 1,
            7: 2,
            8: 3,
            11: 4,
            12: 5,
            13: 6,
            14: 7,
            15: 8,
            16: 9,
            2: 10,
            4: 11,
            17: 12,
            3: 13,
            5: 14,
            6: 15,
            9: 16,
            10: 17,
            18: 18,
            19: 19,
        }
        coarse = np.asarray(cifar.CIFAR100_FINE_TO_COARSE)
        all_labels = hierarchy.human_aux_labels(self.cifar100, 3, 20, np.arange(100))
        self.assertAllEqual(all_labels, [slot_of_coarse[c] for c in coarse])

    def test_human_labels_10_20(self):
        # Offsets [0,3,5,7,9,10,13,16,17,18]; bear: superclass 8 is the first of large animals
        # (8, 11, 15); apple: 4 is the second of vegetations (2, 4, 17); bed: 6 is the third of
        # household objects (3, 5, 6); bicycle: 18 is the first of vehicles (18, 19).
        fine = np.asarray([BEAR, APPLE, BED, BICYCLE, BABY])
        self.assertAllEqual(hierarchy.human_aux_labels(self.cifar100, 10, 20, fine), [0, 11, 15, 18, 9])

    def test_human_labels_20_100(self):
        # Superclass 4 (fruit and vegetables) = fine 0, 51, 53, 57, 83 at slots 20..24.
        fine = np.asarray([APPLE, MUSHROOM, 53, PEAR, SWEET_PEPPER, BEAR])
        labels = hierarchy.human_aux_labels(self.cifar100, 20, 100, fine)
        # Bear (3) is the first fine label of large carnivores (8): slot 40.
        self.assertAllEqual(labels, [20, 21, 22, 23, 24, 40])

    def test_human_labels_10_100_and_3_100(self):
        # 10-class offsets for psi [15,10,10,10,5,15,15,5,5,10]: [0,15,25,35,45,50,65,80,85,90].
        # Apple (0) is the lowest fine label of vegetations (block at 50), bicycle (8) the
        # lowest of vehicles (block at 90), bear (3) the lowest of large animals (block at 0).
        fine = np.asarray([APPLE, BICYCLE, BEAR])
        self.assertAllEqual(hierarchy.human_aux_labels(self.cifar100, 10, 100, fine), [50, 90, 0])
        # 3-class offsets for psi [50,15,35]: [0,50,65]. Apple (0) is the first vegetation, bed
        # (5) the lowest fine label of objects and scenes; the animals in fine order start with
        # aquarium fish (1), baby (2), bear (3) at slots 0, 1, 2.
        fine = np.asarray([APPLE, BED, 1, BABY, BEAR])
        self.assertAllEqual(hierarchy.human_aux_labels(self.cifar100, 3, 100, fine), [50, 65, 0, 1, 2])

    @parameterized.parameters(*_CIFAR100_PSI)
    def test_human_labels_fill_their_blocks(self, pri, aux):
        psi = _CIFAR100_PSI[(pri, aux)]
        mask = hierarchy.psi_mask(psi)
        fine = np.arange(100)
        human = hierarchy.human_aux_labels(self.cifar100, pri, aux, fine)
        principal = self.cifar100.labels_at(pri, fine)
        self.assertEqual(human.dtype, np.int64)
        # Each human label lies in its principal label's block.
        self.assertAllEqual(mask[principal, human], np.ones(100))
        # Each block is fully used: every auxiliary slot is some fine label's human label, and
        # the slots map one-to-one onto the human classes of level `aux`.
        self.assertAllEqual(np.unique(human), np.arange(aux))
        aux_level = self.cifar100.labels_at(aux, fine)
        pairs = set(zip(aux_level.tolist(), human.tolist()))
        self.assertLen(pairs, aux)
        for p, n in enumerate(psi):
            self.assertLen(np.unique(human[principal == p]), n)

    def test_human_labels_error_without_hierarchy(self):
        with self.assertRaisesRegex(errors.Error, "--method=human"):
            hierarchy.human_aux_labels(self.cifar100, 20, 40, np.arange(10))
        with self.assertRaisesRegex(errors.Error, "--aux=10"):
            hierarchy.human_aux_labels(_levels("cifar10"), 10, 10, np.arange(10))


def _refuses(error, call, *args) -> bool:
    try:
        call(*args)
    except error:
        return True
    return False


class ResolvePsiTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.cifar10 = _levels("cifar10")
        self.cifar100 = _levels("cifar100")

    def test_uniform(self):
        self.assertEqual(hierarchy.resolve_psi(self.cifar10, 10, 50), (5,) * 10)
        self.assertEqual(hierarchy.resolve_psi(self.cifar10, 10, 20), (2,) * 10)
        self.assertEqual(hierarchy.resolve_psi(self.cifar10, 10, 10), (1,) * 10)
        self.assertEqual(hierarchy.resolve_psi(self.cifar10, 10, 1000), (100,) * 10)
        self.assertEqual(hierarchy.resolve_psi(_levels("cifar10_1"), 10, 30), (3,) * 10)
        # Not a human level: uniform even on CIFAR-100.
        self.assertEqual(hierarchy.resolve_psi(self.cifar100, 20, 40), (2,) * 20)
        self.assertEqual(hierarchy.resolve_psi(self.cifar100, 3, 6), (2, 2, 2))

    def test_override(self):
        self.assertEqual(
            hierarchy.resolve_psi(self.cifar10, 10, 15, (2, 1, 2, 1, 2, 1, 2, 1, 2, 1)), (2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
        )
        # An override takes precedence over the human hierarchy.
        self.assertEqual(hierarchy.resolve_psi(self.cifar100, 3, 10, (4, 3, 3)), (4, 3, 3))
        self.assertEqual(hierarchy.resolve_psi(self.cifar100, 3, 10, [4, 3, 3]), (4, 3, 3))

    def test_override_wrong_length(self):
        with self.assertRaisesRegex(errors.Error, r"--psi=5,5.*2 entries summing to 10"):
            hierarchy.resolve_psi(self.cifar100, 3, 10, (5, 5))

    def test_override_wrong_sum(self):
        with self.assertRaisesRegex(errors.Error, r"--psi=5,1,3.*summing to 9"):
            hierarchy.resolve_psi(self.cifar100, 3, 10, (5, 1, 3))

    def test_override_zero_entry(self):
        with self.assertRaisesRegex(errors.Error, r"--psi=6,0,4.*positive"):
            hierarchy.resolve_psi(self.cifar100, 3, 10, (6, 0, 4))
        with self.assertRaisesRegex(errors.Error, "--psi"):
            hierarchy.resolve_psi(self.cifar100, 3, 10, (11, -1, 0))

    def test_python_api_refuses_the_same_psi(self):
        # One set of rules (hierarchy.broken_psi_rule), two wordings: flags here, arguments in core/psi.
        for psi in ((4, 3, 3), (5, 5), (6, 0, 4), (5, 5, 0, 0)):
            with self.subTest(psi=psi):
                cli_refuses = _refuses(errors.Error, hierarchy.resolve_psi, self.cifar100, 3, sum(psi), psi)
                self.assertEqual(cli_refuses, _refuses(ValueError, psi_lib.check, psi, 3))
                self.assertEqual(cli_refuses, psi != (4, 3, 3))
        self.assertEqual(psi_lib.uniform(10, 30), hierarchy.resolve_psi(self.cifar10, 10, 30))

    def test_pri_not_a_level(self):
        with self.assertRaisesRegex(errors.Error, r"--pri=5:.*\[3, 10, 20, 100\]"):
            hierarchy.resolve_psi(self.cifar100, 5, 100)
        with self.assertRaisesRegex(errors.Error, r"--pri=20"):
            hierarchy.resolve_psi(self.cifar10, 20, 100)
        # Even with a valid-looking override.
        with self.assertRaisesRegex(errors.Error, r"--pri=2"):
            hierarchy.resolve_psi(self.cifar10, 2, 10, (5, 5))

    def test_aux_not_multiple_nor_level(self):
        with self.assertRaisesRegex(errors.Error, r"--pri=10 --aux=15"):
            hierarchy.resolve_psi(self.cifar10, 10, 15)
        # The message names the flags that would work: the nearest multiples, the human levels
        # under --pri, and a --psi summing to --aux.
        with self.assertRaisesRegex(
            errors.Error,
            r"--pri=3 --aux=31: .*--aux=30 or --aux=33 .*--aux=10 or --aux=20 or --aux=100.*--psi=11,10,10",
        ):
            hierarchy.resolve_psi(self.cifar100, 3, 31)
        with self.assertRaises(errors.Error) as raised:
            hierarchy.resolve_psi(self.cifar10, 10, 25)
        self.assertNotIn("human levels", str(raised.exception))  # CIFAR-10 has none under 10
        self.assertIn("--aux=20 or --aux=30", str(raised.exception))
        self.assertEqual(hierarchy.resolve_psi(self.cifar10, 10, 25, (3,) * 5 + (2,) * 5), (3,) * 5 + (2,) * 5)

    def test_aux_coarser_than_pri(self):
        # 10 is a level but coarser than 20 and not a multiple: no psi.
        with self.assertRaisesRegex(errors.Error, r"--pri=20 --aux=10: .*at least 20.*--aux=100"):
            hierarchy.resolve_psi(self.cifar100, 20, 10)

    def test_aux_not_positive(self):
        with self.assertRaisesRegex(errors.Error, "--aux=0"):
            hierarchy.resolve_psi(self.cifar10, 10, 0)

    def test_unknown_dataset(self):
        with self.assertRaisesRegex(errors.Error, r"--dataset=imagenet: unknown; use one of cifar100, "):
            _levels("imagenet")


class DigitsHierarchyTest(tf.test.TestCase):
    def test_psi(self):
        digits = _levels("digits")
        self.assertEqual(sorted(digits.levels), [2, 10])
        # Curved: 0, 2, 3, 5, 6, 8, 9 (7 digits); straight: 1, 4, 7 (3 digits).
        self.assertEqual(hierarchy.human_psi(digits, 2, 10), (7, 3))
        self.assertEqual(hierarchy.resolve_psi(digits, 2, 10), (7, 3))
        self.assertEqual(hierarchy.resolve_psi(digits, 2, 8), (4, 4))
        self.assertEqual(hierarchy.resolve_psi(digits, 10, 20), (2,) * 10)

    def test_human_labels(self):
        digits = _levels("digits")
        labels = hierarchy.human_aux_labels(digits, 2, 10, np.arange(10))
        # Curved digits fill slots 0..6 in order, straight ones 7..9.
        self.assertAllEqual(labels, [0, 7, 1, 2, 8, 3, 4, 9, 5, 6])


class FashionMnistHierarchyTest(tf.test.TestCase):
    """B-CNN's levels over 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal,
    6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot."""

    def setUp(self):
        super().setUp()
        self.fashion = _levels("fashion_mnist")

    def test_levels(self):
        self.assertEqual(sorted(self.fashion.levels), [2, 6, 10])
        # Goods are Sandal, Sneaker, Bag, Ankle boot; the rest are clothes.
        self.assertAllEqual(self.fashion.labels_at(2, np.arange(10)), [0, 0, 0, 0, 0, 1, 0, 1, 1, 1])
        # Tops T-shirt, Pullover, Shirt; bottoms Trouser; dresses; outers Coat; accessories Bag;
        # shoes Sandal, Sneaker, Ankle boot.
        self.assertAllEqual(self.fashion.labels_at(6, np.arange(10)), [0, 1, 0, 2, 3, 5, 0, 5, 4, 5])

    def test_psi(self):
        # Clothes hold 6 products and goods 4.
        self.assertEqual(hierarchy.human_psi(self.fashion, 2, 10), (6, 4))
        # Clothes: tops, bottoms, dresses, outers; goods: accessories, shoes.
        self.assertEqual(hierarchy.human_psi(self.fashion, 2, 6), (4, 2))
        # Tops 3, bottoms 1, dresses 1, outers 1, accessories 1, shoes 3.
        self.assertEqual(hierarchy.human_psi(self.fashion, 6, 10), (3, 1, 1, 1, 1, 3))
        self.assertEqual(hierarchy.resolve_psi(self.fashion, 2, 10), (6, 4))
        # 10 x 30 (paper Fig. 6): uniform.
        self.assertIsNone(hierarchy.human_psi(self.fashion, 10, 30))
        self.assertEqual(hierarchy.resolve_psi(self.fashion, 10, 30), (3,) * 10)

    def test_human_labels(self):
        # 2 -> 10: clothes 0, 1, 2, 3, 4, 6 fill slots 0..5, goods 5, 7, 8, 9 slots 6..9.
        self.assertAllEqual(
            hierarchy.human_aux_labels(self.fashion, 2, 10, np.arange(10)), [0, 1, 2, 3, 4, 6, 5, 7, 8, 9]
        )
        # 6 -> 10, offsets [0, 3, 4, 5, 6, 7]: tops 0, 2, 6 at 0..2, Trouser 3, Dress 4, Coat 5,
        # Bag 6, shoes 5, 7, 9 at 7..9.
        self.assertAllEqual(
            hierarchy.human_aux_labels(self.fashion, 6, 10, np.arange(10)), [0, 3, 1, 4, 5, 7, 2, 8, 6, 9]
        )
        # 2 -> 6, offsets [0, 4]: a Sneaker is shoes, goods' second class (slot 4 + 1); a Coat is
        # outers, clothes' fourth (slot 3).
        self.assertAllEqual(hierarchy.human_aux_labels(self.fashion, 2, 6, np.array([7, 4])), [5, 3])


class MnistHierarchyTest(tf.test.TestCase):
    def test_digits_only(self):
        mnist = _levels("mnist")
        self.assertEqual(sorted(mnist.levels), [10])
        self.assertEqual(hierarchy.resolve_psi(mnist, 10, 30), (3,) * 10)
        with self.assertRaisesRegex(errors.Error, r"--pri=2: MNIST .*\[10\]"):
            hierarchy.resolve_psi(mnist, 2, 10)


# CIFAR-100's superclasses as its publishers list them, in coarse label order.
_CIFAR100_MEMBERS = (
    ("beaver", "dolphin", "otter", "seal", "whale"),
    ("aquarium fish", "flatfish", "ray", "shark", "trout"),
    ("orchid", "poppy", "rose", "sunflower", "tulip"),
    ("bottle", "bowl", "can", "cup", "plate"),
    ("apple", "mushroom", "orange", "pear", "sweet pepper"),
    ("clock", "keyboard", "lamp", "telephone", "television"),
    ("bed", "chair", "couch", "table", "wardrobe"),
    ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    ("bear", "leopard", "lion", "tiger", "wolf"),
    ("bridge", "castle", "house", "road", "skyscraper"),
    ("cloud", "forest", "mountain", "plain", "sea"),
    ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    ("fox", "porcupine", "possum", "raccoon", "skunk"),
    ("crab", "lobster", "snail", "spider", "worm"),
    ("baby", "boy", "girl", "man", "woman"),
    ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    ("maple tree", "oak tree", "palm tree", "pine tree", "willow tree"),
    ("bicycle", "bus", "motorcycle", "pickup truck", "train"),
    ("lawn mower", "rocket", "streetcar", "tank", "tractor"),
)


class NamesTest(tf.test.TestCase):
    def test_every_level_of_every_data_set_is_named(self):
        for dataset in ("cifar100", "cifar10", "cifar10_1", "digits", "fashion_mnist", "mnist"):
            h = _levels(dataset)
            self.assertEqual(sorted(h.names), sorted(h.levels), dataset)
            for level in h.levels:
                names = h.names_at(level)
                self.assertLen(names, level, f"{dataset} level {level}")
                self.assertLen(set(names), level, f"{dataset} level {level}: names repeat")

    def test_cifar100_names_follow_the_label_order(self):
        cifar100 = _levels("cifar100")
        fine_names = np.asarray(cifar100.names_at(100))
        self.assertEqual(list(fine_names), sorted(fine_names))  # the published order is alphabetical
        for coarse, members in enumerate(_CIFAR100_MEMBERS):
            self.assertEqual(tuple(fine_names[cifar100.levels[20] == coarse]), members, cifar100.names_at(20)[coarse])
        self.assertEqual(cifar100.names_at(20)[4], "fruit and vegetables")
        # Appendix A: fruit and vegetables are vegetations, which are their own 3-level class.
        apple = 0
        self.assertEqual(cifar100.names_at(10)[cifar100.levels[10][apple]], "vegetations")
        self.assertEqual(cifar100.names_at(3)[cifar100.levels[3][apple]], "vegetations")
        bear = 3
        self.assertEqual(cifar100.names_at(10)[cifar100.levels[10][bear]], "large animals")
        self.assertEqual(cifar100.names_at(3)[cifar100.levels[3][bear]], "animals")

    def test_names_of_small_sets(self):
        fashion = _levels("fashion_mnist")
        names = np.asarray(fashion.names_at(10))
        self.assertEqual(tuple(names[fashion.levels[2] == 1]), ("Sandal", "Sneaker", "Bag", "Ankle boot"))
        self.assertEqual(
            tuple(names[fashion.levels[6] == fashion.names_at(6).index("tops")]), ("T-shirt/top", "Pullover", "Shirt")
        )
        self.assertEqual(fashion.names_at(2), ("clothes", "goods"))
        digits = _levels("digits")
        self.assertEqual(digits.names_at(2)[digits.levels[2][7]], "straight")
        self.assertEqual(digits.names_at(10)[7], "7")
        self.assertEqual(_levels("cifar10").names_at(10)[3], "cat")
        self.assertEqual(_levels("mnist").names_at(10), tuple("0123456789"))

    def test_level_without_names_shows_numbers(self):
        h = hierarchy.Hierarchy("toy", {4: np.arange(4), 2: np.array([0, 0, 1, 1])}, {4: ("a", "b", "c", "d")})
        self.assertEqual(h.names_at(2), ("0", "1"))
        self.assertEqual(h.names_at(4), ("a", "b", "c", "d"))


if __name__ == "__main__":
    tf.test.main()
