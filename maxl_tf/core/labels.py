"""Where the evaluator's auxiliary targets come from, one class per method of core/methods.py.

maxl    the generator's masked softmax, soft labels learned through the meta objective
human   the human hierarchy's sub-class, one-hot
random  a sub-class within psi drawn once per image and kept for the whole run (paper's
        "Random assignment")
prototypical  the nearest prototype of a human sub-class, prototypes embedded from the meta
        split by a pre-trained network (paper's "Prototypical Net"), one-hot, fixed for the run
kmeans  k-means clusters of the same embedding within each principal class, psi[i] of them (the
        baseline a reviewer of the paper asked for), one-hot, fixed for the run
single  no auxiliary task

Each is a small class with one interface (LabelSource): targets() per batch, and fixed_labels()
once per run for the methods whose labels do not change. The command line maps its --method
string to one in one place (source()); the Python API takes the classes themselves.
"""

import dataclasses
from typing import Callable

import numpy as np
from scipy import optimize
from sklearn import cluster
from sklearn import metrics
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.core import losses
from maxl_tf.core import methods
from maxl_tf.core import streams


@dataclasses.dataclass(frozen=True)
class RunLabels:
    """What a label source may read to fix its labels for a run's training examples.

    Attributes:
      hierarchy: the data set's label levels; pri, aux, psi: the run's (psi resolved).
      finest_labels: [N] finest labels of the training examples.
      seed: the run's seed.
      train_indices, meta_indices: the examples the evaluator trains on and the held-out meta
        examples (the same arrays when the method uses no meta split).
      embed: () -> (embeddings [N, D], embedder description), called only by methods that embed.
    """

    hierarchy: hierarchy_lib.Hierarchy
    pri: int
    aux: int
    psi: tuple
    finest_labels: np.ndarray
    seed: int
    train_indices: np.ndarray
    meta_indices: np.ndarray
    embed: Callable = None

    @property
    def pri_labels(self) -> np.ndarray:
        return self.hierarchy.labels_at(self.pri, self.finest_labels)

    def human_slots(self) -> np.ndarray | None:
        """Human auxiliary labels in psi's block layout, or None without a human hierarchy
        between pri and aux whose psi is this run's."""
        if hierarchy_lib.human_psi(self.hierarchy, self.pri, self.aux) != tuple(self.psi):
            return None
        return hierarchy_lib.human_aux_labels(self.hierarchy, self.pri, self.aux, self.finest_labels)


class LabelSource:
    """Where the evaluator's auxiliary targets come from.

    Attributes:
      name: the --method string it stands for; methods.get(name) describes it (auxiliary,
        learned, uses_meta_data below read that descriptor).
    """

    name = ""

    @property
    def method(self) -> methods.Method:
        return methods.get(self.name)

    @property
    def auxiliary(self) -> bool:
        """Whether there is an auxiliary task (False: single-task)."""
        return self.method.auxiliary

    @property
    def learned(self) -> bool:
        """Whether the labels come from a generator trained by the meta objective (MAXL)."""
        return self.method.learned

    @property
    def uses_meta_data(self) -> bool:
        """Whether it learns from held-out meta data, the evaluator training on the rest (paper
        Section 4.1)."""
        return self.method.meta_split

    def targets(
        self, batch, num_aux, generator=None, mask_table=None, generator_training=False, update_statistics=True
    ):
        """The evaluator's auxiliary targets of one batch, [batch, num_aux], or None (single-task).

        batch: {"images", "labels"[, "aux_labels"]}; the rest as auxiliary_targets'.
        """
        raise NotImplementedError

    def fixed_labels(self, run: RunLabels) -> tuple:
        """(auxiliary labels of every training example in psi's block layout, [N] int64; a dict of
        facts about them for results.json). Zeros, unused, for methods whose labels are not fixed."""
        return np.zeros(len(run.finest_labels), np.int64), {}

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


SOURCES = {}  # --method name -> LabelSource class


def register(cls):
    """Class decorator: the label source of the method core/methods.py registered as cls.name."""
    methods.get(cls.name)  # the descriptor comes first: a ValueError names the registered methods
    if cls.name in SOURCES:
        raise ValueError(f"a label source for method {cls.name!r} is registered already")
    SOURCES[cls.name] = cls
    return cls


@register
class Single(LabelSource):
    """No auxiliary task: the evaluator's principal head alone."""

    name = "single"

    def targets(
        self, batch, num_aux, generator=None, mask_table=None, generator_training=False, update_statistics=True
    ):
        return None


class FixedLabels(LabelSource):
    """One-hot targets of labels fixed for the whole run, which the batches carry as "aux_labels"
    (in psi's block layout): human, random and prototypical."""

    def targets(
        self, batch, num_aux, generator=None, mask_table=None, generator_training=False, update_statistics=True
    ):
        if "aux_labels" not in batch:
            raise ValueError(f"labels={self!r}: the batches need auxiliary labels, (images, labels, aux_labels)")
        return tf.one_hot(batch["aux_labels"], num_aux)


