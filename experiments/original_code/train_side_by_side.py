"""flowood's training against the original code's, step by step, on the paper's configs at flowood's cpu scale.

For each config (``flowood reproduce``'s cpu scale of: RealNVP with checkerboard, horizontal and cycle masks,
bottleneck st-networks with l = 10 and 100, Glow, and negative training against MNIST) this builds the original
code's model (github.com/PolinaKirichenko/flows_ood, with the constructor its training script calls) and flowood's
model of the same config, and copies the original's *initial* weights into flowood's
(``flowood.flows.original.load_original_state_dict``). Then both train in lockstep on the same batches of
FashionMNIST training images (and, for negative training, the same MNIST batches) with the same dequantization
noise (the global generator reseeded before each step: the original draws it inside its logit layer, flowood in
``log_prob``):

* the original: its ``FlowLoss``, its optimizer set-up (``utils.get_param_groups`` with weight decay on the
  weight-normalisation scales for RealNVP, every parameter for Glow), its per-group clipping
  (``utils.clip_grad_norm``), and for negative training the loss of its ``train_unsup_ood_negative.py``;
* flowood: ``FlowModule.training_step`` (for negative training ``negative_training_loss`` on the same OOD batch:
  the module itself draws its OOD batch at random), ``configure_optimizers`` and ``configure_gradient_clipping``.

Printed per config and seed: how far flowood's own initial weights (before the copy) are from the original's,
per kind of parameter pooled over layers (z-scores of the differences of means and of standard deviations,
:func:`pooled_difference`); the training loss in bits/dim of both at steps 1, 2, 10, 50, ... and the last, the
largest difference over the first two steps (where nothing but the procedure can differ), and the mean over the
last 50 steps; and at the end, both in evaluation mode (BatchNorm's running statistics) on the same 2,000
FashionMNIST and MNIST test images and noise: mean bits/dim and the AUROC. Where the config's cpu scale recomputes
BatchNorm's running statistics at the end of training (``recompute_batchnorm``, negative training), both are then
evaluated a second time after recomputing them from the same training batches and noise
(:func:`recompute_both`), so the two codes are compared under each evaluation. Identical procedures give identical
first steps (up to float rounding and the original's constant ``D log(255/256)``, taken out here) and then drift
apart only as rounding differences grow in a chaotic optimisation. Needs a checkout of the original code::

    git clone https://github.com/PolinaKirichenko/flows_ood /path/to/flows_ood
    .venv/bin/python experiments/original_code/train_side_by_side.py --original /path/to/flows_ood \\
        [--configs realnvp_fashionmnist ...] [--steps 300] [--seeds 0 1 2] [--json curves.json]
        [--with earlier.json ...] [--flowood_set channels_last=false ...]

With two or more seeds of a config (this run's, and those of earlier runs' ``--json`` files given with ``--with``)
it prints, per config, both codes' test bits/dim and AUROC over the seeds and their paired difference with its
standard error and p-value.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_with_original import import_original, original_model

from flowood.data import load_dataset
from flowood.flows.layers import ActNorm
from flowood.flows.original import load_original_state_dict
from flowood.reproduce.experiments import load_experiments
from flowood.training.callbacks import recompute_running_statistics
from flowood.training.module import FlowModule, negative_training_loss

CONFIGS = ("realnvp_fashionmnist", "horizontal_mask_fashionmnist", "cycle_mask_fashionmnist",
           "bottleneck_l10_fashionmnist", "bottleneck_l100_fashionmnist", "glow_fashionmnist",
           "negative_fashionmnist_mnist")
SHOWN_STEPS = (1, 2, 10, 50, 100, 200, 300, 400, 500, 600)


def original_utils(original: Path) -> Any:
    """The original training scripts' ``utils`` package (its plotting imports stubbed: they only draw)."""
    sys.path.insert(0, str(original / "experiments" / "train_flows"))
    for name in ("seaborn", "tensorboardX"):
        sys.modules.setdefault(name, types.SimpleNamespace())
    import utils
    return utils


def images(name: str, split: str = "train") -> torch.Tensor:
    """A set's images as the original's ``ToTensor`` gives them: float32 ``k / 255``."""
    return load_dataset(name, split).data.float().div(255).reshape(-1, 1, 28, 28)


