"""Writes tests/golden/torch_meta_gradient.npz: the MAXL meta-gradient computed by PyTorch.

An independent implementation in the style of the authors' code (and benchmarks/
torch_reference.py): torch.func.functional_call with create_graph=True for the lookahead, models in
train mode, float64. tests/torch_crosscheck_test.py loads the same weights and batch into the Keras
models and checks that maxl_tf's meta-gradient agrees. Needs torch (pip install torch==2.13.0);
the test itself does not.

    python tests/golden/make_torch_meta_gradient.py
"""

import os

import numpy as np
import torch
from torch.func import functional_call
import torch.nn as nn
import torch.nn.functional as F

# maxl_tf's vgg_small at width 0.125 on 8x8x1 images: three conv3x3-BN-ReLU-maxpool blocks.
CHANNELS = (8, 16, 32)
PSI = (2, 3)
BATCH, INNER_LR, ENTROPY_WEIGHT = 6, 0.1, 0.2


def trunk():
    layers, c_in = [], 1
    for c in CHANNELS:
        layers += [
            nn.Conv2d(c_in, c, 3, padding=1),
            nn.BatchNorm2d(c, eps=1e-5, momentum=0.1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten())


def head(n):
    return nn.Sequential(nn.Linear(CHANNELS[-1], CHANNELS[-1]), nn.ReLU(), nn.Linear(CHANNELS[-1], n))


class Evaluator(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk, self.pri, self.aux = trunk(), head(len(PSI)), head(sum(PSI))

    def forward(self, x):
        h = self.trunk(x)
        return self.pri(h), self.aux(h)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk, self.head = trunk(), head(sum(PSI))
        owner = torch.repeat_interleave(torch.arange(len(PSI)), torch.tensor(PSI))
        self.register_buffer("mask", (owner[None, :] == torch.arange(len(PSI))[:, None]).double())

    def forward(self, x, y):
        logits = self.head(self.trunk(x))
        z = torch.exp(logits - logits.max(-1, keepdim=True).values) * self.mask[y]
        return z / z.sum(-1, keepdim=True)


def focal(logits, target, gamma=2.0):
    p = F.softmax(logits, -1)
    return torch.mean(torch.sum(-target * (1 - p) ** gamma * torch.log(p + 1e-12), -1))


def keras_layout(name, value):
    """PyTorch parameter -> the Keras variable layout (conv OIHW -> HWIO, linear (out,in) -> (in,out))."""
    value = value.detach().numpy()
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def main():
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    evaluator, generator = Evaluator().train(), Generator().train()
    # Non-zero biases and BN affine parameters, so every parameter's layout is exercised.
    with torch.no_grad():
        for p in list(evaluator.parameters()) + list(generator.parameters()):
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(BATCH, 1, 8, 8)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    y1 = F.one_hot(y, len(PSI)).double()

    params = dict(evaluator.named_parameters())
    target = generator(x, y)
    pri, aux = evaluator(x)
    inner = focal(pri, y1) + focal(aux, target)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    fast = {k: w - INNER_LR * g for (k, w), g in zip(params.items(), grads)}
    pri_fast, _ = functional_call(evaluator, fast, (x,))
    mean = target.mean(0)
    meta = focal(pri_fast, y1) + ENTROPY_WEIGHT * torch.sum(mean * torch.log(mean + 1e-12))
    generator_grads = torch.autograd.grad(meta, list(generator.parameters()))

    arrays = {
        "images": x.numpy().transpose(0, 2, 3, 1),
        "labels": y.numpy(),
        "psi": np.array(PSI),
        "inner_lr": INNER_LR,
        "entropy_weight": ENTROPY_WEIGHT,
        "meta_loss": meta.item(),
    }
    for prefix, model in (("evaluator", evaluator), ("generator", generator)):
        for i, (name, p) in enumerate(model.named_parameters()):
            arrays[f"{prefix}/{i:02d}"] = keras_layout(name, p)
    for i, (name, _) in enumerate(generator.named_parameters()):
        arrays[f"grad/{i:02d}"] = keras_layout(name, generator_grads[i])
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_meta_gradient.npz")
    np.savez(path, **arrays)
    print(f"wrote {path} (torch {torch.__version__}, meta loss {meta.item():.10f})")


if __name__ == "__main__":
    main()
