"""Pictures of what finished runs learned (paper Section 4.4), from their log directories.

    python -m maxl_tf.visualise runs/<maxl run> runs/<human run> runs/<single run> --out=DIR

writes into DIR:
  tsne.png                  t-SNE of the evaluator's trunk features on test images, coloured by
                            principal class, one panel per run (Fig. 5)
  projector_config.pbtxt,   the same features for TensorBoard's embedding projector
  embeddings-*, <run>/,     (tensorboard --logdir DIR, or --logdir of any folder above DIR), with
  events.out.*              metadata.tsv and sprite.png per run
  top<k>_<run>.png          per randomly chosen auxiliary class, the k test images of its principal
                            class that the auxiliary labeller ranks highest, a row per principal
                            class (Fig. 6; --aux_classes=30 shows every class of a 10 x 3 run)

For MAXL the auxiliary labeller is the generator (its masked softmax, the labels the evaluator
was trained on); for human and random runs, whose labels are fixed per training image, it is the
evaluator's auxiliary head under the same mask; single-task runs have none.
"""

import dataclasses
import os
import re

from maxl_tf import cli
from maxl_tf import runtime

with runtime.quiet_start_up():  # this command's first import of TensorFlow
    import tensorflow as tf

from absl import flags
import keras
import matplotlib
from matplotlib.figure import Figure
import matplotlib.image
import numpy as np
import sklearn.manifold
from tensorboard.plugins import projector

from maxl_tf import errors
from maxl_tf.core import evaluator as evaluator_lib
from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import losses
from maxl_tf.core import methods
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import inputs
from maxl_tf.experiment import rundir
from maxl_tf.experiment import state as state_lib

MIN_EXAMPLES = 10  # t-SNE needs a perplexity below the number of points


@dataclasses.dataclass
class RunOutputs:
    """One restored run's outputs on its whole test set, in test-set order (N examples)."""

    key: str  # the run's name, usable as a file name and checkpoint key
    title: str
    images: np.ndarray  # [N, H, W, C] float in [0, 1], for display
    labels: np.ndarray  # [N] principal labels
    predicted: np.ndarray  # [N] the evaluator's principal prediction
    features: np.ndarray  # [N, D] the trunk's flattened output, the input of both heads
    aux_probabilities: np.ndarray | None  # [N, aux], zero outside each image's principal block
    aux_source: str  # what gave aux_probabilities ("" for single-task runs)
    pri_of_aux: np.ndarray  # [aux] the principal class owning each auxiliary class
    class_names: tuple  # [pri] the principal classes' names
    aux_names: tuple | None  # [aux] the auxiliary classes' names (classes.json's), None where learned


def feature_model(evaluator: keras.Model) -> keras.Model:
    """images -> [trunk features, principal logits, (auxiliary logits)] in one pass."""
    # The shared features: what the principal head's first layer takes, whatever the backbone.
    features = next(layer for layer in evaluator.layers if layer.name.startswith("principal")).input
    return keras.Model(evaluator.inputs, [features, *evaluator.outputs])


def run_on_test_set(
    config: config_lib.Config, state: state_lib.TrainState, run_data: inputs.RunData, key: str
) -> RunOutputs:
    """Runs the restored networks (inference mode) over the test set."""
    network = feature_model(state.evaluator)
    mask_table = tf.constant(hierarchy_lib.psi_mask(config.psi))
    parts = {"images": [], "labels": [], "predicted": [], "features": [], "aux": []}
    for batch in run_data.test.evaluation_batches(config.batch_size):
        features, *logits = network(batch["images"], training=False)
        pri_logits, aux_logits = evaluator_lib.outputs(logits)
        if methods.get(config.method).learned:
            parts["aux"].append(
                labels_lib.generated_labels(
                    state.generator, batch["images"], batch["labels"], mask_table, training=False
                ).numpy()
            )
        elif aux_logits is not None:
            parts["aux"].append(losses.masked_softmax(aux_logits, tf.gather(mask_table, batch["labels"])).numpy())
        parts["images"].append(batch["images"].numpy() / 255.0)  # raw pixels, shown in [0, 1]
        parts["labels"].append(batch["labels"].numpy())
        parts["predicted"].append(tf.argmax(pri_logits, axis=-1).numpy())
        parts["features"].append(features.numpy())
    history = state.history
    accuracy = f", final test acc {history[-1]['test/acc']:.3f}" if history else ""
    return RunOutputs(
        key=key,
        title=f"{config.method} ({config.dataset}, pri {config.pri}, aux {config.aux}{accuracy})",
        images=np.clip(np.concatenate(parts["images"]), 0.0, 1.0),
        labels=np.concatenate(parts["labels"]),
        predicted=np.concatenate(parts["predicted"]),
        features=np.concatenate(parts["features"]),
        aux_probabilities=np.concatenate(parts["aux"]) if parts["aux"] else None,
        aux_source=methods.get(config.method).label_origin,
        pri_of_aux=hierarchy_lib.owners(config.psi),
        class_names=run_data.class_names["principal"] or tuple(str(label) for label in range(config.pri)),
        aux_names=run_data.class_names["auxiliary"],
    )


