"""flowood's training procedure is the original code's: from the same weights, batches and noise, ``FlowModule``'s
training steps give the original's losses (and, for a model without BatchNorm, its evaluation the original's
log-likelihoods).

The reference values were produced by experiments/original_code/record_training_steps.py from the original code
(PolinaKirichenko/flows_ood @ 26a920a) and are recorded in tests/fixtures/original_training.json.gz: a small
RealNVP (weight decay on the weight-normalisation scales only, BatchNorm in its st-networks), a small Glow (weight
decay on every parameter, ActNorm initialised from the first batch) and negative training with the RealNVP, each
three steps of Adam with a large weight decay and clipping that engages, so that each part of the procedure shows in
the losses. These tests do not need the original's code.
"""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from builders import FIXTURES, original_model_case, original_pattern_weights

from flowood.flows.layers import ActNorm
from flowood.flows.original import load_original_state_dict
from flowood.training import FlowModule

pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*")

#: the two codes order some sums differently, so their losses agree to float rounding (3e-5 nats per image of losses
#: near 350 where recorded); what a difference in procedure does is larger by 100x or more
#: (test_each_part_of_the_procedure_shows_in_the_losses)
LOSS_TOLERANCE = 1e-3
#: the log-likelihoods in evaluation mode are compared for the model without BatchNorm (Glow): a BatchNorm's running
#: mean follows the bias of the convolution that feeds it, whose gradient is rounding only (zero in exact
#: arithmetic), and Adam moves such a bias by about +-lr whatever that rounding is, differently in each code; after
#: three steps at lr 1e-2 that moves the RealNVP's evaluated log-likelihoods by up to 0.24 nats between two ways of
#: computing the same weight normalisation, while its training losses agree to 3e-5
EVAL_TOLERANCE = 1e-3


def recorded(name: str) -> dict:
    with gzip.open(FIXTURES / "original_training.json.gz", "rt") as f:
        return json.load(f)["cases"][name]


def train_as_recorded(case: dict, **changes) -> tuple[list[float], torch.Tensor]:
    """flowood's ``FlowModule`` trained on the recorded batches from the recorded weights, as Lightning drives it
    (``training_step``, ``configure_gradient_clipping``, the optimizer of ``configure_optimizers``), with the global
    generator seeded before each step as the recording did; its training losses (nats per image) and, after the
    last step, its log-likelihoods in evaluation mode of the first batch with the noise at the bin centres.
    ``changes``: training options changed from the recorded ones."""
    model = original_model_case(case["model"])
    architecture = dict(model["flowood_config"])
    input_shape = tuple(architecture.pop("input_shape"))
    train = dict(architecture=architecture, optim="Adam", batch_size=len(case["x"][0]), **case["train"])
    pool = torch.tensor(case["ood_pool"], dtype=torch.uint8) if "ood_pool" in case else None
    if pool is not None:
        train["ood_dataset"] = "mnist"  # a name only: the module is given its OOD samples here
    module = FlowModule({**train, **changes}, input_shape, ood_data=pool)
    load_original_state_dict(module.flow, original_pattern_weights(model))
    for layer in module.flow.modules():  # as in the recording, ActNorm initialises from the first batch
        if isinstance(layer, ActNorm):
            layer.load_state_dict({**layer.state_dict(), "initialized": torch.tensor(False)})
    opt = module.configure_optimizers()
    x = torch.tensor(case["x"], dtype=torch.uint8)
    module.train()
    losses = []
    for step in range(len(x)):
        torch.manual_seed(1000 + step)
        opt.zero_grad()
        loss = module.training_step((x[step], None), step)
        loss.backward()
        module.configure_gradient_clipping(opt, module.config.max_grad_norm)
        opt.step()
        losses.append(loss.item())
    module.eval()
    with torch.no_grad():
        loglik = module.flow.log_prob(x[0], noise="center")
    return losses, loglik


@pytest.mark.parametrize("name", ["realnvp", "glow", "realnvp_negative"])
def test_training_steps_give_the_original_codes_losses(name):
    case = recorded(name)
    losses, loglik = train_as_recorded(case)
    expected = torch.tensor(case["losses"], dtype=torch.float64)
    assert torch.allclose(torch.tensor(losses, dtype=torch.float64), expected, rtol=0, atol=LOSS_TOLERANCE), \
        (losses, case["losses"])
    if name == "glow":
        assert torch.allclose(loglik.double(), torch.tensor(case["eval_loglik_centre"], dtype=torch.float64), rtol=0,
                              atol=EVAL_TOLERANCE), (loglik, case["eval_loglik_centre"])


def largest_difference(case: dict, **changes) -> float:
    losses, _ = train_as_recorded(case, **changes)
    return max(abs(a - b) for a, b in zip(losses, case["losses"], strict=True))


def test_each_part_of_the_procedure_shows_in_the_losses(monkeypatch):
    """The recorded steps tell a different procedure apart: weight decay on every parameter of the RealNVP (the
    original decays only its ``weight_g``), no weight decay, no clipping, clipping all parameters together rather
    than per group, and negative training's threshold in flowood's own convention instead of the original's."""
    realnvp, negative = recorded("realnvp"), recorded("realnvp_negative")
    from flowood.training import module as module_file
    assert largest_difference(realnvp, weight_decay=0.0) > 5 * LOSS_TOLERANCE
    assert largest_difference(negative, max_grad_norm=1e9) > 5 * LOSS_TOLERANCE
    with monkeypatch.context() as m:
        m.setattr(module_file, "weight_decay_groups", lambda flow, wd: [{"params": list(flow.parameters()),
                                                                         "weight_decay": wd}])
        assert largest_difference(realnvp) > 5 * LOSS_TOLERANCE
    with monkeypatch.context() as m:
        m.setattr(FlowModule, "configure_gradient_clipping", lambda self, opt, clip=None, algorithm=None:
                  torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip))
        assert largest_difference(realnvp) > 5 * LOSS_TOLERANCE
    with monkeypatch.context() as m:
        m.setattr(FlowModule, "negative_threshold", property(lambda self: self.config.negative_val))
        assert largest_difference(negative) > 5 * LOSS_TOLERANCE


def test_negative_val_is_in_the_original_codes_convention():
    """The recorded threshold lies 0.125 nats above one OOD sample's log-likelihood in the original's convention,
    closer than the conventions' difference ``D log(255/256)`` (0.25 nats for 64 dimensions): flowood's
    threshold on its own log-likelihoods is ``negative_val - D log(255/256)``."""
    case = recorded("realnvp_negative")
    model = original_model_case(case["model"])
    architecture = dict(model["flowood_config"])
    module = FlowModule(dict(architecture={k: v for k, v in architecture.items() if k != "input_shape"},
                             negative_val=case["train"]["negative_val"], ood_dataset="mnist"),
                        tuple(architecture["input_shape"]))
    assert module.negative_threshold == pytest.approx(case["train"]["negative_val"] - 64 * math.log(255 / 256))
    assert case["closest_to_threshold"] < abs(64 * math.log(255 / 256))
