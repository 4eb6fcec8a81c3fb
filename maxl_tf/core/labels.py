"""Where the evaluator's auxiliary targets come from, for each method of the paper.

maxl    the generator's masked softmax, soft labels learned through the meta objective
human   the human hierarchy's sub-class, one-hot
random  a sub-class within psi drawn once per image and kept for the whole run (paper's
        "Random assignment")
prototypical  the nearest prototype of a human sub-class, prototypes embedded from the meta
        split by a pre-trained network (paper's "Prototypical Net"), one-hot, fixed for the run
single  no auxiliary task

Each is a small class with one interface (LabelSource); the command line maps its --method
string to one in one place (source()), the Python API takes the classes themselves.
"""

import numpy as np
from sklearn import metrics
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.core import losses
from maxl_tf.core import streams


class LabelSource:
    """Where the evaluator's auxiliary targets come from.

    Attributes:
      name: the --method string it stands for.
      auxiliary: whether there is an auxiliary task (False: single-task).
      learned: whether the labels come from a generator trained by the meta objective (MAXL).
      uses_meta_data: whether it learns from held-out meta data, the evaluator training on the
        rest (paper Section 4.1).
    """

    name = ""
    auxiliary = True
    learned = False
    uses_meta_data = False

    def targets(
        self, batch, num_aux, generator=None, mask_table=None, generator_training=False, update_statistics=True
    ):
        """The evaluator's auxiliary targets of one batch, [batch, num_aux], or None (single-task).

        batch: {"images", "labels"[, "aux_labels"]}; the rest as auxiliary_targets'.
        """
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


class Single(LabelSource):
    """No auxiliary task: the evaluator's principal head alone."""

    name, auxiliary = "single", False

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


class Human(FixedLabels):
    """The human hierarchy's sub-class."""

    name = "human"

    def labels(self, hierarchy: hierarchy_lib.Hierarchy, pri: int, aux: int, finest_labels: np.ndarray) -> np.ndarray:
        """[N] int64 auxiliary labels of examples with these finest labels."""
        return hierarchy_lib.human_aux_labels(hierarchy, pri, aux, finest_labels)


class Random(FixedLabels):
    """A sub-class within the principal class's block, drawn once per example and kept."""

    name = "random"

    def labels(self, pri_labels: np.ndarray, psi, seed: int) -> np.ndarray:
        """[N] int64 auxiliary labels of examples with these principal labels, a function of seed."""
        pri_labels = np.asarray(pri_labels, np.int64)
        draws = np.random.default_rng([seed, streams.RANDOM_LABEL_STREAM]).random(len(pri_labels))
        within_block = np.floor(draws * np.asarray(psi)[pri_labels]).astype(np.int64)
        return hierarchy_lib.block_offsets(psi)[pri_labels] + within_block


class Prototypical(FixedLabels):
    """The nearest prototype of a human sub-class (prototypical_aux_labels)."""

    name, uses_meta_data = "prototypical", True


class Maxl(LabelSource):
    """The generator's masked softmax, soft labels learned through the meta objective."""

    name, learned, uses_meta_data = "maxl", True, True

    def targets(
        self, batch, num_aux, generator=None, mask_table=None, generator_training=False, update_statistics=True
    ):
        return tf.stop_gradient(
            generated_labels(
                generator, batch["images"], batch["labels"], mask_table, generator_training, update_statistics
            )
        )


SOURCES = {cls.name: cls for cls in (Maxl, Single, Human, Random, Prototypical)}


def source(method) -> LabelSource:
    """The label source a --method string names (a LabelSource is returned as it is)."""
    if isinstance(method, LabelSource):
        return method
    if method not in SOURCES:
        raise ValueError(f"labels={method!r}: one of {', '.join(SOURCES)} or a LabelSource")
    return SOURCES[method]()


def fixed_aux_labels(
    method: str, hierarchy: hierarchy_lib.Hierarchy, pri: int, aux: int, psi, finest_labels: np.ndarray, seed: int
) -> np.ndarray:
    """Auxiliary labels that do not change during training, in psi's block layout. [N] int64.

    maxl and single get zeros (unused); prototypical needs images: prototypical_aux_labels.
    """
    labels = source(method)
    if isinstance(labels, Human):
        return labels.labels(hierarchy, pri, aux, finest_labels)
    if isinstance(labels, Random):
        return labels.labels(hierarchy.labels_at(pri, finest_labels), psi, seed)
    return np.zeros(len(finest_labels), np.int64)


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

    psi is the human hierarchy's (config.validate), so block i holds principal class i's human
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


def usage_summary(counts: np.ndarray, psi) -> dict:
    """How evenly each principal class's auxiliary classes are used, from argmax counts. [aux] -> dict

    Shows the collapsing-class problem (paper Section 3.4): per principal class i, how many of its
    psi[i] classes received any label, and the entropy of the label distribution over its block
    divided by log psi[i] (1: all psi[i] classes equally often; 0: a single class). A block of one
    class counts as fully used (1.0) once it is used at all. Means are over principal classes.
    """
    blocks = np.split(np.asarray(counts, np.float64), hierarchy_lib.block_offsets(psi)[1:])
    used, entropy = [], []
    for block in blocks:
        total = block.sum()
        used.append(int(np.count_nonzero(block)))
        if len(block) == 1 or total == 0:
            entropy.append(float(total > 0))
            continue
        p = block[block > 0] / total
        entropy.append(float(-(p * np.log(p)).sum() / np.log(len(block))))
    return {
        "labels/aux_used_per_pri": used,
        "labels/aux_used_mean": float(np.mean(used)),
        "labels/aux_entropy_per_pri": entropy,
        "labels/aux_entropy_mean": float(np.mean(entropy)),
    }
