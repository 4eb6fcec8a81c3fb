"""The labels' health: how evenly auxiliary labels use their classes, and when they collapse
(paper Section 3.4). numpy only: the CLI loop, the Keras callback and the report read it.
"""

import numpy as np

from maxl_tf.core import hierarchy as hierarchy_lib


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
        entropy.append(float(-(p * np.log(p)).sum() / np.log(len(block))) + 0.0)  # + 0.0: one class gives 0, not -0
    return {
        "labels/aux_used_per_pri": used,
        "labels/aux_used_mean": float(np.mean(used)),
        "labels/aux_entropy_per_pri": entropy,
        "labels/aux_entropy_mean": float(np.mean(entropy)),
    }


# A principal class whose labels fall on fewer than this share of its auxiliary classes has
# collapsing labels (Section 3.4): half, so a block of 3 collapses on 1 class, a block of 5 on 2.
COLLAPSE_SHARE = 0.5


def collapsed_classes(used_per_pri, psi) -> list:
    """The principal classes whose labels use fewer than COLLAPSE_SHARE of their psi[i]
    auxiliary classes (blocks of one class never collapse)."""
    return [i for i, (used, size) in enumerate(zip(used_per_pri, psi)) if size > 1 and used < COLLAPSE_SHARE * size]


def collapse_warning(summary: dict, psi) -> str:
    """One warning line for a usage_summary whose labels collapse, or "" when none do."""
    used = summary["labels/aux_used_per_pri"]
    collapsed = collapsed_classes(used, psi)
    if not collapsed:
        return ""
    shown = ", ".join(f"{i} ({used[i]} of {psi[i]})" for i in collapsed[:8]) + (", ..." if len(collapsed) > 8 else "")
    return (
        f"warning: auxiliary labels collapsing: {len(collapsed)} of {len(psi)} principal classes label fewer "
        f"than half their auxiliary classes: {shown}; the entropy weight (--entropy_weight) counters it"
    )