def build_pair(original: Any, utils: Any, exp: Any, seed: int, flowood_set: dict[str, Any] | None = None
               ) -> tuple[torch.nn.Module, FlowModule, Any, torch.optim.Optimizer, torch.optim.Optimizer, tuple]:
    """The original's model and optimizer, flowood's module (holding the original's initial weights) and optimizer,
    and how far flowood's own initial weights were from the original's (:func:`pooled_difference`).
    ``flowood_set``: training options that override the experiment's for flowood only (e.g. ``channels_last``)."""
    train = {**exp.train, **(flowood_set or {})}
    torch.manual_seed(seed)
    module = FlowModule(train, (1, 28, 28))
    own = {n: p.detach().clone() for n, p in module.flow.named_parameters()}
    torch.manual_seed(seed)
    net = original_model(original, module.flow.config)
    load_original_state_dict(module.flow, net.state_dict())
    for layer in module.flow.modules():  # the loader marks ActNorm initialised; here both initialise on batch 1
        if isinstance(layer, ActNorm):
            layer.load_state_dict({**layer.state_dict(), "initialized": torch.tensor(False)})
    init = pooled_difference(own, {n: p.detach() for n, p in module.flow.named_parameters()})
    c = module.config
    opt_original = original_optimizer(utils, net, module.flow.config["flow"], c.optim, c.lr, c.weight_decay)
    prior = torch.distributions.MultivariateNormal(torch.zeros(784), torch.eye(784))
    return net, module, original.FlowLoss(prior), opt_original, module.configure_optimizers(), init


def original_optimizer(utils: Any, net: torch.nn.Module, flow: str, optim: str, lr: float, weight_decay: float
                       ) -> torch.optim.Optimizer:
    """The original training scripts' optimizer: weight decay on every parameter of a Glow, on a RealNVP's
    weight-normalisation scales only (``utils.get_param_groups``)."""
    cls = getattr(torch.optim, optim)
    if flow == "Glow":
        return cls(net.parameters(), lr=lr, weight_decay=weight_decay)
    return cls(utils.get_param_groups(net, weight_decay, norm_suffix="weight_g"), lr=lr)


def parameter_kind(name: str) -> str:
    """A parameter's name with its layer indices pooled: ``steps.3.st_net.blocks.0.in_conv.bias`` ->
    ``steps.*.st_net.blocks.*.in_conv.bias``."""
    return re.sub(r"\.\d+\.", ".*.", name)


def pooled_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float, str]:
    """How far two random initialisations of one model are from the same distribution, per kind of parameter (one
    name in every layer, pooled): the largest z-score of the difference of means (in standard errors,
    ``s * sqrt(2 / n)``) and of standard deviations (``s * sqrt(1 / n)``), over the kinds that are random, and the
    kind where it is largest. Around 1-3 for draws from one distribution; 0 where both drew the same numbers."""
    pools: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for name in a:
        key = parameter_kind(name)
        pools.setdefault(key, ([], []))
        pools[key][0].append(a[name].flatten())
        pools[key][1].append(b[name].flatten())
    worst_mean, worst_std, where = 0.0, 0.0, "-"
    for key, (xs, ys) in pools.items():
        x, y = torch.cat(xs).double(), torch.cat(ys).double()
        scale = max(float(x.std()), float(y.std())) if x.numel() > 1 else 0.0
        if scale < 1e-12:  # a constant initialisation (ones, zeros): compared exactly
            if not torch.equal(x, y):
                return math.inf, math.inf, key
            continue
        z_mean = abs(float(x.mean() - y.mean())) / (scale * math.sqrt(2 / x.numel()))
        z_std = abs(float(x.std() - y.std())) / (scale * math.sqrt(1 / x.numel()))
        if max(z_mean, z_std) > max(worst_mean, worst_std):
            where = key
        worst_mean, worst_std = max(worst_mean, z_mean), max(worst_std, z_std)
    return worst_mean, worst_std, where