@register
class Human(FixedLabels):
    """The human hierarchy's sub-class."""

    name = "human"

    def fixed_labels(self, run: RunLabels) -> tuple:
        return hierarchy_lib.human_aux_labels(run.hierarchy, run.pri, run.aux, run.finest_labels), {}


@register
class Random(FixedLabels):
    """A sub-class within the principal class's block, drawn once per example and kept."""

    name = "random"

    def labels(self, pri_labels: np.ndarray, psi, seed: int) -> np.ndarray:
        """[N] int64 auxiliary labels of examples with these principal labels, a function of seed."""
        pri_labels = np.asarray(pri_labels, np.int64)
        draws = np.random.default_rng([seed, streams.RANDOM_LABEL_STREAM]).random(len(pri_labels))
        within_block = np.floor(draws * np.asarray(psi)[pri_labels]).astype(np.int64)
        return hierarchy_lib.block_offsets(psi)[pri_labels] + within_block

    def fixed_labels(self, run: RunLabels) -> tuple:
        return self.labels(run.pri_labels, run.psi, run.seed), {}


@register
class Prototypical(FixedLabels):
    """The nearest prototype of a human sub-class (prototypical_aux_labels)."""

    name = "prototypical"

    def fixed_labels(self, run: RunLabels) -> tuple:
        embeddings, description = run.embed()
        labels = prototypical_aux_labels(
            embeddings, run.hierarchy, run.pri, run.aux, run.psi, run.finest_labels, run.meta_indices
        )
        return labels, {"embedder": description, **human_agreement(labels, run, matched=False)}


@register
class KMeans(FixedLabels):
    """k-means clusters of the embedding within each principal class (kmeans_aux_labels)."""

    name = "kmeans"

    def fixed_labels(self, run: RunLabels) -> tuple:
        embeddings, description = run.embed()
        labels = kmeans_aux_labels(embeddings, run.pri_labels, run.psi, run.seed)
        return labels, {"embedder": description, **human_agreement(labels, run, matched=True)}


@register
class Maxl(LabelSource):
    """The generator's masked softmax, soft labels learned through the meta objective."""

    name = "maxl"

    def targets(
        self, batch, num_aux, generator=None, mask_table=None, generator_training=False, update_statistics=True
    ):
        return tf.stop_gradient(
            generated_labels(
                generator, batch["images"], batch["labels"], mask_table, generator_training, update_statistics
            )
        )


def source(method) -> LabelSource:
    """The label source a --method string names (a LabelSource is returned as it is)."""
    if isinstance(method, LabelSource):
        return method
    if method not in SOURCES:
        known = f"labels={method!r}: one of {', '.join(SOURCES)} or a LabelSource"
        if method in methods.REGISTRY:
            known += f"; method {method!r} is registered without one: decorate its class with labels.register"
        raise ValueError(known)
    return SOURCES[method]()


def fixed_aux_labels(
    method: str, hierarchy: hierarchy_lib.Hierarchy, pri: int, aux: int, psi, finest_labels: np.ndarray, seed: int
) -> np.ndarray:
    """The fixed auxiliary labels of a method that needs no embedder nor meta split, in psi's
    block layout (zeros for maxl and single). [N] int64"""
    everything = np.arange(len(finest_labels))
    run = RunLabels(hierarchy, pri, aux, tuple(psi), np.asarray(finest_labels), seed, everything, everything)
    return source(method).fixed_labels(run)[0]


def human_agreement(labels: np.ndarray, run: RunLabels, matched: bool) -> dict:
    """{"human_agreement": the share of the training examples whose label is their human
    sub-class}, or {} without a human hierarchy at this run's psi.

    matched: the labels' classes carry no meaning of their own (clusters), so each block's classes
    are first matched one-to-one to its human classes to agree the most (Hungarian matching);
    without it, slot i must be human class i (prototypes sit at their human class's slot).
    """
    human = run.human_slots()
    if human is None:
        return {}
    labels, human = labels[run.train_indices], human[run.train_indices]
    if matched:
        counts = np.zeros((run.aux, run.aux), np.int64)  # [label, human class]
        np.add.at(counts, (labels, human), 1)
        rows, columns = optimize.linear_sum_assignment(counts, maximize=True)  # blocks never mix
        renamed = np.empty(run.aux, np.int64)
        renamed[rows] = columns
        labels = renamed[labels]
    return {"human_agreement": float(np.mean(labels == human))}


def kmeans_aux_labels(embeddings: np.ndarray, pri_labels: np.ndarray, psi, seed: int) -> np.ndarray:
    """k-means within each principal class: psi[i] clusters of class i's embeddings, their ids
    laid out in block i. [N] int64

    The clusters use no human labels; scikit-learn's k-means++ with 10 restarts, seeded by the
    run's seed, so a run's labels are a function of its seed and data.

    Raises:
      errors.Error: a principal class has fewer training examples than clusters.
    """
    embeddings = np.asarray(embeddings, np.float64)
    pri_labels = np.asarray(pri_labels)
    offsets = hierarchy_lib.block_offsets(psi)
    labels = np.zeros(len(pri_labels), np.int64)
    for i, clusters in enumerate(psi):
        members = np.flatnonzero(pri_labels == i)
        if 0 < len(members) < clusters:
            raise errors.Error(
                f"--method=kmeans: principal class {i} has {len(members)} training examples for its {clusters} "
                f"clusters; raise --max_train_examples or lower --aux."
            )
        if len(members) == 0:
            continue
        if clusters == 1:
            labels[members] = offsets[i]
            continue
        k_means = cluster.KMeans(n_clusters=clusters, n_init=10, random_state=seed)
        labels[members] = offsets[i] + k_means.fit_predict(embeddings[members])
    return labels


