"""Keras callbacks for a MAXL model (models/maxl.py)."""

import keras

from maxl_tf.core import labels as labels_lib


class LabelUsage(keras.callbacks.Callback):
    """Adds to each epoch's logs how evenly the auxiliary labels were used (the collapsing-class
    problem, paper Section 3.4: labels.usage_summary) and, given a probe batch, the cosine of the
    principal and auxiliary gradients on the shared trunk. List it before TensorBoard or CSVLogger,
    which then record its values.

    Logs: aux_used_mean (auxiliary classes used per principal class), aux_entropy_mean (1: used
    evenly, 0: one class), trunk_grad_cosine (with a probe).
    """

    def __init__(self, probe=None):
        """probe: (images, labels[, aux_labels]), a fixed batch for the gradient cosine."""
        super().__init__()
        self.probe = probe

    def on_epoch_begin(self, epoch, logs=None):
        self.model.label_counts.reset_state()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.model.task.labels.auxiliary:
            return
        summary = labels_lib.usage_summary(self.model.label_counts.result().numpy(), self.model.psi)
        logs["aux_used_mean"] = summary["labels/aux_used_mean"]
        logs["aux_entropy_mean"] = summary["labels/aux_entropy_mean"]
        if self.probe is not None:
            logs["trunk_grad_cosine"] = self.model.trunk_gradient_cosine(*self.probe)
