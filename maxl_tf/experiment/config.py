"""The run's configuration: one dataclass whose defaults are the paper's values, and its checks.

main.py turns every field into an absl flag of the same name (help text and choices come from
the field's metadata), so this file is the single list of what a run can change and of the
choices each flag takes. It imports nothing heavy (no TensorFlow): commands that only read runs,
such as `python -m maxl_tf.report`, start in a fraction of a second. Library code takes a
Config, never flags.
"""

import dataclasses
import functools
import json
import os

from maxl_tf import errors
from maxl_tf.core import hierarchy
from maxl_tf.core import methods
from maxl_tf.data import registry
from maxl_tf.data import source as source_lib
from maxl_tf.models.names import ARCHITECTURES
from maxl_tf.models.names import IMAGENET
from maxl_tf.models.names import UNTRAINED
from maxl_tf.models.names import is_backbone_spec

# AuxiLearn's number of Neumann terms. Each is a Hessian-vector product (75 convolutions of VGG-16:
# three make the implicit meta step 364 against the second-order one's 139, meta.py), and with
# the evaluator's learning rate as the series' step, the terms grow along the Hessian's negative
# eigenvalues: few terms are cheaper and safer.
DEFAULT_NEUMANN_TERMS = 3
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("none", "mirrored", "multi_worker")
EMBEDDER_FALLBACKS = ("none", UNTRAINED)
# PIL reads the images' headers (data/images.py) and refuses an image of more pixels than twice its
# Image.MAX_IMAGE_PIXELS (a DecompressionBombError); --max_image_pixels stays within it.
PIL_MAX_PIXELS = 2 * 89_478_485
LAST_EPOCHS_AVERAGED = 5  # the paper's metric: mean test accuracy of the last 5 epochs


