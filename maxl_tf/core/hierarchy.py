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


def compose(*tables) -> np.ndarray:
    """Chains finest -> level tables: compose(fine_to_20, coarse_20_to_10) maps finest -> 10."""
    out = np.asarray(tables[0])
    for table in tables[1:]:
        out = np.asarray(table)[out]
    return out


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
        if broken_psi_rule(psi, pri, aux):
            raise errors.Error(
                f"--psi={','.join(map(str, psi))}: needs {pri} positive entries (one per principal class) "
                f"summing to --aux={aux}; it has {len(psi)} entries summing to {sum(psi)}."
            )
        return tuple(psi)
    from_human = human_psi(hierarchy, pri, aux)
    if from_human is not None:
        return from_human
    uniform = uniform_psi(pri, aux)
    if uniform is not None:
        return uniform
    raise errors.Error(_no_psi_message(hierarchy, pri, aux))


def broken_psi_rule(psi: tuple, pri: int | None = None, aux: int | None = None) -> str | None:
    """The first rule psi breaks, or None: the rules of psi in one place, for the command line
    (resolve_psi, naming flags) and the Python API (core/psi.py, naming arguments).

    Returns:
      "positive": an entry is below 1 (or there is none); "one per principal class": it has not
      pri entries; "sum": it does not sum to aux. pri or aux None: not checked.
    """
    if not psi or min(psi) < 1:
        return "positive"
    if pri is not None and len(psi) != pri:
        return "one per principal class"
    if aux is not None and sum(psi) != aux:
        return "sum"
    return None


def uniform_psi(pri: int, aux: int) -> tuple | None:
    """aux // pri auxiliary classes per principal class (the paper's default), or None where aux
    is not a positive multiple of pri."""
    if pri < 1 or aux < pri or aux % pri:
        return None
    return (aux // pri,) * pri


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
