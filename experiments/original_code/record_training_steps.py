"""Record the original code's first training steps on small models, as facts for flowood's tests.

``train_side_by_side.py`` shows on the paper's configs that flowood's training procedure is the original's: from the
same weights, batches and noise, the first losses agree to float rounding. That needs the original's checkout. This
script records the same kind of evidence, on models small enough for a unit test, in
``tests/fixtures/original_training.json.gz``; ``tests/training/test_original_training.py`` then trains flowood's
``FlowModule`` on the recorded batches and checks its losses (and, for the Glow, its evaluation) against the
original's without the checkout.

Each case starts from the deterministic weights of ``compare_with_original.py``'s small models (parameter ``k`` is
``amp * sin(0.37 i + k)``, BatchNorm statistics as initialised, ActNorm initialised from the first batch) and runs
``STEPS`` steps of the original's procedure: its ``FlowLoss`` (for negative training the loss of its
``train_unsup_ood_negative.py``), its optimizer set-up (``utils.get_param_groups`` with weight decay on the
weight-normalisation scales for RealNVP, on every parameter for Glow), Adam, and its per-group clipping
(``utils.clip_grad_norm``). The settings are chosen so each part of the procedure shows in the losses: a large
weight decay, clipping that engages, and for negative training a threshold between the OOD samples'
log-likelihoods, 0.125 nats from one of them (closer than the two codes' conventions differ, ``D log(255/256)``).
The global generator is seeded before each step, and the OOD batch drawn from a pool with it, as flowood's
``FlowModule`` draws it. Recorded per case: the settings, the batches, the training loss of every step (nats per
image, in flowood's convention), and the log-likelihoods in evaluation mode (BatchNorm's running statistics) of
the first batch with the noise at the bin centres after the last step::

    .venv/bin/python experiments/original_code/record_training_steps.py --original /path/to/flows_ood
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_with_original import CASES as MODELS
from compare_with_original import import_original, original_loglik, patterned_original_model
from train_side_by_side import original_loss, original_optimizer, original_utils

from flowood.flows import build_flow
from flowood.flows.original import original_loglik_offset

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "original_training.json.gz"
STEPS, BATCH, OOD_POOL = 3, 8, 32
#: case -> the small model of compare_with_original.py and the training settings (flowood's option names)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "realnvp": ("small_realnvp_1x8x8", dict(lr=1e-2, weight_decay=0.5, max_grad_norm=5.0)),
    "glow": ("small_glow_convnet_1x8x8", dict(lr=1e-2, weight_decay=0.5, max_grad_norm=5.0)),
    "realnvp_negative": ("small_realnvp_1x8x8", dict(lr=1e-2, weight_decay=0.5, max_grad_norm=5.0)),
}


def batches(shape: tuple[int, ...], negative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``STEPS`` in-distribution batches (bright images) and, for negative training, a pool of dark OOD images."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(96, 256, (STEPS, BATCH, *shape), dtype=torch.uint8, generator=g)
    pool = torch.randint(0, 96, (OOD_POOL, *shape), dtype=torch.uint8, generator=g) if negative else None
    return x, pool


def ood_batch(pool: torch.Tensor) -> torch.Tensor:
    """The OOD batch as ``FlowModule`` draws it: ``BATCH`` indices from the global generator."""
    return pool[torch.randint(0, len(pool), (BATCH,))]


def ood_logliks(net: torch.nn.Module, loss_fn: Any, x: torch.Tensor, pool: torch.Tensor, step: int) -> torch.Tensor:
    """The OOD samples' log-likelihoods (original's convention) in training step ``step`` at the current weights: the
    same batch and noise as the step; the model's BatchNorm statistics are put back afterwards."""
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(1000 + step)
    x_ood = ood_batch(pool).float() / 255
    with torch.no_grad():
        loglik = -loss_fn(net(torch.cat((x[step].float() / 255, x_ood))), sldj=net.logdet(), mean=False)[BATCH:]
    net.load_state_dict(kept)
    return loglik


def run_case(original: Any, utils: Any, model_name: str, settings: dict[str, Any], negative: bool
             ) -> dict[str, Any]:
    options, amp = MODELS[model_name]
    flow = build_flow(options)
    cfg = flow.config
    net, _ = patterned_original_model(original, cfg, amp)
    shape = tuple(cfg["input_shape"])
    d = math.prod(shape)
    x, pool = batches(shape, negative)
    opt = original_optimizer(utils, net, cfg["flow"], "Adam", settings["lr"], settings["weight_decay"])
    prior = torch.distributions.MultivariateNormal(torch.zeros(d), torch.eye(d))
    loss_fn = original.FlowLoss(prior)
    record = {"model": model_name, "train": dict(settings), "x": x.tolist(), "losses": []}
    net.train()
    if negative:  # between the first step's OOD samples, 0.125 nats above the median one
        record["train"]["negative_val"] = float(ood_logliks(net, loss_fn, x, pool, 0).median()) + 0.125
        record["ood_pool"] = pool.tolist()
    closest = math.inf
    for step in range(STEPS):
        if negative:
            loglik = ood_logliks(net, loss_fn, x, pool, step)
            closest = min(closest, float((loglik - record["train"]["negative_val"]).abs().min()))
        torch.manual_seed(1000 + step)
        x_ood = ood_batch(pool).float() / 255 if negative else None
        opt.zero_grad()
        loss, shift = original_loss(net, loss_fn, x[step].float() / 255, x_ood,
                                    record["train"].get("negative_val", 0.0))
        loss.backward()
        utils.clip_grad_norm(opt, settings["max_grad_norm"])
        opt.step()
        record["losses"].append(float(loss) + shift)
    net.eval()
    centre = torch.full(x[0].shape, 0.5)
    loglik, _ = original_loglik(net, x[0], centre)
    record["eval_loglik_centre"] = (loglik - original_loglik_offset(flow)).tolist()  # flowood's convention
    if negative:
        record["closest_to_threshold"] = closest
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="checkout of PolinaKirichenko/flows_ood")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    if not (args.original / "flow_ssl").is_dir():
        raise SystemExit(f"{args.original} is not a checkout of the original code (no flow_ssl)")
    warnings.filterwarnings("ignore")  # torch's weight_norm deprecation
    original, utils = import_original(args.original.resolve()), original_utils(args.original.resolve())
    cases = {}
    for name, (model_name, settings) in CASES.items():
        cases[name] = run_case(original, utils, model_name, settings, name.endswith("negative"))
        extra = (f", negative_val {cases[name]['train']['negative_val']:.3f}, closest OOD sample "
                 f"{cases[name]['closest_to_threshold']:.3f} nats from it") if "closest_to_threshold" in cases[name] \
            else ""
        print(f"{name}: losses " + ", ".join(f"{v:.4f}" for v in cases[name]["losses"]) + extra)
    with gzip.open(args.out, "wt") as f:
        json.dump({"source": "PolinaKirichenko/flows_ood @ 26a920a", "steps": STEPS, "cases": cases}, f)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
