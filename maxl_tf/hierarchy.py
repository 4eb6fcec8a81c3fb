"""Class hierarchies and psi: how many auxiliary classes each principal class owns.

Every data set is described by its finest labels plus, for each coarser level a human defined,
a table from the finest label to that level. From two levels we get psi (the human hierarchy)
and the human auxiliary labels; for any other (pri, aux) with aux a multiple of pri, psi is
uniform. Auxiliary classes are laid out in contiguous blocks, block i owning psi[i] classes,
which is the layout of the generator's masked softmax (paper Section 3.3).
"""

import dataclasses

import numpy as np

from maxl_tf import errors

# The standard CIFAR-100 fine -> coarse (20 superclasses) table, in the data set's own order.
CIFAR100_FINE_TO_COARSE = (
    4,
    1,
    14,
    8,
    0,
    6,
    7,
    7,
    18,
    3,
    3,
    14,
    9,
    18,
    7,
    11,
    3,
    9,
    7,
    11,
    6,
    11,
    5,
    10,
    7,
    6,
    13,
    15,
    3,
    15,
    0,
    11,
    1,
    10,
    12,
    14,
    16,
    9,
    11,
    5,
    5,
    19,
    8,
    8,
    15,
    13,
    14,
    17,
    18,
    10,
    16,
    4,
    17,
    4,
    2,
    0,
    17,
    4,
    18,
    17,
    10,
    3,
    2,
    12,
    12,
    16,
    12,
    1,
    9,
    19,
    2,
    10,
    0,
    1,
    16,
    12,
    9,
    13,
    15,
    13,
    16,
    19,
    2,
    4,
    6,
    19,
    5,
    5,
    8,
    19,
    18,
    1,
    2,
    15,
    6,
    0,
    17,
    8,
    14,
    13,
)

# Appendix A, 20 -> 10 classes: 0 large animals, 1 medium animals, 2 small animals,
# 3 invertebrates, 4 people, 5 vegetations, 6 household objects, 7 construction,
# 8 natural scenes, 9 vehicles.
CIFAR100_COARSE_TO_10 = (1, 2, 5, 6, 5, 6, 6, 3, 0, 7, 8, 0, 1, 3, 4, 0, 2, 5, 9, 9)
# Appendix A, 10 -> 3 classes: animals, vegetations, objects and scenes.
CIFAR100_10_TO_3 = (0, 0, 0, 0, 0, 1, 2, 2, 2, 2)

# A human hierarchy over the ten digits by stroke shape: 0 curved (0,2,3,5,6,8,9), 1 straight (1,4,7).
DIGITS_TO_2 = (0, 1, 0, 0, 1, 0, 0, 1, 0, 0)

# Fashion-MNIST's coarse levels as published with B-CNN (Zhu and Bain, 2017), over its labels
# 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag,
# 9 Ankle boot. 6 classes: 0 tops, 1 bottoms, 2 dresses, 3 outers, 4 accessories, 5 shoes.
FASHION_MNIST_TO_6 = (0, 1, 0, 2, 3, 5, 0, 5, 4, 5)
# 6 -> 2 classes: 0 clothes (tops, bottoms, dresses, outers), 1 goods (accessories, shoes).
FASHION_MNIST_6_TO_2 = (0, 0, 0, 0, 1, 1)

