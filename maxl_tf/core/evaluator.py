"""What the steps need to know of a multi-task evaluator: its two outputs and its shared trunk."""

import keras

# Layers of the shared trunk are named with this prefix (models/vgg.py), so the steps find the
# trunk's variables, for the gradient-cosine diagnostic, without knowing the architecture.
TRUNK_PREFIX = "trunk_"


def outputs(model_outputs):
    """(principal logits, auxiliary logits or None) from an evaluator call or stateless_call.

    Keras returns a one-output model's result as a bare tensor, not a one-element list.
    """
    if isinstance(model_outputs, (list, tuple)):
        return model_outputs[0], (model_outputs[1] if len(model_outputs) > 1 else None)
    return model_outputs, None


def trunk_variable_indices(model: keras.Model) -> list:
    """Positions in model.trainable_variables of the shared trunk's variables."""
    return [i for i, v in enumerate(model.trainable_variables) if v.path.startswith(TRUNK_PREFIX)]