def nearest_prototype_labels(
    embeddings: np.ndarray, human_slots: np.ndarray, pri_labels: np.ndarray, psi, meta_indices: np.ndarray
) -> np.ndarray:
    """Each example's nearest prototype within its principal class's block. [N] int64

    A prototype is the mean embedding of one human auxiliary class over the meta examples (Snell
    et al., 2017); distance is squared Euclidean, as theirs. An auxiliary class without meta
    examples has no prototype and is never assigned.

    Args:
      embeddings: [N, D] of every example.
      human_slots: [N] human auxiliary labels in psi's block layout; only the meta examples' are read.
      pri_labels: [N] principal labels.
      meta_indices: the examples whose human labels define the prototypes.

    Raises:
      errors.Error: a principal class of the examples has no auxiliary class with meta examples.
    """
    embeddings = np.asarray(embeddings, np.float64)
    aux = sum(psi)
    meta_slots = human_slots[meta_indices]
    counts = np.bincount(meta_slots, minlength=aux)  # [aux]
    sums = np.zeros((aux, embeddings.shape[1]))
    np.add.at(sums, meta_slots, embeddings[meta_indices])
    prototypes = sums / np.maximum(counts, 1)[:, None]  # [aux, D]
    candidates = hierarchy_lib.psi_mask(psi)[pri_labels].astype(bool) & (counts > 0)  # [N, aux]
    orphans = np.unique(pri_labels[~candidates.any(axis=1)])
    if len(orphans):
        raise errors.Error(
            f"--method=prototypical: principal class(es) {orphans.tolist()} have no meta examples, so "
            f"no prototypes; raise --meta_split or --max_train_examples."
        )
    distances = metrics.pairwise.euclidean_distances(embeddings, prototypes, squared=True)  # [N, aux]
    return np.argmin(np.where(candidates, distances, np.inf), axis=1).astype(np.int64)


def prototypical_aux_labels(
    embeddings: np.ndarray,
    hierarchy: hierarchy_lib.Hierarchy,
    pri: int,
    aux: int,
    psi,
    finest_labels: np.ndarray,
    meta_indices: np.ndarray,
) -> np.ndarray:
    """The Prototypical-net baseline's labels for every training example, in psi's block layout.

    embeddings: [N, D] of every training example (models/embedder.py embeds the images).

    psi is the human hierarchy's (config.resolve), so block i holds principal class i's human
    sub-classes and each prototype sits at its human class's slot. [N] int64
    """
    human_slots = hierarchy_lib.human_aux_labels(hierarchy, pri, aux, finest_labels)
    return nearest_prototype_labels(embeddings, human_slots, hierarchy.labels_at(pri, finest_labels), psi, meta_indices)


def generated_labels(generator, images, labels, mask_table, training: bool, update_statistics: bool = True):
    """The generator's soft auxiliary labels g(x, y, psi). [batch, aux]

    Args:
      mask_table: [pri, aux] psi_mask; row y is the block principal class y owns.
      training: batch norm with the batch's statistics (else the moving ones).
      update_statistics: in training mode, let batch norm move its moving statistics (False: a
        stateless call, for diagnostics).
    """
    if training and not update_statistics:
        logits, _ = generator.stateless_call(
            [v.value for v in generator.trainable_variables],
            [v.value for v in generator.non_trainable_variables],
            images,
            training=True,
        )
    else:
        logits = generator(images, training=training)
    mask = tf.gather(mask_table, labels)  # [batch, aux]
    return losses.masked_softmax(logits, mask)


def auxiliary_targets(
    method,
    batch: dict,
    aux: int,
    generator=None,
    mask_table=None,
    generator_training: bool = False,
    update_statistics: bool = True,
):
    """The evaluator's auxiliary targets for one batch, [batch, aux], or None for single-task.

    method: a LabelSource or the --method string naming one.
    generator_training (--generator_labels_bn): False labels with the generator's moving
    batch-norm statistics and leaves them as they are; True labels with the batch's statistics,
    as the meta step's outputs are computed, and, like PyTorch's train mode in the authors' code,
    updates the moving statistics (unless update_statistics is False: diagnostics). Either way
    only the meta step trains the generator's weights.
    """
    return source(method).targets(batch, aux, generator, mask_table, generator_training, update_statistics)


def hard_generated_labels(generator, images, labels, mask_table, training: bool):
    """The generator's argmax auxiliary labels, leaving its batch-norm statistics as they are.
    [batch] int64"""
    soft = generated_labels(generator, images, labels, mask_table, training, update_statistics=False)
    return tf.argmax(soft, axis=-1, output_type=tf.int64)
