"""Where the evaluator's auxiliary targets come from, for each method of the paper.

  maxl    the generator's masked softmax, soft labels learned through the meta objective
  human   the human hierarchy's sub-class, one-hot
  random  a sub-class within psi drawn once per image and kept for the whole run (paper's
          "Random assignment")
  single  no auxiliary task
"""
import numpy as np
import tensorflow as tf

from maxl_tf import data
from maxl_tf import hierarchy as hierarchy_lib
from maxl_tf import losses

METHODS = ("maxl", "single", "human", "random")
# Methods that learn from held-out meta data; the others train on the full training set (4.1).
USES_META_SPLIT = ("maxl",)


def fixed_aux_labels(method: str, hierarchy: hierarchy_lib.Hierarchy, pri: int, aux: int, psi,
                     finest_labels: np.ndarray, seed: int) -> np.ndarray:
    """Auxiliary labels that do not change during training, in psi's block layout. [N] int64.

    maxl and single get zeros (unused).
    """
    if method == "human":
        return hierarchy_lib.human_aux_labels(hierarchy, pri, aux, finest_labels)
    if method == "random":
        pri_labels = hierarchy.labels_at(pri, finest_labels)
        draws = np.random.default_rng([seed, data.RANDOM_LABEL_STREAM]).random(len(finest_labels))
        within_block = np.floor(draws * np.asarray(psi)[pri_labels]).astype(np.int64)
        return hierarchy_lib.block_offsets(psi)[pri_labels] + within_block
    return np.zeros(len(finest_labels), np.int64)


def generated_labels(generator, images, labels, mask_table, training: bool):
    """The generator's soft auxiliary labels g(x, y, psi). [batch, aux]

    Args:
      mask_table: [pri, aux] psi_mask; row y is the block principal class y owns.
    """
    mask = tf.gather(mask_table, labels)                                   # [batch, aux]
    return losses.masked_softmax(generator(images, training=training), mask)


def auxiliary_targets(method: str, batch: dict, aux: int, generator=None, mask_table=None):
    """The evaluator's auxiliary targets for one batch, [batch, aux], or None for single-task.

    The generator runs in inference mode here: the evaluator step trains against its current
    labels and must not move its batch-norm statistics; only the meta step trains it.
    """
    if method == "single":
        return None
    if method == "maxl":
        return tf.stop_gradient(
            generated_labels(generator, batch["images"], batch["labels"], mask_table, training=False))
    return tf.one_hot(batch["aux_labels"], aux)


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
    return {"labels/aux_used_per_pri": used, "labels/aux_used_mean": float(np.mean(used)),
            "labels/aux_entropy_per_pri": entropy, "labels/aux_entropy_mean": float(np.mean(entropy))}
