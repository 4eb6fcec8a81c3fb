"""A run's inputs: the data set loaded, cut to its subsets, split into the evaluator's training
examples and the meta examples, and labelled for the run's principal and auxiliary tasks."""
import dataclasses

import numpy as np

from maxl_tf import config as config_lib
from maxl_tf import data as data_lib
from maxl_tf import embedder as embedder_lib
from maxl_tf import errors
from maxl_tf import hierarchy as hierarchy_lib
from maxl_tf import labels as labels_lib
from maxl_tf import loaders
from maxl_tf import models


@dataclasses.dataclass
class RunData:
    train: data_lib.Pipeline
    test: data_lib.Pipeline
    train_indices: np.ndarray   # examples the evaluator trains on
    meta_indices: np.ndarray    # maxl: the meta objective's examples; prototypical: the prototypes'
    input_shape: tuple
    source: str
    aux_label_info: dict = dataclasses.field(default_factory=dict)  # prototypical: what made the labels


def _subset(split: loaders.Split, limit: int) -> loaders.Split:
    """The first `limit` examples of a fixed (seed-independent) shuffle, so sweeps over seeds
    share the same subset."""
    if not limit or limit >= len(split.labels):
        return split
    keep = np.sort(np.random.default_rng(0).permutation(len(split.labels))[:limit])
    return loaders.Split(split.images[keep], split.labels[keep])


def prepare(config: config_lib.Config) -> RunData:
    """Loads the data set and labels it for a validated config's tasks.

    Raises:
      errors.Error: the data cannot be loaded or does not fit the run.
    """
    raw = loaders.load(config.dataset, config.data_dir or None, config.download)
    train, test = _subset(raw.train, config.max_train_examples), _subset(raw.test, config.max_test_examples)
    models.check_input_size(config.model, train.images.shape[1])
    hierarchy = hierarchy_lib.for_dataset(config.dataset)

    def examples(split, aux_labels):
        return data_lib.Examples(split.images, hierarchy.labels_at(config.pri, split.labels), aux_labels)

    num_train = len(train.labels)
    if config.method in config_lib.USES_META_SPLIT:
        train_indices, meta_indices = data_lib.split_meta(num_train, config.meta_split, config.seed)
    else:
        train_indices = meta_indices = np.arange(num_train)
    if len(train_indices) < config.batch_size:
        raise errors.Error(f"--batch_size={config.batch_size}: larger than the {len(train_indices)} "
                           f"training examples; lower it or raise --max_train_examples.")
    aux_label_info = {}
    if config.method == "prototypical":
        embedder = embedder_lib.load(config.embedder, config.embedder_fallback, config.seed)
        aux_train = labels_lib.prototypical_aux_labels(embedder, hierarchy, config.pri, config.aux, config.psi,
                                                       train.images, train.labels, meta_indices)
        human = hierarchy_lib.human_aux_labels(hierarchy, config.pri, config.aux, train.labels)
        aux_label_info = {"embedder": embedder.description,
                          "human_agreement": float(np.mean(aux_train[train_indices] == human[train_indices]))}
    else:
        aux_train = labels_lib.fixed_aux_labels(config.method, hierarchy, config.pri, config.aux, config.psi,
                                                train.labels, config.seed)
    return RunData(
        train=data_lib.Pipeline(examples(train, aux_train)),
        test=data_lib.Pipeline(examples(test, np.zeros(len(test.labels), np.int64))),
        train_indices=train_indices, meta_indices=meta_indices,
        input_shape=tuple(train.images.shape[1:]), source=raw.source, aux_label_info=aux_label_info)
