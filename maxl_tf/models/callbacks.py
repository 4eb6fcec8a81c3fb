"""Keras callbacks for a MAXL model (models/maxl.py)."""

import keras

from maxl_tf.core import label_health


class LabelUsage(keras.callbacks.Callback):
    """The labels' health per epoch: adds to the logs how evenly the auxiliary labels were used
    (the collapsing-class problem, paper Section 3.4: label_health.usage_summary), warns when they
    collapse, and, given a probe batch, the cosine of the principal and auxiliary gradients on the
    shared trunk. List it before TensorBoard or CSVLogger, which then record its values.

    Logs: aux_used_mean (auxiliary classes used per principal class), aux_entropy_mean (1: used
    evenly, 0: one class), aux_entropy_min (the least even principal class), collapsed_classes
    (principal classes using fewer than half their auxiliary classes: label_health.collapsed_classes),
    trunk_grad_cosine (with a probe).
    Attributes:
      per_class: one entry per epoch, {"aux_entropy": [...], "aux_used": [...]} per principal class.
    """

    def __init__(self, probe=None, warn=print):
        """probe: (images, labels[, aux_labels]), a fixed batch for the gradient cosine.
        warn: called with the warning line of an epoch whose labels collapse (None: silent)."""
        super().__init__()
        self.probe = probe
        self.warn = warn
        self.per_class = []

    def on_epoch_begin(self, epoch, logs=None):
        self.model.label_counts.reset_state()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.model.task.labels.auxiliary:
            return
        summary = label_health.usage_summary(self.model.label_counts.result().numpy(), self.model.psi)
        used, entropy = summary["labels/aux_used_per_pri"], summary["labels/aux_entropy_per_pri"]
        self.per_class.append({"aux_entropy": entropy, "aux_used": used})
        logs["aux_used_mean"] = summary["labels/aux_used_mean"]
        logs["aux_entropy_mean"] = summary["labels/aux_entropy_mean"]
        logs["aux_entropy_min"] = min(entropy)
        logs["collapsed_classes"] = len(label_health.collapsed_classes(used, self.model.psi))
        warning = label_health.collapse_warning(summary, self.model.psi)
        if warning and self.warn is not None:
            self.warn(f"epoch {epoch + 1}: {warning}")
        if self.probe is not None:
            logs["trunk_grad_cosine"] = self.model.trunk_gradient_cosine(*self.probe)
