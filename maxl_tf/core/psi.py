"""psi from Python: how many auxiliary classes each principal class owns (numpy only).

The command line resolves psi from its flags (core/hierarchy.resolve_psi); these apply the same
rules (hierarchy.broken_psi_rule, hierarchy.uniform_psi) for a caller of the Python API, with
errors that name the argument.
"""

import numpy as np

from maxl_tf.core import hierarchy


def check(psi, pri: int | None = None) -> tuple:
    """psi as a tuple of positive ints (pri of them, when pri is given).

    Raises:
      ValueError naming psi.
    """
    try:
        psi = tuple(int(p) for p in psi)
    except (TypeError, ValueError):
        raise ValueError(
            f"psi={psi!r}: must be a sequence of auxiliary classes per principal class, e.g. (5, 5)"
        ) from None
    broken = hierarchy.broken_psi_rule(psi, pri)
    if broken == "positive":
        raise ValueError(f"psi={psi}: needs at least one auxiliary class per principal class")
    if broken == "one per principal class":
        raise ValueError(f"psi={psi}: has {len(psi)} entries but pri={pri}; psi needs one per principal class")
    return psi


def uniform(pri: int, aux: int) -> tuple:
    """aux // pri auxiliary classes per principal class (the paper's default hierarchy).

    Raises:
      ValueError naming aux: aux is not a positive multiple of pri.
    """
    psi = hierarchy.uniform_psi(pri, aux)
    if psi is None:
        raise ValueError(f"aux={aux}: must be a positive multiple of pri={pri} for a uniform psi")
    return psi


def mask(psi) -> np.ndarray:
    """[pri, sum(psi)] float32: row i is 1 on the auxiliary classes principal class i owns."""
    return hierarchy.psi_mask(check(psi))


def owners(psi) -> np.ndarray:
    """The principal class that owns each auxiliary class. [sum(psi)]"""
    return hierarchy.owners(check(psi))