# Class names per level, in label order, for figures and predictions. CIFAR's are the names its
# archives publish, with spaces for underscores; the 10 and 3 classes are Appendix A's.
CIFAR100_FINE_NAMES = (
    "apple",
    "aquarium fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak tree",
    "orange",
    "orchid",
    "otter",
    "palm tree",
    "pear",
    "pickup truck",
    "pine tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow tree",
    "wolf",
    "woman",
    "worm",
)
CIFAR100_COARSE_NAMES = (
    "aquatic mammals",
    "fish",
    "flowers",
    "food containers",
    "fruit and vegetables",
    "household electrical devices",
    "household furniture",
    "insects",
    "large carnivores",
    "large man-made outdoor things",
    "large natural outdoor scenes",
    "large omnivores and herbivores",
    "medium mammals",
    "non-insect invertebrates",
    "people",
    "reptiles",
    "small mammals",
    "trees",
    "vehicles 1",
    "vehicles 2",
)
CIFAR100_10_NAMES = (
    "large animals",
    "medium animals",
    "small animals",
    "invertebrates",
    "people",
    "vegetations",
    "household objects",
    "construction",
    "natural scenes",
    "vehicles",
)
CIFAR100_3_NAMES = ("animals", "vegetations", "objects and scenes")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_NAMES = tuple(str(d) for d in range(10))
DIGITS_2_NAMES = ("curved", "straight")
FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_6_NAMES = ("tops", "bottoms", "dresses", "outers", "accessories", "shoes")
FASHION_MNIST_2_NAMES = ("clothes", "goods")


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """Label levels of one data set.

    Attributes:
      name: data set name, for messages.
      levels: number of classes at a level -> int array [num_finest] mapping a finest label to
        its label at that level. The finest level maps to itself.
      names: number of classes at a level -> its class names in label order; a level without
        names is shown by label number.
    """

    name: str
    levels: dict
    names: dict = dataclasses.field(default_factory=dict)

    @property
    def finest(self) -> int:
        return max(self.levels)

    def labels_at(self, level: int, finest_labels: np.ndarray) -> np.ndarray:
        """Relabels finest labels at a coarser level."""
        return self.levels[level][finest_labels]

    def names_at(self, level: int) -> tuple:
        """The class names of a label level, in label order ('0', '1', ... where it has none)."""
        return self.names.get(level) or tuple(str(label) for label in range(level))


def _compose(*tables) -> np.ndarray:
    out = np.asarray(tables[0])
    for table in tables[1:]:
        out = np.asarray(table)[out]
    return out


def for_dataset(dataset: str) -> Hierarchy:
    """The human label levels each supported data set has."""
    if dataset == "cifar100":
        fine_to_20 = np.asarray(CIFAR100_FINE_TO_COARSE)
        fine_to_10 = _compose(fine_to_20, CIFAR100_COARSE_TO_10)
        fine_to_3 = _compose(fine_to_10, CIFAR100_10_TO_3)
        return Hierarchy(
            "CIFAR-100",
            {100: np.arange(100), 20: fine_to_20, 10: fine_to_10, 3: fine_to_3},
            {100: CIFAR100_FINE_NAMES, 20: CIFAR100_COARSE_NAMES, 10: CIFAR100_10_NAMES, 3: CIFAR100_3_NAMES},
        )
    if dataset in ("cifar10", "cifar10_1"):
        return Hierarchy("CIFAR-10", {10: np.arange(10)}, {10: CIFAR10_NAMES})
    if dataset == "digits":
        return Hierarchy(
            "digits", {10: np.arange(10), 2: np.asarray(DIGITS_TO_2)}, {10: DIGIT_NAMES, 2: DIGITS_2_NAMES}
        )
    if dataset == "fashion_mnist":
        fine_to_6 = np.asarray(FASHION_MNIST_TO_6)
        return Hierarchy(
            "Fashion-MNIST",
            {10: np.arange(10), 6: fine_to_6, 2: _compose(fine_to_6, FASHION_MNIST_6_TO_2)},
            {10: FASHION_MNIST_NAMES, 6: FASHION_MNIST_6_NAMES, 2: FASHION_MNIST_2_NAMES},
        )
    if dataset == "mnist":
        return Hierarchy("MNIST", {10: np.arange(10)}, {10: DIGIT_NAMES})
    raise errors.Error(f"--dataset={dataset}: no label hierarchy is known for it.")


def _parents(hierarchy: Hierarchy, pri: int, aux: int) -> np.ndarray:
    """The level-`pri` class of each level-`aux` class. [aux]"""
    pri_of_aux = np.zeros(aux, np.int64)
    pri_of_aux[hierarchy.levels[aux]] = hierarchy.levels[pri]
    return pri_of_aux


def human_psi(hierarchy: Hierarchy, pri: int, aux: int) -> tuple | None:
    """psi of the human hierarchy between two levels, or None if the data set has no such pair."""
    if pri not in hierarchy.levels or aux not in hierarchy.levels or aux <= pri:
        return None
    return tuple(int(n) for n in np.bincount(_parents(hierarchy, pri, aux), minlength=pri))


