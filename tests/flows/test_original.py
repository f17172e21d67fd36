"""The paper's networks (flowood.flows.original and every paper config): parameter counts equal the original code's,
and with the original's weights copied in, log-likelihoods equal the original's on the same inputs.

The reference values were produced by experiments/original_code/compare_with_original.py from the original code
(PolinaKirichenko/flows_ood @ 26a920a) and are recorded as facts here and in tests/fixtures/original_models.json.gz
(the original's parameter names and shapes, the inputs, its log-likelihoods); these tests do not need that code.
"""

from __future__ import annotations

import pytest
import torch
from builders import original_model_case, original_pattern_weights

from flowood.errors import ModelError
from flowood.flows import build_flow
from flowood.flows.original import load_original_state_dict, original_loglik_offset, original_state_dict
from flowood.reproduce.experiments import load_experiments
from flowood.training.config import TrainConfig

#: parameter counts of the original code's models built with the constructor arguments its training scripts pass
#: for each paper config (counted by experiments/original_code/compare_with_original.py)
ORIGINAL_PARAMETER_COUNTS = {
    "realnvp_fashionmnist": 14_707_336, "realnvp_mnist": 14_707_336, "glow_fashionmnist": 69_378_048,
    "realnvp_celeba": 87_859_080, "realnvp_cifar10": 87_859_080, "realnvp_svhn": 87_859_080,
    "glow_celeba": 208_932_480, "glow_cifar10": 208_932_480, "glow_svhn": 208_932_480,
    "horizontal_mask_fashionmnist": 3_809_344, "cycle_mask_fashionmnist": 3_809_344,
    "bottleneck_l10_fashionmnist": 4_822_568, "bottleneck_l50_fashionmnist": 5_601_208,
    "bottleneck_l100_fashionmnist": 6_574_508,
    "realnvp_imagenet64": 360_508_008, "glow_imagenet64": 279_841_280,
    "embeddings_fashionmnist": 923_648, "embeddings_efficientnet_cifar10": 3_076_608,
    "embeddings_efficientnet_celeba": 3_076_608,
    "negative_fashionmnist_mnist": 14_707_336, "negative_cifar10_svhn": 87_859_080,
    "uci_miniboone0": 837_184, "uci_miniboone1": 837_184, "uci_hepmass0": 658_080, "uci_hepmass1": 658_080,
}
#: paper configs whose model has no counterpart in the original code
FLOWOOD_ONLY = {"tabular_breastcancer": "MAF, flowood's own model"}


def test_every_paper_config_builds_the_original_network():
    experiments = load_experiments(scale="paper", suite="all")
    names = {exp.name for exp in experiments}
    assert names == set(ORIGINAL_PARAMETER_COUNTS) | set(FLOWOOD_ONLY), "a paper config without an expected count"
    for exp in experiments:
        if exp.name in FLOWOOD_ONLY:
            continue
        train = TrainConfig.from_dict(dict(exp.train))
        with torch.device("meta"):  # shapes only: the 360M-parameter ImageNet RealNVP costs nothing
            flow = build_flow(train.flow_config(exp.input_shape()))
        count = sum(p.numel() for p in flow.parameters())
        assert count == ORIGINAL_PARAMETER_COUNTS[exp.name], exp.name


CASES = ["realnvp_fashionmnist", "cycle_mask_fashionmnist", "horizontal_mask_fashionmnist",
         "bottleneck_l10_fashionmnist", "bottleneck_l50_fashionmnist", "bottleneck_l100_fashionmnist",
         "glow_fashionmnist", "tabular_miniboone", "small_realnvp_1x8x8", "small_realnvp_3x16x16",
         "small_realnvp_nobn_noskip", "small_resnet_ae_1x8x8", "small_convnet_1x8x8", "small_cycle_mask_1x8x8",
         "small_horizontal_mask_1x8x8", "small_realnvp_8_layers_1x8x8", "small_glow_highway_3x8x8",
         "small_glow_convnet_1x8x8", "small_tabular_5", "small_tabular_dropout_6"]


@pytest.mark.parametrize("name", CASES)
def test_log_likelihoods_equal_the_original_code(name):
    case = original_model_case(name)
    flow = load_original_state_dict(build_flow(case["flowood_config"]), original_pattern_weights(case)).eval()
    x = torch.tensor(case["x"], dtype=torch.uint8 if flow.discrete else torch.float32)
    with torch.no_grad():  # the original's log-likelihood is flowood's plus a constant (original_loglik_offset)
        ours = (flow.log_prob(x, noise="center") if flow.discrete else flow.log_prob(x)) + original_loglik_offset(flow)
    expected = torch.tensor(case["loglik"]["center" if flow.discrete else "none"])
    assert torch.allclose(ours, expected, rtol=0, atol=2e-3), (ours, expected)


def test_original_checkpoints_load_with_their_data_parallel_prefix():
    source = build_flow(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=2, num_hidden_units=8,
                        standardize=False)  # the original standardises outside its model
    state = {f"module.body.{i}.{k}": v for i, step in enumerate(source.steps) for k, v in step.state_dict().items()}
    target = build_flow(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=2, num_hidden_units=8)
    load_original_state_dict(target, {"net": state, "epoch": 80})
    x = torch.randn(5, 4)
    assert torch.equal(target.log_prob(x), source.log_prob(x))
    assert set(original_state_dict({"net": state})) == {k[len("module."):] for k in state}


def test_a_different_architecture_is_refused_by_name():
    source = build_flow(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=2, num_hidden_units=8,
                        standardize=False)
    state = {f"body.{i}.{k}": v for i, step in enumerate(source.steps) for k, v in step.state_dict().items()}
    with pytest.raises(ModelError, match="2 coupling.*3 coupling"):
        load_original_state_dict(build_flow(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=3,
                                            num_hidden_units=8), state)
    with pytest.raises(ModelError, match="shape"):
        load_original_state_dict(build_flow(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=2,
                                            num_hidden_units=16), state)
    glow = dict(flow="Glow", input_shape=(1, 4, 4), num_scales=1, num_coupling_layers_per_scale=1,
                num_mid_channels=4)
    glow_state = {f"body.{i}.{k}": v for i, step in enumerate(build_flow(glow).steps) if step.state_dict()
                  for k, v in step.state_dict().items()}
    glow_state = {k.replace("log_scale", "logs"): v for k, v in glow_state.items() if "initialized" not in k}
    with pytest.raises(ModelError, match="invconv='plain'"):
        load_original_state_dict(build_flow(glow, invconv="lu"), glow_state)
    with pytest.raises(ModelError, match="original code's checkpoint"):
        load_original_state_dict(build_flow(glow), {"net": "not a state dict"})