def subsample(num_examples: int, max_examples: int) -> np.ndarray:
    """Sorted indices of at most max_examples examples, the same for every run on the same test
    set, so side-by-side panels show the same images."""
    if num_examples <= max_examples:
        return np.arange(num_examples)
    return np.sort(np.random.default_rng(0).permutation(num_examples)[:max_examples])


def tsne_embedding(features: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of [n, D] features -> [n, 2]."""
    perplexity = min(30.0, (len(features) - 1) / 3)
    return sklearn.manifold.TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        features.astype(np.float64)
    )


def _class_colours(num_classes: int):
    name = "tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"
    cmap = matplotlib.colormaps[name]
    return [cmap(i if num_classes <= 20 else i / max(num_classes - 1, 1)) for i in range(num_classes)]


def plot_tsne(panels, class_names, path: str) -> None:
    """One scatter panel per (title, points [n, 2], labels [n]), coloured by principal class, with
    a legend of the classes' names where there are at most 20."""
    num_classes = len(class_names)
    colours = np.asarray(_class_colours(num_classes))
    fig = Figure(figsize=(4.0 * len(panels), 4.4), layout="constrained")
    for i, (title, points, labels) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.scatter(points[:, 0], points[:, 1], c=colours[labels], s=6, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if num_classes <= 20:
        handles = [ax.scatter([], [], color=colours[c], s=12, label=name) for c, name in enumerate(class_names)]
        fig.legend(handles=handles, title="principal class", loc="outside right center", fontsize=8)
    fig.savefig(path, dpi=100)


def _key(name: str, taken: set) -> str:
    """The run's name as a file name and checkpoint key, unique among the runs shown."""
    base = key = re.sub(r"\W", "_", name)
    suffix = 2
    while key in taken:
        key, suffix = f"{base}_{suffix}", suffix + 1
    taken.add(key)
    return key


def _sprite(images: np.ndarray) -> np.ndarray:
    """Images [n, H, W, C] in [0, 1] tiled row-major into a square RGB grid, white padding."""
    n, height, width = images.shape[:3]
    side = int(np.ceil(np.sqrt(n)))
    rgb = np.broadcast_to(images, (n, height, width, 3)) if images.shape[-1] == 1 else images
    grid = np.ones((side * side, height, width, 3), np.float32)
    grid[:n] = rgb
    grid = grid.reshape(side, side, height, width, 3).transpose(0, 2, 1, 3, 4)  # [row, H, col, W, 3]
    return grid.reshape(side * height, side * width, 3)


def write_projector(out: str, runs, indices: dict) -> str:
    """Writes every run's features on its subsample for TensorBoard's embedding projector.

    One checkpoint holds one [n, D] variable per run (named by run key); each run gets a
    metadata.tsv (test index, principal label, the evaluator's prediction, the argmax auxiliary
    class) and a sprite of its images. Returns the path of projector_config.pbtxt.
    """
    config = projector.ProjectorConfig()
    variables = {}
    for run in runs:
        keep = indices[run.key]
        variables[run.key] = tf.Variable(run.features[keep], name=run.key)
        os.makedirs(os.path.join(out, run.key), exist_ok=True)
        aux = (
            run.aux_probabilities[keep].argmax(axis=1).astype(str)
            if run.aux_probabilities is not None
            else np.full(len(keep), "-")
        )
        rows = ["test_index\tprincipal\tprincipal_predicted\tauxiliary"]
        rows += [f"{i}\t{run.labels[i]}\t{run.predicted[i]}\t{a}" for i, a in zip(keep, aux)]
        with open(os.path.join(out, run.key, "metadata.tsv"), "w") as f:
            f.write("\n".join(rows) + "\n")
        sprite_path = os.path.join(out, run.key, "sprite.png")
        matplotlib.image.imsave(sprite_path, _sprite(run.images[keep]))
        embedding = config.embeddings.add()
        embedding.tensor_name = f"{run.key}/.ATTRIBUTES/VARIABLE_VALUE"
        embedding.metadata_path = f"{run.key}/metadata.tsv"  # relative to the config file
        embedding.sprite.image_path = f"{run.key}/sprite.png"
        embedding.sprite.single_image_dim.extend(run.images.shape[1:3])
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(**variables), out, max_to_keep=1, checkpoint_name="embeddings"
    )
    manager.save()
    projector.visualize_embeddings(out, config)
    # TensorBoard's projector reads projector_config.pbtxt from the directories it lists as runs,
    # and it lists only those holding event files: this one makes `tensorboard --logdir runs` show
    # these embeddings when `out` is a folder under runs/ (e.g. runs/visualise).
    with tf.summary.create_file_writer(out).as_default():
        tf.summary.text("projector/runs", "\n\n".join(run.title for run in runs), step=0)
    return os.path.join(out, "projector_config.pbtxt")


def top_k_per_aux_class(
    probabilities: np.ndarray, labels: np.ndarray, pri_of_aux: np.ndarray, aux_classes, k: int
) -> np.ndarray:
    """For each auxiliary class, the k examples of its principal class with the highest
    probability for it, best first (ties: lower index first).

    Args:
      probabilities: [N, aux] auxiliary-class probabilities.
      labels: [N] principal labels.
      pri_of_aux: [aux] the principal class owning each auxiliary class.
    Returns:
      [len(aux_classes), k] example indices, -1 where the principal class has fewer than k examples.
    """
    selection = np.full((len(aux_classes), k), -1, np.int64)
    for row, aux_class in enumerate(aux_classes):
        candidates = np.flatnonzero(labels == pri_of_aux[aux_class])
        order = np.argsort(-probabilities[candidates, aux_class], kind="stable")
        best = candidates[order[:k]]
        selection[row, : len(best)] = best
    return selection


def top_k_layout(pri_of_aux: np.ndarray, aux_classes) -> tuple:
    """Where each chosen auxiliary class's images go: a row per principal class (in order), its
    chosen auxiliary classes side by side, as paper Fig. 6 shows them.

    Returns:
      (principal classes, one per row; [(row, slot)] per chosen auxiliary class).
    """
    rows = sorted({int(pri_of_aux[a]) for a in aux_classes})
    used = {pri: 0 for pri in rows}
    places = []
    for aux_class in aux_classes:
        pri = int(pri_of_aux[aux_class])
        places.append((rows.index(pri), used[pri]))
        used[pri] += 1
    return rows, places


def aux_class_label(run: RunOutputs, aux_class: int) -> str:
    """'aux 5', with the class's name where the run's auxiliary classes have names (human runs)."""
    name = run.aux_names[aux_class] if run.aux_names else None
    return f"aux {aux_class} ({name})" if name else f"aux {aux_class}"


def plot_top_k(run: RunOutputs, aux_classes, selection: np.ndarray, path: str) -> None:
    """Image grid: a row per principal class (named), holding for each of its chosen auxiliary
    classes the k images ranked highest, the first titled with the auxiliary class."""
    k = selection.shape[1]
    rows, places = top_k_layout(run.pri_of_aux, aux_classes)
    cols = k * max(slot + 1 for _, slot in places)
    fig = Figure(figsize=(1.2 * cols + 1.2, 1.3 * len(rows) + 0.8), layout="constrained")
    fig.suptitle(f"{run.title}\ntop {k} test images per auxiliary class, by the {run.aux_source}", fontsize=9)
    grayscale = run.images.shape[-1] == 1
    for (row, slot), aux_class, chosen in zip(places, aux_classes, selection):
        for col in range(k):
            ax = fig.add_subplot(len(rows), cols, row * cols + slot * k + col + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if slot == 0 and col == 0:
                ax.set_ylabel(run.class_names[rows[row]], fontsize=9)
            index = chosen[col]
            if index < 0:
                ax.set_frame_on(False)
                continue
            image = run.images[index]
            ax.imshow(
                image[..., 0] if grayscale else image,
                cmap="gray" if grayscale else None,
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
            )
            probability = f"p={run.aux_probabilities[index, aux_class]:.2f}"
            ax.set_title(f"{aux_class_label(run, aux_class)}: {probability}" if col == 0 else probability, fontsize=7)
    fig.savefig(path, dpi=100)


def visualise(
    logdirs,
    out: str,
    max_examples: int = 1000,
    aux_classes: int = 3,
    top_k: int = 5,
    seed: int = 0,
    data_dir: str | None = None,
) -> dict:
    """Restores each run and writes the t-SNE figure, the projector files and the top-k grids.

    Args:
      max_examples: test examples per run for t-SNE and the projector (a fixed subsample).
      aux_classes: auxiliary classes drawn (with `seed`) per run for the top-k grid.
      data_dir: where the data sets are, if not where the runs found them.
    Returns:
      {"tsne": path, "projector_config": path, "top_k": {run key: path}, "runs": [RunOutputs],
       "indices": {run key: subsample indices}}.
    Raises:
      errors.Error: a directory that is not a finished run, data that cannot be loaded, an --out
        that cannot be written.
    """
    runs, taken = [], set()
    for logdir in logdirs:
        resolved, state, run_data = rundir.load_run(logdir, data_dir)
        runs.append(run_on_test_set(resolved.config, state, run_data, _key(resolved.name, taken)))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise errors.Error(f"--out={out} cannot be written ({e.strerror}); pass a writable directory.") from None
    indices = {run.key: subsample(len(run.labels), max_examples) for run in runs}
    class_names = max((run.class_names for run in runs), key=len)
    panels = [
        (run.title, tsne_embedding(run.features[indices[run.key]], seed), run.labels[indices[run.key]]) for run in runs
    ]
    written = {"tsne": os.path.join(out, "tsne.png"), "top_k": {}, "runs": runs, "indices": indices}
    plot_tsne(panels, class_names, written["tsne"])
    written["projector_config"] = write_projector(out, runs, indices)
    for run in runs:
        if run.aux_probabilities is None:
            continue
        num_aux = run.aux_probabilities.shape[1]
        chosen = np.sort(np.random.default_rng(seed).choice(num_aux, min(aux_classes, num_aux), replace=False))
        path = os.path.join(out, f"top{top_k}_{run.key}.png")
        plot_top_k(
            run, chosen, top_k_per_aux_class(run.aux_probabilities, run.labels, run.pri_of_aux, chosen, top_k), path
        )
        written["top_k"][run.key] = path
    return written


def main(argv):
    values = flags.FLAGS
    logdirs = argv[1:]
    problems = [
        (not logdirs, "pass one or more run log directories, e.g. runs/<name>."),
        (not values.out, "--out is required: the directory to write the pictures into."),
        (values.max_examples < MIN_EXAMPLES, f"--max_examples={values.max_examples}: must be at least {MIN_EXAMPLES}."),
        (values.aux_classes < 1, f"--aux_classes={values.aux_classes}: must be positive."),
        (values.top_k < 1, f"--top_k={values.top_k}: must be positive."),
    ]
    for bad, message in problems:
        if bad:
            raise errors.Error(message)
    runtime.start_tensorflow(deterministic=False)
    written = visualise(
        logdirs, values.out, values.max_examples, values.aux_classes, values.top_k, values.seed, values.data_dir or None
    )
    print(f"t-SNE: {written['tsne']}")
    for key, path in written["top_k"].items():
        print(f"top-{values.top_k} images per auxiliary class of {key}: {path}")
    print(f"embedding projector: tensorboard --logdir {values.out} (or a folder above it, e.g. runs)")


def command() -> None:
    """maxl-tf visualise and python -m maxl_tf.visualise."""
    flags.DEFINE_string("out", "", "Directory for the figures and the projector files.")
    flags.DEFINE_integer("max_examples", 1000, "Test examples per run for t-SNE and the projector.")
    flags.DEFINE_integer(
        "aux_classes",
        3,
        "Random auxiliary classes per top-k grid (Fig. 6 shows 3; as many as the run has: all of them).",
    )
    flags.DEFINE_integer("top_k", 5, "Images per auxiliary class.")
    flags.DEFINE_integer("seed", 0, "Seed of t-SNE and of the auxiliary classes drawn.")
    flags.DEFINE_string("data_dir", "", "Where the data sets are, if not where the runs found them.")
    cli.run(main)


if __name__ == "__main__":
    command()