def resolve_psi(hierarchy: Hierarchy, pri: int, aux: int, psi: tuple | None = None) -> tuple:
    """The psi a run uses: --psi if given, else the human hierarchy's, else uniform aux / pri.

    Raises:
      errors.Error: pri is not a label level of the data set, or no psi fits (pri, aux).
    """
    levels = sorted(hierarchy.levels)
    if pri not in hierarchy.levels:
        raise errors.Error(
            f"--pri={pri}: {hierarchy.name} has principal labels with {levels} classes; pick one of them."
        )
    if aux < 1:
        raise errors.Error(f"--aux={aux}: the number of auxiliary classes must be positive.")
    if psi is not None:
        if len(psi) != pri or min(psi) < 1 or sum(psi) != aux:
            raise errors.Error(
                f"--psi={','.join(map(str, psi))}: needs {pri} positive entries (one per principal class) "
                f"summing to --aux={aux}; it has {len(psi)} entries summing to {sum(psi)}."
            )
        return tuple(psi)
    from_human = human_psi(hierarchy, pri, aux)
    if from_human is not None:
        return from_human
    if aux % pri == 0 and aux >= pri:
        return (aux // pri,) * pri
    raise errors.Error(_no_psi_message(hierarchy, pri, aux))


def _no_psi_message(hierarchy: Hierarchy, pri: int, aux: int) -> str:
    """Why (pri, aux) gives no psi, and the nearest flags that do."""
    human = [f"--aux={n}" for n in sorted(hierarchy.levels) if n > pri and human_psi(hierarchy, pri, n) is not None]
    human_text = f"; {hierarchy.name}'s human levels under --pri={pri}: {' or '.join(human)}" if human else ""
    if aux < pri:
        return (
            f"--pri={pri} --aux={aux}: each principal class needs at least one auxiliary class, so --aux "
            f"must be at least {pri}. Use --aux={pri} or a multiple of it (psi uniform){human_text}."
        )
    lower, remainder = divmod(aux, pri)
    even = [lower + 1] * remainder + [lower] * (pri - remainder)
    return (
        f"--pri={pri} --aux={aux}: {aux} auxiliary classes do not split evenly over {pri} principal "
        f"classes, and {hierarchy.name} has no human level of {aux} under them. Use --aux={lower * pri} or "
        f"--aux={(lower + 1) * pri} (psi uniform){human_text}, or give psi yourself, e.g. "
        f"--psi={','.join(map(str, even))}."
    )


def block_offsets(psi) -> np.ndarray:
    """Index of the first auxiliary class of each principal class's block. [pri]"""
    return np.concatenate([[0], np.cumsum(psi)[:-1]]).astype(np.int64)


def owners(psi) -> np.ndarray:
    """The principal class that owns each auxiliary class: psi=[2,2,1] gives [0,0,1,1,2]. [aux]"""
    return np.repeat(np.arange(len(psi)), psi)


def psi_mask(psi) -> np.ndarray:
    """Binary mask M = B(y, psi) for every y (paper Section 3.3). [pri, sum(psi)] float32.

    Row i is ones on the block of auxiliary classes owned by principal class i: psi=[2,2,1]
    gives rows [1,1,0,0,0], [0,0,1,1,0], [0,0,0,0,1].
    """
    return (owners(psi)[None, :] == np.arange(len(psi))[:, None]).astype(np.float32)


def require_human_psi(hierarchy: Hierarchy, pri: int, aux: int, method: str = "human") -> tuple:
    """human_psi, or an errors.Error saying which levels a baseline built on it can use."""
    psi = human_psi(hierarchy, pri, aux)
    if psi is None:
        raise errors.Error(
            f"--method={method} needs a human hierarchy between --pri={pri} and --aux={aux}; "
            f"{hierarchy.name} has label levels {sorted(hierarchy.levels)}. Pick two of them, or another --method."
        )
    return psi


def human_aux_labels(hierarchy: Hierarchy, pri: int, aux: int, finest_labels: np.ndarray) -> np.ndarray:
    """Human auxiliary labels laid out in psi's blocks.

    The block of principal class i holds its human sub-classes in ascending order of their
    own label, so class a of level `aux` becomes offset[parent(a)] + (rank of a among its siblings).

    Raises:
      errors.Error: the data set has no human hierarchy between these levels.
    """
    psi = require_human_psi(hierarchy, pri, aux)
    pri_of_aux = _parents(hierarchy, pri, aux)
    rank = np.zeros(aux, np.int64)
    for parent in range(pri):
        children = np.flatnonzero(pri_of_aux == parent)
        rank[children] = np.arange(len(children))
    slot_of_aux = block_offsets(psi)[pri_of_aux] + rank  # [aux]
    return slot_of_aux[hierarchy.levels[aux][finest_labels]]
