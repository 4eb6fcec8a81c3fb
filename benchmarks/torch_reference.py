"""PyTorch reference for the MAXL training iteration, for side-by-side speed checks.

A plain PyTorch 2 implementation of the same work the TensorFlow project does per
iteration: VGG-16-BN evaluator with a principal and an auxiliary head, VGG-16-BN
label generator with a masked softmax, focal loss (gamma=2), and the second-order
meta update of the generator through a one-step lookahead of the evaluator
(torch.func.functional_call with create_graph=True). It exists only to give a
"what a user would pick instead" figure measured on the same machine, in the
same run as the project's own benchmark.

    python benchmarks/torch_reference.py --batch_size=64 --steps=5

Prints one JSON line: images per second for a single-task step and for a full
MAXL iteration (one evaluator step + one generator meta step).
Needs torch (pip install torch==2.13.0 on this machine kind picks the local CPU build).
"""

import argparse
import json
import time

import torch
from torch.func import functional_call
import torch.nn as nn
import torch.nn.functional as F

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def trunk():
    layers, c_in = [], 3
    for c in VGG16:
        if c == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
    return nn.Sequential(*layers, nn.Flatten())


def head(n):
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, n))


class Evaluator(nn.Module):
    def __init__(self, pri, aux):
        super().__init__()
        self.trunk, self.pri, self.aux = trunk(), head(pri), head(aux)

    def forward(self, x):
        h = self.trunk(x)
        return self.pri(h), self.aux(h)


class Generator(nn.Module):
    def __init__(self, psi):
        super().__init__()
        self.trunk, self.head = trunk(), head(sum(psi))
        owner = torch.repeat_interleave(torch.arange(len(psi)), torch.tensor(psi))
        self.register_buffer("mask", (owner[None, :] == torch.arange(len(psi))[:, None]).float())

    def forward(self, x, y):
        logits = self.head(self.trunk(x))
        z = torch.exp(logits - logits.max(-1, keepdim=True).values) * self.mask[y]
        return z / z.sum(-1, keepdim=True)


def focal(logits, target, gamma=2.0):
    p = F.softmax(logits, -1)
    return torch.mean(torch.sum(-target * (1 - p) ** gamma * torch.log(p + 1e-12), -1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--pri", type=int, default=20)
    ap.add_argument("--aux", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    psi = [a.aux // a.pri] * a.pri
    f, g = Evaluator(a.pri, a.aux), Generator(psi)
    opt_f = torch.optim.SGD(f.parameters(), lr=0.01)
    opt_g = torch.optim.SGD(g.parameters(), lr=1e-3, weight_decay=5e-4)
    x = torch.randn(a.batch_size, 3, 32, 32)
    y = torch.randint(0, a.pri, (a.batch_size,))
    xm = torch.randn(a.batch_size, 3, 32, 32)
    ym = torch.randint(0, a.pri, (a.batch_size,))
    y1 = lambda t: F.one_hot(t, a.pri).float()

    def single_step():
        pri, _ = f(x)
        loss = focal(pri, y1(y))
        opt_f.zero_grad()
        loss.backward()
        opt_f.step()

    def maxl_iteration():
        # evaluator step on a training batch, generated labels held fixed
        pri, aux = f(x)
        with torch.no_grad():
            target = g(x, y)
        loss = focal(pri, y1(y)) + focal(aux, target)
        opt_f.zero_grad()
        loss.backward()
        opt_f.step()
        # generator step on a meta batch through a one-step lookahead of the evaluator
        params = dict(f.named_parameters())
        target = g(xm, ym)
        pri, aux = f(xm)
        inner = focal(pri, y1(ym)) + focal(aux, target)
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        fast = {k: w - 0.01 * gw for (k, w), gw in zip(params.items(), grads)}
        pri_fast, _ = functional_call(f, fast, (xm,))
        mean = target.mean(0)
        meta = focal(pri_fast, y1(ym)) + 0.2 * torch.sum(mean * torch.log(mean + 1e-12))
        opt_g.zero_grad()
        meta.backward()
        opt_g.step()

    out = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(), "batch_size": a.batch_size}
    for name, fn in [("single_step", single_step), ("maxl_iteration", maxl_iteration)]:
        fn()  # warm-up
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        times.sort()
        out[name + "_images_per_s"] = round(a.batch_size / times[len(times) // 2], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
