"""Where flowood's first gradients differ from the original code's, per kind of parameter, in each memory format.

For a config of ``train_side_by_side.py`` (default: the RealNVP with checkerboard masks at flowood's cpu scale) and
each seed, this builds the original's model and flowood's holding the same initial weights
(``train_side_by_side.build_pair``), computes one training loss on the same batch with the same dequantization
noise, back-propagates in both, and compares the gradients parameter by parameter (the original's mapped onto
flowood's names by ``flowood.flows.original.load_original_state_dict``). Pooled over layers per kind of parameter
(``steps.*.st_net.blocks.*.out_conv.bias``, ...), it prints ``|g_flowood| / |g_original|`` and
``|g_flowood - g_original| / |g_original|``, once with flowood's convolutions in channels-last memory (its
default) and once in contiguous memory (``--no_channels_last``).

In exact arithmetic both gradients are equal. The kinds whose gradient is zero in exact arithmetic (a bias before
a BatchNorm, which the BatchNorm's mean subtraction removes) carry only float rounding, and show how large each
layout's rounding is. Needs a checkout of the original code::

    .venv/bin/python experiments/original_code/first_step_gradients.py --original /path/to/flows_ood \\
        [--config realnvp_fashionmnist] [--seeds 0 1 2] [--top 8]
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_with_original import import_original
from train_side_by_side import CONFIGS, build_pair, flowood_loss, images, original_loss, original_utils, parameter_kind

from flowood.flows.original import load_original_state_dict
from flowood.reproduce.experiments import load_experiments


def first_gradients(original, utils, exp, data: torch.Tensor, seed: int, channels_last: bool
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per flowood parameter name: (flowood's gradient, the original's gradient mapped to that name) after one
    backward pass of each code on the same batch and dequantization noise, from the same weights."""
    net, module, loss_fn, opt_original, opt_flowood, _ = build_pair(original, utils, exp, seed,
                                                                    {"channels_last": channels_last})
    net.train(), module.train()
    g = torch.Generator().manual_seed(seed)
    x = data[torch.randint(0, len(data), (module.config.batch_size,), generator=g)]
    torch.manual_seed(1000)
    opt_original.zero_grad()
    original_loss(net, loss_fn, x, None, module.config.negative_val)[0].backward()
    torch.manual_seed(1000)
    opt_flowood.zero_grad()
    flowood_loss(module, x, None, 0).backward()
    grads = {n: torch.zeros_like(v) for n, v in net.state_dict().items()}
    grads.update({n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None})
    mapped = copy.deepcopy(module.flow)
    load_original_state_dict(mapped, grads)
    theirs = mapped.state_dict()
    return {n: (p.grad.detach().contiguous(), theirs[n].contiguous())
            for n, p in module.flow.named_parameters() if p.grad is not None}


def by_kind(pairs: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, tuple[float, float]]:
    """Per kind of parameter (layer indices pooled), over every seed given: ``(|g_f| / |g_o|, |g_f - g_o| /
    |g_o|)``."""
    pools: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for seed_pairs in pairs:
        for name, pair in seed_pairs.items():
            pools.setdefault(parameter_kind(name), []).append(pair)
    out = {}
    for kind, items in pools.items():
        ours = torch.cat([a.flatten() for a, _ in items]).double()
        theirs = torch.cat([b.flatten() for _, b in items]).double()
        scale = float(theirs.norm())
        if scale > 0:
            out[kind] = (float(ours.norm()) / scale, float((ours - theirs).norm()) / scale)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=Path, required=True, help="a checkout of the original code")
    parser.add_argument("--config", default="realnvp_fashionmnist", choices=CONFIGS[:-1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--top", type=int, default=8, help="kinds shown, largest relative difference first")
    args = parser.parse_args()
    if not (args.original / "flow_ssl").is_dir():
        raise SystemExit(f"{args.original} is not a checkout of the original code (no flow_ssl)")
    warnings.filterwarnings("ignore")
    original, utils = import_original(args.original.resolve()), original_utils(args.original.resolve())
    exp = {e.name: e for e in load_experiments(scale="cpu", suite="all")}[args.config]
    data = images("fashionmnist")
    results = {layout: by_kind([first_gradients(original, utils, exp, data, s, layout == "channels-last")
                                for s in args.seeds])
               for layout in ("channels-last", "contiguous")}
    kinds = sorted(results["channels-last"], key=lambda k: -results["channels-last"][k][1])
    print(f"{args.config}, seeds {' '.join(map(str, args.seeds))}: flowood's first gradients against the original's,"
          " per kind of parameter")
    print("| kind | channels-last: norm ratio / relative difference | contiguous: norm ratio / relative difference |")
    print("|---|---:|---:|")
    for kind in kinds[:args.top]:
        (r1, d1), (r0, d0) = results["channels-last"][kind], results["contiguous"][kind]
        print(f"| `{kind}` | {r1:.2f} / {d1:.1e} | {r0:.2f} / {d0:.1e} |")
    rest = kinds[args.top:]
    if rest:
        worst = max(results["channels-last"][k][1] for k in rest)
        worst0 = max(results["contiguous"][k][1] for k in rest)
        print(f"| the other {len(rest)} kinds, largest | - / {worst:.1e} | - / {worst0:.1e} |")


if __name__ == "__main__":
    main()
