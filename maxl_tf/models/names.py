"""The networks a flag can name, known without importing Keras (config.py lists them as choices)."""

# Trunks of both networks (models/vgg.py): (filters, convolutions) per block, a 2x2 max-pool after each.
ARCHITECTURES = {
    "vgg16": ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),  # 32x32 down to 1x1
    "vgg_small": ((64, 1), (128, 1), (256, 1)),  # 8x8 digits down to 1x1; fast enough for tests and CPUs
}
# The Prototypical net's embedder (embedder.py): these two names, or a saved .keras file.
IMAGENET, UNTRAINED = "imagenet", "untrained"


def is_backbone_spec(model: str) -> bool:
    """Whether --model names a backbone function, module:function (models/backbones.py)."""
    return ":" in model