def original_loss(net: torch.nn.Module, loss_fn: Any, x: torch.Tensor, x_ood: torch.Tensor | None,
                  negative_val: float) -> tuple[torch.Tensor, float]:
    """The original script's training loss (nats per image), negative training's when there is an OOD batch, and
    what to add to it for flowood's convention: the original's log-likelihood is flowood's plus ``D log(255/256)``
    (``flowood.flows.original``), which cancels in negative training's half-and-half loss."""
    shift = x[0].numel() * math.log(255 / 256)
    if x_ood is None:
        return loss_fn(net(x), sldj=net.logdet()), shift
    loss = loss_fn(net(torch.cat((x, x_ood))), sldj=net.logdet(), mean=False)
    loss[len(x):] *= -1
    positive, negative = loss[:len(x)], loss[len(x):]
    if (negative > negative_val).sum() > 0:
        return 0.5 * (positive.mean() + negative[negative > negative_val].mean()), 0.0
    return positive.mean(), shift


def flowood_loss(module: FlowModule, x: torch.Tensor, x_ood: torch.Tensor | None, step: int) -> torch.Tensor:
    if x_ood is None:
        return module.training_step((x, None), step)
    both = module.flow.log_prob(torch.cat((x, x_ood)), validate=False)
    return negative_training_loss(both[:len(x)], both[len(x):], module.negative_threshold)[0]


