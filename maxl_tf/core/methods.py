"""The methods a run can use (--method) and the hypergradients of MAXL's meta step (--hypergradient):
one registry each, importable without TensorFlow, which every module reads instead of comparing
names.

A method is a descriptor of what it needs and what it ignores; where its auxiliary labels come
from is its label source (core/labels.py, one class per method, keyed by the same name). A new
baseline is one LabelSource class and one register() call: BUILD.md, "Adding a method", shows it
with the k-means baseline. The hypergradients' functions live in core/meta.py, keyed by the names
here (meta.HYPERGRADIENTS).
"""

import dataclasses

# Fields of the generator and its meta step: they change only the runs of a method with learned
# labels, so sweeps, resume checks and reports ignore them for every other method.
GENERATOR_FIELDS = (
    "entropy_weight",
    "generator_lr",
    "generator_weight_decay",
    "generator_weight_decay_type",
    "schedule",
    "generator_labels_bn",
    "hypergradient",
    "neumann_terms",
    "meta_every",
)
EMBEDDER_FIELDS = ("embedder", "embedder_fallback")


@dataclasses.dataclass(frozen=True)
class Method:
    """What a method is, for everything but its labels (core/labels.py makes those).

    Attributes:
      name: the --method string.
      description: one line, for --help.
      auxiliary: whether the evaluator has an auxiliary task (False: single-task).
      learned: whether a generator learns the labels through the meta objective (MAXL).
      human_psi: whether its auxiliary classes are the human hierarchy's, so psi is the hierarchy's.
      meta_split: whether it holds out meta data and trains the evaluator on the rest (Section 4.1).
      embeds: whether its labels come from an image embedder (--embedder).
      baselines: the methods a report compares it with, in this order.
    """

    name: str
    description: str
    auxiliary: bool = True
    learned: bool = False
    human_psi: bool = False
    meta_split: bool = False
    embeds: bool = False
    baselines: tuple = ("single",)

    @property
    def ignored_fields(self) -> frozenset:
        """Config fields that cannot change this method's results: they only name its runs."""
        ignored = set()
        if not self.learned:
            ignored.update(GENERATOR_FIELDS)
        if not self.auxiliary:
            ignored.update(("aux", "psi"))
        if not self.meta_split:
            ignored.add("meta_split")
        if not self.embeds:
            ignored.update(EMBEDDER_FIELDS)
        return frozenset(ignored)

    @property
    def label_origin(self) -> str:
        """Where a trained run's auxiliary predictions come from, for predict and visualise."""
        if not self.auxiliary:
            return ""
        return "generator" if self.learned else "evaluator's auxiliary head"


REGISTRY: dict = {}


def register(method: Method) -> Method:
    """Adds a method (its name must be new); its label source registers under the same name."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered already")
    REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    """The method --method names.

    Raises:
      ValueError naming the method and the registered ones.
    """
    if name not in REGISTRY:
        raise ValueError(f"method={name!r}: one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> tuple:
    return tuple(REGISTRY)


MAXL = register(
    Method(
        "maxl",
        "the generator's labels, learned through the meta objective (the paper's method)",
        learned=True,
        meta_split=True,
        baselines=("single", "human", "random", "kmeans"),
    )
)
SINGLE = register(Method("single", "no auxiliary task", auxiliary=False, baselines=()))
register(Method("human", "the human hierarchy's sub-class", human_psi=True))
register(Method("random", "a sub-class within psi drawn once per image and kept"))
register(
    Method(
        "prototypical",
        "the nearest prototype of a human sub-class, embedded from the meta split (Prototypical Net)",
        human_psi=True,
        meta_split=True,
        embeds=True,
    )
)
register(
    Method(
        "kmeans",
        "k-means clusters within each principal class, psi[i] of them, on --embedder's embedding",
        embeds=True,
    )
)

# How the generator's meta step differentiates through the evaluator (core/meta.py): the paper's
# exact one-step lookahead, its finite-difference approximation (DARTS), or the implicit
# hypergradient at the evaluator's current weights (AuxiLearn).
HYPERGRADIENTS = ("second_order", "first_order", "implicit")
EXACT_HYPERGRADIENT = "second_order"
# The one whose Hessian is of the training batch the evaluator just stepped on, and which takes
# --neumann_terms.
IMPLICIT_HYPERGRADIENT = "implicit"