def _field(default, help_text, choices=None):
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Config:
    # What to learn.
    dataset: str = _field(
        "cifar100",
        "Data set: cifar100, cifar10, cifar10_1, digits, fashion_mnist, mnist; "
        "folder (your images: --data_dir holds one subfolder per class); "
        "tfds:NAME (any tensorflow-datasets image-classification set); or "
        "module:Source (your own maxl_tf.data.Source subclass, the module importable).",
    )
    data_dir: str = _field(
        "",
        "--dataset=folder: the folder of class folders. Otherwise local CIFAR "
        "archives, the four MNIST / Fashion-MNIST IDX files, or a tensorflow-datasets "
        "data directory (empty: tfds' default; for fashion_mnist first Debian's "
        "dataset-fashion-mnist folder).",
    )
    download: bool = _field(True, "Let tensorflow-datasets download a data set that is not prepared.")
    hierarchy: str = _field(
        "",
        "Your data's class hierarchy: a .json {principal class: [class, ...]} or a "
        ".csv of class,principal class rows (folder and tfds:NAME only; empty: the "
        "data's classes are the principal task).",
    )
    image_size: int = _field(
        0,
        "folder and tfds:NAME: resize images to this many pixels square (0: images "
        "of one square size up to 32 stay as they are, others become 32x32).",
    )
    test_fraction: float = _field(
        0.2,
        "folder and tfds:NAME without a test split: the share of each class "
        "held out as the test set (the same images for every seed).",
    )
    pri: int = _field(
        20,
        "Principal classes: a label level of the data set (cifar100: 3, 10, 20, 100; "
        "cifar10: 10; digits: 2, 10; fashion_mnist: 2, 6, 10; mnist: 10; folder and "
        "tfds:NAME: the number of classes, or of principal classes in --hierarchy).",
    )
    aux: int = _field(100, "Auxiliary classes, sum(psi).")
    psi: tuple = _field(
        (),
        "Auxiliary classes per principal class, e.g. 5,1,4 (empty: the human "
        "hierarchy's when --aux is a human level, else uniform aux/pri).",
    )
    method: str = _field(
        "maxl",
        "Where auxiliary labels come from: "
        + "; ".join(f"{m.name}, {m.description}" for m in methods.REGISTRY.values())
        + ".",
    )
    embedder: str = _field(
        IMAGENET,
        "Image embedder of --method=prototypical and kmeans: imagenet (keras.applications VGG16 "
        "with ImageNet weights), untrained (the same network with random weights), or "
        "a saved Keras model file (.keras) whose output is the embedding.",
    )
    embedder_fallback: str = _field(
        "none",
        "What --embedder=imagenet does when its weights cannot be "
        "loaded (offline): none stops with an error; untrained uses "
        "random weights and says so in the log and results.json.",
        EMBEDDER_FALLBACKS,
    )
    # Networks and data.
    model: str = _field(
        "vgg16",
        f"Trunk of both networks: {', '.join(ARCHITECTURES)}, or module:function, a function of the input "
        "shape (H, W, C) returning a Keras backbone (e.g. my_nets:resnet_small with my_nets.py on PYTHONPATH, "
        "or keras.applications:MobileNetV3Small). Every network takes raw pixels, float32 0..255: a backbone "
        "scales its own input (keras.layers.Rescaling(1/255), or maxl_tf.pixels.Normalise()).",
    )
    pretrained: bool = _field(
        True, "--model=keras.applications:NAME: start from its ImageNet weights (else random weights)."
    )
    width: float = _field(1.0, "Channel width multiplier of both networks.")
    meta_split: float = _field(
        0.1, "Fraction of the training set held out as MAXL's meta data; 0 reuses the training set (the authors' code)."
    )
    augment: bool = _field(
        True,
        "Random crop and horizontal flip as the data set allows (its source's augmentation): "
        "CIFAR pad 4 + flip; Fashion-MNIST pad 2 + flip; MNIST pad 2, digits pad 1, "
        "no flip.",
    )
    max_train_examples: int = _field(0, "Use only this many training examples (0: all).")
    max_test_examples: int = _field(0, "Use only this many test examples (0: all).")
    # Optimisation.
    batch_size: int = _field(100, "Examples per step, for both networks.")
    epochs: int = _field(200, "Training epochs.")
    lr: float = _field(0.01, "Evaluator SGD learning rate; also the lookahead's step size.")
    generator_lr: float = _field(1e-5, "Generator SGD learning rate (authors' code: 1e-3).")
    generator_weight_decay: float = _field(5e-4, "Generator weight decay (0 disables).")
    generator_weight_decay_type: str = _field("l1", "l1 as in the paper, l2 as in the authors' code.", ("l1", "l2"))
    lr_decay_every: int = _field(50, "Multiply both learning rates by --lr_decay_factor every this many epochs.")
    lr_decay_factor: float = _field(0.5, "Learning-rate decay factor.")
    loss: str = _field("focal", "focal (gamma=--focal_gamma) or ce (cross-entropy).", ("focal", "ce"))
    focal_gamma: float = _field(2.0, "Focal-loss focusing parameter.")
    entropy_weight: float = _field(0.2, "Weight of the entropy regulariser in the meta objective (0 disables).")
    generator_labels_bn: str = _field(
        "inference",
        "Batch norm of the generator when it labels the evaluator's training batches: inference "
        "(moving statistics; this code's default so far) or training (batch statistics, as the "
        "meta step's outputs and the authors' code; the labelling pass then also updates the "
        "moving statistics, as PyTorch's train mode does).",
        ("inference", "training"),
    )
    schedule: str = _field(
        "interleaved",
        "interleaved: a generator step after every evaluator step "
        "(Algorithm 1); alternating: an epoch of each (authors' code).",
        ("interleaved", "alternating"),
    )
    hypergradient: str = _field(
        methods.EXACT_HYPERGRADIENT,
        "The generator's meta-gradient: second_order, exact through the one-step "
        "lookahead (paper); first_order, its Hessian-vector product by finite "
        "differences (DARTS); implicit, at the evaluator's current weights with a "
        "Neumann series for the inverse Hessian (AuxiLearn). BUILD.md compares them.",
        methods.HYPERGRADIENTS,
    )
    neumann_terms: int = _field(
        DEFAULT_NEUMANN_TERMS,
        "Hessian-vector products of --hypergradient=implicit's Neumann series "
        "(0: the inverse Hessian is the learning rate).",
    )
    meta_every: int = _field(
        1,
        "A generator step after every this many evaluator steps, counted over the "
        "run (1: every step, Algorithm 1); --schedule=interleaved only.",
    )
    seed: int = _field(0, "Seed of weights, meta split, shuffling, augmentation and random labels.")
    precision: str = _field(
        "float32",
        "Compute precision; mixed_* keep float32 weights, losses, softmax "
        "and pooling (mixed_float16 adds loss scaling).",
        PRECISIONS,
    )
    # How the data is read: not part of the experiment's identity (the same images either way).
    cache_dir: str = _field(
        source_lib.default_cache_dir(),
        "folder and tfds:NAME: where decoded images are cached as .npy files, so later runs do not "
        "decode (empty: no cache; streaming needs one).",
    )
    cache_limit_mb: int = _field(
        source_lib.DEFAULT_CACHE_LIMIT_MB, "Size limit of --cache_dir; the least recently used files go first."
    )
    max_image_pixels: int = _field(
        source_lib.DEFAULTS.max_pixels,
        "Refuse an image of more pixels than this before decoding it (a small PNG can hold gigabytes of pixels).",
    )
    stream: str = _field(
        "auto",
        "folder and tfds:NAME: auto streams the decoded images from the cache on disk when they exceed "
        "--memory_budget_mb, else holds them in memory; on and off force either. Results are the same.",
        ("auto", "on", "off"),
    )
    memory_budget_mb: int = _field(2048, "--stream=auto: decoded images up to this size are held in memory.")
    # Where and how fast it runs: not part of the experiment's identity.
    strategy: str = _field(
        "none",
        "none: one device; mirrored: every local GPU (BUILD.md); multi_worker: the machines listed in TF_CONFIG.",
        STRATEGIES,
    )
    jit: bool = _field(False, "Compile the training steps with XLA (faster on GPUs; slower on CPUs).")
    # Bookkeeping: not part of the experiment's identity either.
    logdir: str = _field("", "Log directory (empty: runs/<name derived from the experiment>).")
    keep_checkpoints: int = _field(
        2,
        "Checkpoints kept in <logdir>/checkpoints, the newest ones (one per epoch and on a stop); "
        "the second is a spare should the newest be damaged.",
    )
    export: bool = _field(
        True,
        "Write the final networks (evaluator.keras, generator.keras, serving/, classes.json) when the run "
        "completes; --noexport for a sweep that only needs the numbers (rerun with --export to write "
        "them from the final checkpoint).",
    )
    deterministic: bool = _field(True, "Deterministic ops, so a resumed run equals an uninterrupted one.")
    log_every: int = _field(10, "Steps between progress-bar updates and non-finite checks.")
    eval_every: int = _field(
        1,
        "Evaluate on the test set after every this many epochs, and after each of the last "
        f"{LAST_EPOCHS_AVERAGED} (the reported metric averages those): a cheaper run with the same "
        "results, its learning curve sampled.",
    )

    def evaluates(self, epoch: int) -> bool:
        """Whether the test set is evaluated after this (0-based) epoch: --eval_every's."""
        return (epoch + 1) % self.eval_every == 0 or epoch >= self.epochs - LAST_EPOCHS_AVERAGED

    @property
    def gamma(self) -> float:
        return self.focal_gamma if self.loss == "focal" else 0.0

    def experiment(self) -> dict:
        """The fields that decide the results; a log directory holds one experiment."""
        bookkeeping = {"logdir", "keep_checkpoints", "export", "data_dir", "download", "deterministic", "log_every"}
        bookkeeping |= {"eval_every"}  # which epochs are evaluated; training and the metric are the same
        bookkeeping |= {"strategy", "jit"}
        bookkeeping |= {"cache_dir", "cache_limit_mb", "max_image_pixels", "stream", "memory_budget_mb"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in bookkeeping}

    @classmethod
    def from_saved(cls, saved: dict) -> "Config":
        """The Config of a saved config.json or results.json "config", ignoring fields this
        version does not know (runs written by other versions still load; their psi was a string)."""
        known = {field.name for field in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        if "psi" in values:
            psi = values["psi"]
            values["psi"] = parse_psi(psi) if isinstance(psi, str) else tuple(psi)
        return cls(**values)

    def differences(self, saved: dict) -> list:
        """(field, saved value, this value) for each experiment field a saved config.json differs in."""
        there = Config.from_saved(saved).experiment()
        return [(k, saved.get(k), v) for k, v in self.experiment().items() if there.get(k) != v]

    def to_flagfile(self) -> str:
        """absl flagfile text that replays this run: --flagfile=<logdir>/flags.cfg."""
        lines = ["# Resolved flags of this run; replay with --flagfile=<this file>."]
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, bool):
                lines.append(f"--{key}" if value else f"--no{key}")
            elif isinstance(value, tuple):
                lines.append(f"--{key}={','.join(map(str, value))}")
            else:
                lines.append(f"--{key}={value}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


def parse_psi(text: str) -> tuple:
    """'5,1,4' -> (5, 1, 4); '' -> () (psi follows from --pri and --aux)."""
    try:
        return tuple(int(n) for n in text.split(",")) if text.strip() else ()
    except ValueError:
        raise errors.Error(f"--psi={text}: must be comma-separated integers, e.g. --psi=5,1,4.") from None


def data_options(config: Config) -> source_lib.Options:
    """What the run's data source is told (the data flags)."""
    return source_lib.Options(
        data_dir=config.data_dir,
        download=config.download,
        hierarchy=config.hierarchy,
        image_size=config.image_size,
        test_fraction=config.test_fraction,
        cache_dir=config.cache_dir,
        cache_limit_mb=config.cache_limit_mb,
        max_pixels=config.max_image_pixels,
        stream=config.stream,
        memory_budget_mb=config.memory_budget_mb,
    )


def source(config: Config) -> source_lib.Source:
    """The run's data source (registry.get keeps it, so its folder is listed once per process)."""
    return registry.get(config.dataset, data_options(config))


def run_name(config: Config, dataset_name: str, default_psi: tuple | None) -> str:
    """A run's default log-directory name: the settings one sweeps over (psi only where it is not
    default_psi, the one --pri and --aux give by themselves). A pure function: resolve() asks the
    data for dataset_name and default_psi once."""
    name = f"{dataset_name}_pri{config.pri}_aux{config.aux}_{config.method}"
    if config.psi and config.psi != default_psi:
        name += "_psi" + "-".join(map(str, config.psi))
    if methods.get(config.method).learned:
        if config.entropy_weight != 0.2:
            name += f"_entropy{config.entropy_weight:g}"
        if config.generator_labels_bn != "inference":
            name += f"_labelsbn{config.generator_labels_bn}"
        if config.hypergradient != methods.EXACT_HYPERGRADIENT:
            name += "_" + config.hypergradient
        if config.neumann_terms != DEFAULT_NEUMANN_TERMS:
            name += f"{config.neumann_terms}"
        if config.meta_every != 1:
            name += f"_every{config.meta_every}"
    return name + f"_seed{config.seed}"


# TensorFlow refuses to compile MaxPoolGrad under op determinism, so the combination would fail
# at the first step with an XLA traceback.
JIT_NEEDS_NODETERMINISTIC = (
    "--jit: XLA has no deterministic max-pool gradient, so it cannot run with --deterministic (the "
    "default); add --nodeterministic (a resumed run then no longer repeats an uninterrupted one "
    "exactly) or drop --jit."
)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise errors.Error(message)


def check_method(name: str) -> None:
    """A --method name (one of a sweep's comma list) the registry knows."""
    check(name in methods.REGISTRY, f"--method={name}: unknown; use one of {', '.join(methods.REGISTRY)}.")


def check_flags(config: Config) -> None:
    """Checks every flag that needs no data set: choices, signs, ranges, combinations.

    Raises:
      errors.Error: naming the first bad flag and how to fix it.
    """
    _check_names(config)
    _check_numbers(config)
    _check_combinations(config)


def _check_names(config: Config) -> None:
    """The flags that name something: a choice, a method, a model, a data set."""
    for field in dataclasses.fields(Config):
        choices, value = field.metadata["choices"], getattr(config, field.name)
        if choices:
            check(value in choices, f"--{field.name}={value}: unknown; use one of {', '.join(choices)}.")
    check_method(config.method)
    check(
        config.model in ARCHITECTURES or is_backbone_spec(config.model),
        f"--model={config.model}: unknown; use {' or '.join(ARCHITECTURES)}, or module:function (a function of "
        "the input shape returning a Keras backbone).",
    )
    check(
        config.model in ARCHITECTURES or config.precision == "float32",
        f"--precision={config.precision}: only the built-in models ({', '.join(ARCHITECTURES)}) run in half "
        f"precision; --model={config.model} needs --precision=float32.",
    )
    registry.check_name(config.dataset)
    check(
        config.dataset != registry.FOLDER or config.data_dir,
        "--dataset=folder needs --data_dir=<the folder that holds one subfolder of images per class>.",
    )
    check(
        not config.hierarchy or registry.is_user_data(config.dataset),
        f"--hierarchy={config.hierarchy}: only for --dataset=folder or tfds:NAME; {config.dataset} has its "
        "own levels (see --pri).",
    )


def _check_numbers(config: Config) -> None:
    """Signs and ranges."""
    check(config.image_size >= 0, f"--image_size={config.image_size}: must not be negative (0: the default).")
    check(0 < config.test_fraction < 1, f"--test_fraction={config.test_fraction}: must be between 0 and 1 (exclusive).")
    for name in (
        "batch_size",
        "epochs",
        "eval_every",
        "lr_decay_every",
        "log_every",
        "meta_every",
        "keep_checkpoints",
        "max_image_pixels",
    ):
        value = getattr(config, name)
        check(value > 0, f"--{name}={value}: must be a positive integer.")
    for name in ("lr", "generator_lr", "width", "lr_decay_factor"):
        value = getattr(config, name)
        check(value > 0, f"--{name}={value}: must be positive.")
    for name in (
        "generator_weight_decay",
        "entropy_weight",
        "focal_gamma",
        "max_train_examples",
        "max_test_examples",
        "neumann_terms",
        "cache_limit_mb",
        "memory_budget_mb",
    ):
        value = getattr(config, name)
        check(value >= 0, f"--{name}={value}: must not be negative.")
    check(
        0 <= config.seed < 2**32,
        f"--seed={config.seed}: must be between 0 and {2**32 - 1} (NumPy's seeds are 32-bit).",
    )
    check(
        config.max_image_pixels <= PIL_MAX_PIXELS,
        f"--max_image_pixels={config.max_image_pixels}: above {PIL_MAX_PIXELS:,}, where PIL, which reads the "
        f"images' headers, refuses an image itself; pass at most --max_image_pixels={PIL_MAX_PIXELS}.",
    )
    check(
        0 <= config.meta_split < 1,
        f"--meta_split={config.meta_split}: must be in [0, 1) (0 reuses the training set as meta data).",
    )


def _check_combinations(config: Config) -> None:
    """Flags that do not go together, and an embedder file that is not there."""
    check(not (config.jit and config.deterministic), JIT_NEEDS_NODETERMINISTIC)
    check(
        config.hypergradient == methods.IMPLICIT_HYPERGRADIENT or config.neumann_terms == DEFAULT_NEUMANN_TERMS,
        f"--neumann_terms={config.neumann_terms}: only --hypergradient=implicit uses it (this run's is "
        f"{config.hypergradient}); add --hypergradient=implicit or drop --neumann_terms.",
    )
    if config.schedule == "alternating":
        check(
            config.meta_every == 1,
            f"--meta_every={config.meta_every}: --schedule=alternating already gives the generator an epoch "
            f"of its own after each evaluator epoch; use --schedule=interleaved or drop --meta_every.",
        )
        check(
            config.hypergradient != methods.IMPLICIT_HYPERGRADIENT,
            "--hypergradient=implicit: its Hessian is of the training batch the evaluator just stepped on, "
            "and --schedule=alternating's generator epoch has none; use --schedule=interleaved.",
        )
    if methods.get(config.method).embeds and config.embedder not in (IMAGENET, UNTRAINED):
        check(
            config.embedder.endswith(".keras") and os.path.isfile(config.embedder),
            f"--embedder={config.embedder}: no such saved Keras model (.keras file); pass an existing "
            f".keras file, imagenet or untrained.",
        )


@dataclasses.dataclass(frozen=True, eq=False)  # one object per run: its Source and levels compare by identity
class Run:
    """One run, resolved once by resolve(): what sweep, inputs and train take.

    Attributes:
      config: the Config with its psi resolved and its log directory filled in.
      source: the data's Source; levels: its label levels, asked once.
      name: the default log-directory name (run_name), also the run's name in logs and results.
      identity: what the run records of its data (Source.identity), asked at its first use, once:
        a Ray driver that cannot see the data needs none.
    """

    config: Config
    source: source_lib.Source
    levels: hierarchy.Hierarchy
    name: str

    @functools.cached_property
    def identity(self) -> dict:
        return self.source.identity()


def resolve(config: Config, parent: str | None = None) -> Run:
    """Checks every flag that can be checked without loading data, once, and resolves the run.

    The run's psi is the human hierarchy's, uniform, or --psi as given; its log directory is
    <parent>/<name> for a run of a sweep, else --logdir, else runs/<name>.

    Raises:
      errors.Error: naming the first bad flag and how to fix it.
    """
    check_flags(config)
    data = source(config)
    levels = data.levels()
    if registry.is_user_data(config.dataset) and config.pri not in levels.levels and not config.hierarchy:
        names = levels.names_at(levels.finest)
        raise errors.Error(
            f"--pri={config.pri}: {levels.name} has {levels.finest} classes ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}); pass --pri={levels.finest}, or --hierarchy=<a .json or .csv "
            f"file> that puts them under {config.pri} principal classes."
        )
    psi = hierarchy.resolve_psi(levels, config.pri, config.aux, config.psi or None)
    if methods.get(config.method).human_psi:
        human = hierarchy.require_human_psi(levels, config.pri, config.aux, config.method)
        if human != psi:
            raise errors.Error(
                f"--psi={','.join(map(str, config.psi))}: --method={config.method} uses the "
                f"human hierarchy's psi {','.join(map(str, human))}; drop --psi."
            )
    try:
        default_psi = hierarchy.resolve_psi(levels, config.pri, config.aux)
    except errors.Error:  # no psi follows from --pri and --aux alone: --psi names itself
        default_psi = None
    name = run_name(dataclasses.replace(config, psi=psi), data.name, default_psi)
    logdir = os.path.join(parent, name) if parent is not None else config.logdir or os.path.join("runs", name)
    return Run(dataclasses.replace(config, psi=psi, logdir=logdir), data, levels, name)