def lockstep(original: Any, utils: Any, exp: Any, data: dict[str, torch.Tensor], steps: int, seed: int,
             flowood_set: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train both side by side; the per-step training losses in bits/dim (the original's in flowood's convention),
    then both evaluated (:func:`evaluate`)."""
    net, module, loss_fn, opt_original, opt_flowood, init = build_pair(original, utils, exp, seed, flowood_set)
    negative = bool(module.config.ood_dataset)
    batch, clip, per_dim = module.config.batch_size, module.config.max_grad_norm, 784 * math.log(2)
    g = torch.Generator().manual_seed(seed)
    net.train(), module.train()
    curves: dict[str, list[float]] = {"original": [], "flowood": []}
    for step in range(steps):
        x = data["train"][torch.randint(0, len(data["train"]), (batch,), generator=g)]
        x_ood = data["ood"][torch.randint(0, len(data["ood"]), (batch,), generator=g)] if negative else None
        for name, opt in (("original", opt_original), ("flowood", opt_flowood)):
            torch.manual_seed(1000 + step)  # the same dequantization noise for both
            opt.zero_grad()
            if name == "original":
                loss, shift = original_loss(net, loss_fn, x, x_ood, module.config.negative_val)
                loss.backward()
                utils.clip_grad_norm(opt, clip)
                value = float(loss) + shift
            else:
                loss = flowood_loss(module, x, x_ood, step)
                loss.backward()
                module.configure_gradient_clipping(opt, clip)
                value = float(loss)
            opt.step()
            curves[name].append(value / per_dim)
    evaluation = evaluate(net, module.flow, loss_fn, data)
    # the original's final weights (BatchNorm's running statistics included) scored by flowood's code: equal to the
    # original's own scores when the two evaluations are the same, so a difference between the codes' results
    # lies in training
    crossed = copy.deepcopy(module.flow)
    load_original_state_dict(crossed, net.state_dict())
    evaluation["original_weights_in_flowood"] = evaluate(net, crossed, loss_fn, data)["flowood"]
    if module.config.recompute_batchnorm:
        recompute_both(net, module.flow, data, module.config.recompute_batchnorm, batch, negative, seed)
        evaluation["recomputed"] = evaluate(net, module.flow, loss_fn, data)
    return {**curves, "init": init, "evaluation": evaluation, "flowood_set": flowood_set or {}}


def recompute_both(net: torch.nn.Module, flow: Any, data: dict[str, torch.Tensor], batches: int, batch: int,
                   negative: bool, seed: int) -> None:
    """Replace both models' BatchNorm running statistics with their cumulative average over the same ``batches``
    training batches (``batch`` FashionMNIST images, plus as many MNIST images with negative training) and the same
    dequantization noise, at the final weights: what ``flowood train --recompute_batchnorm`` does at the end of
    training (:class:`flowood.training.callbacks.RecomputeBatchNorm`), applied to both codes."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    drawn = []
    for _ in range(batches):
        x = data["train"][torch.randint(0, len(data["train"]), (batch,), generator=g)]
        if negative:
            x = torch.cat((x, data["ood"][torch.randint(0, len(data["ood"]), (batch,), generator=g)]))
        drawn.append(x)

    def run(forward: Any) -> Any:
        def run_batches() -> None:
            for i, x in enumerate(drawn):
                torch.manual_seed(2000 + i)  # the same noise for both
                forward(x)
        return run_batches

    recompute_running_statistics(net, run(net))
    recompute_running_statistics(flow, run(lambda x: flow.log_prob(x, validate=False)))


def evaluate(net: torch.nn.Module, flow: Any, loss_fn: Any, data: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Both models in evaluation mode (BatchNorm's running statistics, as each code evaluates) on the same test
    images and noise: mean FashionMNIST and MNIST bits/dim, and the AUROC of bits/dim (MNIST positive)."""
    net.eval(), flow.eval()
    per_dim, shift = 784 * math.log(2), 784 * math.log(255 / 256)
    out = {}
    with torch.no_grad():
        for name in ("original", "flowood"):
            bpd = []
            for x in (data["test"], data["ood_test"]):
                parts = []
                for i in range(0, len(x), 250):
                    torch.manual_seed(7 + i)
                    if name == "original":
                        loglik = -loss_fn(net(x[i:i + 250]), sldj=net.logdet(), mean=False) - shift
                    else:
                        loglik = flow.log_prob(x[i:i + 250], validate=False)
                    parts.append(-loglik.reshape(-1) / per_dim)
                bpd.append(torch.cat(parts))
            auroc = roc_auc_score([0] * len(bpd[0]) + [1] * len(bpd[1]), torch.cat(bpd).numpy())
            out[name] = [float(bpd[0].mean()), float(bpd[1].mean()), float(auroc)]
    return out


def summary(name: str, curves: dict[str, Any]) -> str:
    a, b = curves["original"], curves["flowood"]
    first = max(abs(x - y) for x, y in zip(a[:2], b[:2], strict=True))
    tail = slice(max(0, len(a) - 50), len(a))
    last = sum(abs(x - y) for x, y in zip(a[tail], b[tail], strict=True)) / len(a[tail])
    shown = [s for s in SHOWN_STEPS if s <= len(a)] + ([len(a)] if len(a) not in SHOWN_STEPS else [])
    path = ", ".join(f"{s}: {a[s - 1]:.3f} / {b[s - 1]:.3f}" for s in shown)
    (o_in, o_ood, o_auc), (f_in, f_ood, f_auc) = curves["evaluation"]["original"], curves["evaluation"]["flowood"]
    crossed = curves["evaluation"].get("original_weights_in_flowood")
    cross = "" if crossed is None else f" {crossed[0] - o_in:+.1e} / {crossed[2] - o_auc:+.1e} |"
    recomputed = curves["evaluation"].get("recomputed")
    if recomputed is not None:
        (r_in, r_ood, r_auc), (s_in, s_ood, s_auc) = recomputed["original"], recomputed["flowood"]
        cross += f" {r_in:.3f} / {s_in:.3f}, {r_ood:.2f} / {s_ood:.2f}, {r_auc:.3f} / {s_auc:.3f} |"
    mean, std, where = curves["init"]
    return (f"| {name} | {mean:.1f} / {std:.1f} (`{where}`) | {first:.1e} | {last:.3f} | {path} | {o_in:.3f} / "
            f"{f_in:.3f} | {o_ood:.2f} / {f_ood:.2f} | {o_auc:.3f} / {f_auc:.3f} |{cross}")


def across_seeds(curves: dict[str, dict[str, Any]]) -> list[str]:
    """Per config with two or more seeds: the original's and flowood's test bits/dim and AUROC, mean +- sd over the
    seeds, and the paired difference (flowood - original, seed by seed) with its standard error and a two-sided
    paired t-test's p-value; ``within 2 SE`` when the mean difference is at most twice its standard error."""
    from scipy import stats

    by_config: dict[str, list[dict[str, Any]]] = {}
    for key, curve in curves.items():
        name = key.rsplit(", seed ", 1)[0]
        by_config.setdefault(name, []).append(curve["evaluation"])
        if "recomputed" in curve["evaluation"]:
            by_config.setdefault(f"{name}, recomputed BatchNorm statistics", []).append(
                curve["evaluation"]["recomputed"])
    lines = []
    for name, evaluations in by_config.items():
        if len(evaluations) < 2:
            continue
        cells = []
        for index, label in ((0, "test bits/dim"), (2, "AUROC")):
            a = torch.tensor([e["original"][index] for e in evaluations], dtype=torch.float64)
            b = torch.tensor([e["flowood"][index] for e in evaluations], dtype=torch.float64)
            d = b - a
            se = float(d.std() / math.sqrt(len(d)))
            p = float(stats.ttest_rel(b.numpy(), a.numpy()).pvalue)
            cells.append(f"{label} {a.mean():.3f} +- {a.std():.3f} / {b.mean():.3f} +- {b.std():.3f}, difference "
                         f"{d.mean():+.4f} +- {se:.4f} (SE), p = {p:.2g}, "
                         f"{'within' if abs(float(d.mean())) <= 2 * se else 'outside'} 2 SE")
        lines.append(f"{name} ({len(evaluations)} seeds), original / flowood: " + "; ".join(cells))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=Path, required=True, help="a checkout of the original code")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="initial weights and batch order")
    parser.add_argument("--json", type=Path, default=None, help="write every loss curve here")
    parser.add_argument("--with", dest="earlier", type=Path, nargs="*", default=[], metavar="JSON",
                        help="curves of earlier runs (their --json) to combine with this run's in the summary over "
                             "seeds")
    parser.add_argument("--flowood_set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="flowood training options for this run (YAML values), e.g. channels_last=false: what "
                             "changes when one of flowood's own choices is switched; the original is untouched")
    args = parser.parse_args()
    flowood_set = {}
    for item in args.flowood_set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--flowood_set {item!r}: expected KEY=VALUE")
        flowood_set[key] = yaml.safe_load(value)
    if not (args.original / "flow_ssl").is_dir():
        raise SystemExit(f"{args.original} is not a checkout of the original code (no flow_ssl)")
    warnings.filterwarnings("ignore")  # Lightning's "self.log outside a trainer", torch's weight_norm deprecation
    original, utils = import_original(args.original.resolve()), original_utils(args.original.resolve())
    experiments = {e.name: e for e in load_experiments(scale="cpu", suite="all")}
    pick = torch.Generator().manual_seed(0)
    test, ood_test = images("fashionmnist", "test"), images("mnist", "test")
    data = {"train": images("fashionmnist"), "ood": images("mnist"),
            "test": test[torch.randperm(len(test), generator=pick)[:2000]],
            "ood_test": ood_test[torch.randperm(len(ood_test), generator=pick)[:2000]]}
    rows, curves = [], {}
    for name in args.configs:
        for seed in args.seeds:
            key = f"{name}, seed {seed}"
            curves[key] = lockstep(original, utils, experiments[name], data, args.steps, seed, flowood_set)
            rows.append(summary(key, curves[key]))
            print(rows[-1], flush=True)
    header = ("config", "initial weights: largest z of mean / std difference (pooled kind)",
              "training loss: max difference, steps 1-2", "mean difference, last 50 steps",
              "training bits/dim, original / flowood, at step ...", "test FashionMNIST bits/dim", "MNIST bits/dim",
              "AUROC", "the original's final weights scored by flowood: test bits/dim / AUROC minus the original's")
    align = "|---|---|---:|---:|---|---|---|---|---:|"
    if any("recomputed" in c["evaluation"] for c in curves.values()):
        header += ("recomputed BatchNorm statistics: test FashionMNIST bits/dim, MNIST bits/dim, AUROC",)
        align += "---|"
    print(f"\n| {' | '.join(header)} |\n{align}\n" + "\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(curves))
    combined = {k: v for path in args.earlier for k, v in json.loads(path.read_text()).items()}
    combined.update(curves)
    settings = {json.dumps(v.get("flowood_set", {}), sort_keys=True) for v in combined.values()}
    if len(settings) > 1:  # seeds of different flowood settings are not one sample
        raise SystemExit(f"--with: the runs combined used different --flowood_set ({', '.join(sorted(settings))}); "
                         "combine runs of one setting")
    for line in across_seeds(combined):
        print(line)


if __name__ == "__main__":
    main()
