"""What the steps need to know of a multi-task evaluator: its two outputs and its shared trunk."""

import keras

# Layers of the VGG trunk are named with this prefix (models/vgg.py; checkpoints keep the names).
TRUNK_PREFIX = "trunk_"
# The heads' layers are named with these prefixes (models/heads.head, VGG's too); every other
# trainable variable of an evaluator is its shared trunk, whatever the backbone.
HEAD_PREFIXES = ("principal", "auxiliary")


def outputs(model_outputs):
    """(principal logits, auxiliary logits or None) from an evaluator call or stateless_call.

    Keras returns a one-output model's result as a bare tensor, not a one-element list.
    """
    if isinstance(model_outputs, (list, tuple)):
        return model_outputs[0], (model_outputs[1] if len(model_outputs) > 1 else None)
    return model_outputs, None


def trunk_variable_indices(model: keras.Model) -> list:
    """Positions in model.trainable_variables of the shared trunk's variables: all but the heads'.

    Found by layer, not by variable path: a backbone built before it was wrapped keeps the paths
    it was built with, whatever the evaluator calls it.
    """
    heads = {
        id(variable)
        for layer in model.layers
        if layer.name.startswith(HEAD_PREFIXES)
        for variable in layer.trainable_variables
    }
    return [i for i, v in enumerate(model.trainable_variables) if id(v) not in heads]
