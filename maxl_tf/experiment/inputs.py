"""A run's inputs: the data set loaded, cut to its subsets, split into the evaluator's training
examples and the meta examples, and labelled for the run's principal and auxiliary tasks."""

import dataclasses

import numpy as np

from maxl_tf import errors
from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import methods
from maxl_tf.data import images as images_lib
from maxl_tf.data import pipeline
from maxl_tf.data import source as source_lib
from maxl_tf.experiment import config as config_lib
from maxl_tf.models import embedder as embedder_lib
from maxl_tf.models import pixels
from maxl_tf.models import vgg


@dataclasses.dataclass
class RunData:
    train: pipeline.Pipeline
    test: pipeline.Pipeline
    train_indices: np.ndarray  # examples the evaluator trains on
    meta_indices: np.ndarray  # maxl: the meta objective's examples; prototypical: the prototypes'
    input_shape: tuple
    description: str  # one line: where the data came from and how it was read
    aux_label_info: dict = dataclasses.field(default_factory=dict)  # embedded labels: what made them
    # Names of the principal classes, and of the auxiliary classes where they are human classes
    # (human, prototypical); None where the data set has no names or the classes are learned.
    class_names: dict = dataclasses.field(default_factory=lambda: {"principal": None, "auxiliary": None})


def _subset(split: source_lib.Split, limit: int) -> source_lib.Split:
    """The first `limit` examples of a fixed (seed-independent) shuffle, so sweeps over seeds
    share the same subset."""
    if not limit or limit >= len(split.labels):
        return split
    keep = np.sort(np.random.default_rng(0).permutation(len(split.labels))[:limit])
    images = split.images[keep] if isinstance(split.images, np.ndarray) else images_lib.Subset(split.images, keep)
    return source_lib.Split(images, split.labels[keep])


def class_names(levels: hierarchy_lib.Hierarchy, config: config_lib.Config) -> dict:
    """{"principal": names of the principal classes, "auxiliary": names of the auxiliary classes
    in psi's block order}, each None where there are none (see RunData.class_names)."""
    named = {"principal": levels.names.get(config.pri), "auxiliary": None}
    if methods.get(config.method).human_psi and config.aux in levels.names:
        fine = np.arange(levels.finest)
        slots = hierarchy_lib.human_aux_labels(levels, config.pri, config.aux, fine)
        names = [None] * config.aux
        for slot, aux_class in zip(slots, levels.labels_at(config.aux, fine)):
            names[slot] = levels.names[config.aux][aux_class]
        named["auxiliary"] = tuple(names)
    return named


def check_loaded(raw: source_lib.Loaded, levels: hierarchy_lib.Hierarchy, dataset: str) -> None:
    """The door every Source's arrays pass (models/pixels.py's contract): images uint8 or 0..255
    floats [N, H, W, C], one finest label in range per image, a test split that is not empty.

    Raises:
      errors.Error: one line naming --dataset, the split, what was found and the fix.
    """
    for name, split in (("train", raw.train), ("test", raw.test)):
        where = f"--dataset={dataset}: the {name} split"
        try:
            pixels.check_images(split.images, where)
            pixels.check_labels(split.labels, len(split.images), levels.finest, where)
        except ValueError as error:
            raise errors.Error(f"{error}.") from None
        if not len(split.labels):
            raise errors.Error(
                f"{where} holds no images; a run trains on the train split and reports on the test split."
            )


def check_available(runs: list) -> None:
    """Finds every run's data and loads each Prototypical embedder once, before any run trains.

    A sweep whose last runs lack their data or their embedder's weights then stops at once, not
    after the runs before them trained. No data set is read whole (Source.find).

    Raises:
      errors.Error: as prepare() would, naming the flag and the fix.
    """
    for run in runs:
        run.source.find()  # the same Source for runs of the same data: found once
    configs = [run.config for run in runs]
    embedders = dict.fromkeys((c.embedder, c.embedder_fallback) for c in configs if methods.get(c.method).embeds)
    for spec, fallback in embedders:
        if spec != config_lib.UNTRAINED:  # random weights: nothing to find
            embedder_lib.load(spec, fallback)


def prepare(run: config_lib.Run) -> RunData:
    """Loads the data set and labels it for a resolved run's tasks.

    Raises:
      errors.Error: the data cannot be loaded or does not fit the run.
    """
    config, source, hierarchy = run.config, run.source, run.levels
    raw = source.load()
    check_loaded(raw, hierarchy, config.dataset)
    train, test = _subset(raw.train, config.max_train_examples), _subset(raw.test, config.max_test_examples)
    vgg.check_input_size(config.model, train.images.shape[1])

    def examples(split, aux_labels):
        return pipeline.Examples(split.images, hierarchy.labels_at(config.pri, split.labels), aux_labels)

    num_train = len(train.labels)
    labels = labels_lib.source(config.method)
    if labels.uses_meta_data:
        train_indices, meta_indices = pipeline.split_meta(num_train, config.meta_split, config.seed)
    else:
        train_indices = meta_indices = np.arange(num_train)
    if len(train_indices) < config.batch_size:
        raise errors.Error(
            f"--batch_size={config.batch_size}: larger than the {len(train_indices)} "
            f"training examples; lower it or raise --max_train_examples."
        )

    def embed():
        embedder = embedder_lib.load(config.embedder, config.embedder_fallback, config.seed)
        return embedder_lib.embed(embedder, train.images), embedder.description

    aux_train, aux_label_info = labels.fixed_labels(
        labels_lib.RunLabels(
            hierarchy, config.pri, config.aux, config.psi, train.labels, config.seed, train_indices, meta_indices, embed
        )
    )
    return RunData(
        train=pipeline.Pipeline(examples(train, aux_train), source.augmentation),
        test=pipeline.Pipeline(examples(test, np.zeros(len(test.labels), np.int64))),
        train_indices=train_indices,
        meta_indices=meta_indices,
        input_shape=tuple(train.images.shape[1:]),
        description=raw.description,
        aux_label_info=aux_label_info,
        class_names=class_names(hierarchy, config),
    )
