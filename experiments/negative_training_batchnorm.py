"""Why negative training fails in some seeds at the cpu scale: BatchNorm's running statistics.

Usage::

    .venv/bin/flowood reproduce --suite all --scale cpu --seeds 3 --out runs/neg --only negative_fashionmnist_mnist
    .venv/bin/python experiments/negative_training_batchnorm.py runs/neg [--batches 50]

Negative training (the paper's Appendix B) trains on batches of in-distribution images (FashionMNIST) and OOD
images (MNIST) passed through the flow together, so the BatchNorm layers of its st-networks normalise with the
statistics of such mixed batches. Evaluation uses the layers' running statistics instead, an exponential average
over batches seen while the weights were still changing. For each seed's final checkpoint this script measures the
bits/dim of 512 FashionMNIST and 512 MNIST test images, and the AUROC of bits/dim (MNIST as positive), with

* ``running``: evaluation mode, the running statistics training left (what ``flowood evaluate`` measures);
* ``mixed batches``: BatchNorm in training mode on batches of 64 FashionMNIST + 64 MNIST test images, the
  statistics the training steps used;
* ``recomputed``: evaluation mode after recomputing the running statistics at the final weights, as a cumulative
  average over ``--batches`` mixed training batches (64 + 64), the population statistics of what training saw.

If ``mixed batches`` and ``recomputed`` separate the sets and ``running`` does not, the flow learned the separation
and lost it only to stale running statistics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from flowood.checkpoints import load_flow
from flowood.data import load_dataset
from flowood.training.callbacks import BATCHNORMS, recompute_running_statistics

HALF = 64


def bits_per_dim(flow, x: torch.Tensor) -> torch.Tensor:
    """Bits/dim in batches of 2 x HALF (each batch half in-, half out-of-distribution when ``x`` is laid out so)."""
    with torch.no_grad():
        return torch.cat([flow.bits_per_dim(x[i:i + 2 * HALF], generator=torch.Generator().manual_seed(i))
                          for i in range(0, len(x), 2 * HALF)])


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batches of HALF samples of ``a`` followed by HALF of ``b``."""
    return torch.cat([torch.cat((a[i:i + HALF], b[i:i + HALF])) for i in range(0, len(a), HALF)])


def split(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The in- and out-of-distribution halves of :func:`interleave`'s layout."""
    batches = values.view(-1, 2, HALF)
    return batches[:, 0].reshape(-1), batches[:, 1].reshape(-1)


def report(name: str, ind: torch.Tensor, ood: torch.Tensor) -> str:
    auroc = roc_auc_score(np.r_[np.zeros(len(ind)), np.ones(len(ood))], np.r_[ind.numpy(), ood.numpy()])
    return (f"| {name} | {ind.median():.2f} | {ind.mean():.2f} | {ood.median():.2f} | {ood.mean():.2f} | "
            f"{auroc:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the output folder of `flowood reproduce`")
    parser.add_argument("--batches", type=int, default=50, help="mixed training batches to recompute statistics")
    args = parser.parse_args()
    test = interleave(load_dataset("fashionmnist", "test").take(512).data,
                      load_dataset("mnist", "test").take(512).data)
    n = HALF * args.batches
    train = interleave(load_dataset("fashionmnist", "train").take(n, seed=1).data,
                       load_dataset("mnist", "train").take(n, seed=1).data)
    seeds = sorted((args.run / "negative_fashionmnist_mnist").glob("seed*/train/checkpoints/last.ckpt"))
    if not seeds:
        raise SystemExit(f"no negative_fashionmnist_mnist checkpoints under {args.run}")
    print("| seed, BatchNorm statistics | FashionMNIST bits/dim median | mean | MNIST median | mean | AUROC |")
    print("|---|---:|---:|---:|---:|---:|")
    for checkpoint in seeds:
        seed = checkpoint.parents[2].name
        flow = load_flow(checkpoint).flow.eval()
        print(report(f"{seed}, running", *split(bits_per_dim(flow, test))))
        flow.train()
        for layer in flow.modules():
            if isinstance(layer, BATCHNORMS):
                layer.momentum = 0.0  # batch statistics, running ones untouched
        print(report(f"{seed}, mixed batches", *split(bits_per_dim(flow, test))))
        recompute_running_statistics(flow, lambda model=flow: bits_per_dim(model, train))
        flow.eval()
        print(report(f"{seed}, recomputed", *split(bits_per_dim(flow, test))))


if __name__ == "__main__":
    main()
