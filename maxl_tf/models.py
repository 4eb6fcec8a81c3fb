"""The two networks of MAXL: a multi-task evaluator and a label generator, both VGG-BN.

Architecture as in the authors' code: conv3x3 + batch norm + ReLU blocks, a 2x2 max-pool after
each block, flatten, and per task a head Dense(hidden) - ReLU - Dense(classes). Batch norm uses
PyTorch's constants (epsilon 1e-5, momentum 0.1, i.e. Keras momentum 0.9): Keras' defaults
(1e-3, 0.99) make the moving statistics lag badly in short runs.
"""
import keras

# (filters, convolutions) per block. VGG-16 takes 32x32 down to 1x1 in five blocks.
ARCHITECTURES = {
    "vgg16": ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
    # Three single-conv blocks: 8x8 digits go down to 1x1; fast enough for tests and CPUs.
    "vgg_small": ((64, 1), (128, 1), (256, 1)),
}
TRUNK_PREFIX = "trunk_"


def _trunk(images, architecture: str, width: float):
    """Shared feature extractor. images: [batch, H, W, C] -> features [batch, hidden]."""
    x = images
    for block, (filters, convs) in enumerate(ARCHITECTURES[architecture], start=1):
        for conv in range(1, convs + 1):
            name = f"{TRUNK_PREFIX}block{block}_conv{conv}"
            x = keras.layers.Conv2D(max(1, round(filters * width)), 3, padding="same", name=name)(x)
            x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name + "_bn")(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2, name=f"{TRUNK_PREFIX}block{block}_pool")(x)
    return keras.layers.Flatten(name=TRUNK_PREFIX + "flatten")(x)     # [batch, 1 * 1 * filters]


def _head(features, classes: int, name: str):
    hidden = keras.layers.Dense(features.shape[-1], activation="relu", name=name + "_hidden")(features)
    return keras.layers.Dense(classes, name=name + "_logits")(hidden)


def check_input_size(architecture: str, image_size: int) -> None:
    """Raises ValueError if the architecture's pooling would shrink the image below 1x1."""
    blocks = len(ARCHITECTURES[architecture])
    if image_size < 2 ** blocks:
        raise ValueError(
            f"--model={architecture} pools {blocks} times and needs images of at least "
            f"{2 ** blocks}x{2 ** blocks}; this data set's are {image_size}x{image_size}. "
            f"Use --model=vgg_small.")


def build_evaluator(input_shape, pri_classes: int, aux_classes: int,
                    architecture: str = "vgg16", width: float = 1.0) -> keras.Model:
    """Multi-task evaluator f(x) -> [principal logits, auxiliary logits] (paper Section 3.1).

    aux_classes=0 builds a single-task network whose only output is the principal logits, still
    returned as a one-element list so callers unpack it the same way.
    """
    check_input_size(architecture, input_shape[0])
    images = keras.Input(input_shape, name="images")
    features = _trunk(images, architecture, width)
    outputs = [_head(features, pri_classes, "principal")]
    if aux_classes:
        outputs.append(_head(features, aux_classes, "auxiliary"))
    return keras.Model(images, outputs, name="evaluator")


def build_generator(input_shape, aux_classes: int, architecture: str = "vgg16",
                    width: float = 1.0) -> keras.Model:
    """Label generator g(x) -> auxiliary logits [batch, sum(psi)]; the masked softmax over the
    principal label's block is applied by losses.masked_softmax."""
    check_input_size(architecture, input_shape[0])
    images = keras.Input(input_shape, name="images")
    logits = _head(_trunk(images, architecture, width), aux_classes, "generator")
    return keras.Model(images, logits, name="generator")


def evaluator_outputs(outputs):
    """(principal logits, auxiliary logits or None) from an evaluator call or stateless_call.

    Keras returns a one-output model's result as a bare tensor, not a one-element list.
    """
    if isinstance(outputs, (list, tuple)):
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
    return outputs, None


def trunk_variable_indices(model: keras.Model) -> list:
    """Positions in model.trainable_variables of the shared trunk's variables."""
    return [i for i, v in enumerate(model.trainable_variables) if v.path.startswith(TRUNK_PREFIX)]
