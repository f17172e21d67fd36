"""The flow model (flowood.flows.model): likelihood, bits/dim, sampling and traces; inputs of the wrong shape,
range or dtype are refused clearly; passes read no tensor values on the host; the public API other modules use
(dequantize, log_prob_parts, compile_density)."""

from __future__ import annotations

import math

import pytest
import torch
from builders import IMAGE_CONFIGS, TINY, ready_flow, tiny_realnvp

from flowood.errors import InputError
from flowood.flows import RealNVP, RealNVPTabular
from flowood.flows.model import Split
from flowood.flows.preprocessing import DEQUANTIZATION_LOG_DET


@pytest.mark.parametrize("config", [
    dict(flow="Glow", input_shape=(1, 8, 8), num_scales=2, num_coupling_layers_per_scale=2, num_blocks=1,
         num_mid_channels=4),
    dict(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=4),
    dict(flow="MAF", input_shape=(6,), num_hidden_units=8),
], ids=["glow", "realnvp", "maf"])
def test_flow_passes_read_no_tensor_values_on_the_host_once_initialised(config):
    """A value read from a tensor (``bool(t)``, ``.item()``) makes a GPU wait for the host; once ActNorm is
    initialised, density passes (forward and backward) and sampling read none."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from flowood.flows import build_flow

    reads = []

    class RecordReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                reads.append(func)
            return func(*args, **(kwargs or {}))

    flow = build_flow(config)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8) if flow.discrete else torch.randn(4, 6)
    flow.log_prob(x)  # initialises ActNorm
    with RecordReads():
        flow.log_prob(x, validate=False).sum().backward()
        with torch.no_grad():
            flow.sample(2)
    assert reads == []


def test_log_prob_is_prior_plus_log_det_plus_dequantization():
    flow = ready_flow(IMAGE_CONFIGS["glow-channel"])
    k = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    x = k.float() / 255
    xc = (k.float() + 0.5) / 256
    z, log_det = flow(xc)
    prior = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    expected = prior + log_det + 16 * DEQUANTIZATION_LOG_DET
    assert torch.allclose(flow.log_prob(x, noise="center"), expected, atol=1e-4)
    assert torch.allclose(flow.log_prob(k, noise="center"), expected, atol=1e-4)  # uint8 accepted
    bpd = flow.bits_per_dim(x, noise="center")
    assert torch.allclose(bpd, -expected / (16 * math.log(2)), atol=1e-5)


def test_untrained_realnvp_is_near_8_bits_per_dim():
    # identity couplings + logit on uniform noise: about 8 bits/dim, the sanity check of the literature
    flow = tiny_realnvp().eval()
    bpd = flow.bits_per_dim(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)).mean()
    assert 7.0 < float(bpd) < 9.5


def test_sample_shapes_and_range():
    flow = ready_flow(IMAGE_CONFIGS["realnvp-checkerboard-2scales"])
    for t in (0.5, 1.0):
        s = flow.sample(6, temperature=t)
        assert s.shape == (6, 1, 4, 4)
        assert s.min() >= 0 and s.max() <= 1
        assert torch.allclose(s * 255, torch.round(s * 255), atol=1e-4)  # on the 8-bit grid
    g = torch.Generator().manual_seed(1)
    a = flow.sample(2, generator=g)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(a, flow.sample(2, generator=g))
    tab = ready_flow(dict(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=2, num_hidden_units=8))
    assert tab.sample(3).shape == (3, 4)


def test_trace_records_every_step_and_latents_per_scale():
    flow = ready_flow(IMAGE_CONFIGS["realnvp-checkerboard-2scales"])
    x = torch.rand(2, 1, 4, 4)
    tr = flow.trace(x)
    names = [r.name for r in tr.records]
    assert names[0] == "logit" and "scale0.split" in names
    assert len(tr.records) == len(flow.steps) + 1
    couplings = [r for r in tr.records if r.kind == "coupling"]
    assert len(couplings) == len(flow.coupling_layers()) == 3 + 3 + 4
    for r in couplings:
        assert r.extras["s"].shape == r.extras["input"].shape == r.output.shape
    assert set(tr.latents) == {"scale0", "scale1"}
    assert tr.latents["scale0"].shape == (2, 2, 2, 2) and tr.latents["scale1"].shape == (2, 2, 2, 2)
    assert torch.allclose(tr.log_prob, flow.log_prob(x, noise="center"), atol=1e-5)
    total = sum(r.log_det for r in tr.records)
    assert torch.allclose(total, tr.log_det, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    flow = RealNVP((1, 4, 4), **TINY).eval()
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\)"):
        flow.log_prob(torch.rand(2, 3, 4, 4))
    x = torch.rand(2, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow.log_prob(torch.rand(2, 1, 4, 4) * 255)
    with pytest.raises(TypeError):
        flow.log_prob([[0.0]])


def test_api_inputs_of_another_dtype_or_outside_the_unit_interval_raise_value_errors():
    flow = tiny_realnvp(num_scales=1)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="expected torch.float32 inputs .* got torch.float64"):
        flow.log_prob(x.double())  # used to be a raw "mixed dtype" RuntimeError from a convolution
    with pytest.raises(ValueError, match="open interval \\(0, 1\\)"):
        flow(x * 3 - 1)  # used to return NaN silently
    with pytest.raises(ValueError, match="score 8-bit images with log_prob"):
        flow(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8))
    z, log_det = flow(x.clamp(0.01, 0.99))
    assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
    tabular = RealNVPTabular(4, num_coupling_layers=2, num_hidden_units=8)
    with pytest.raises(ValueError, match="float64"):
        tabular.log_prob(torch.randn(3, 4, dtype=torch.float64))
    assert tabular.double().log_prob(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64


def test_flow_api_rejects_wrong_shape_range_dtype_and_nan():
    flow = tiny_realnvp().eval()
    for bad, match in [(torch.rand(2, 1, 4, 4), "adapt_images"), (torch.rand(2, 1, 8, 8) * 3, r"\[0, 1\]"),
                       (torch.full((2, 1, 8, 8), float("nan")), "NaN"), (torch.zeros(2, 1, 8, 8, dtype=torch.int32),
                                                                         "uint8|float")]:
        with pytest.raises(ValueError, match=match):
            flow.log_prob(bad)


def test_a_split_keeps_the_first_half_of_the_channels_and_factors_out_the_second():
    """As the original's keepChannels: the scale's last channel coupling transformed the first half, which the
    next scale goes on transforming; the second half leaves as this scale's latents."""
    h = torch.arange(8.0).view(1, 4, 1, 2)
    factored, kept = Split.factor_out(h)
    assert kept[0, :, 0, 0].tolist() == [0.0, 2.0] and factored[0, :, 0, 0].tolist() == [4.0, 6.0]
    assert torch.equal(Split.join(factored, kept), h)
    flow = ready_flow(IMAGE_CONFIGS["realnvp-checkerboard-2scales"])
    x = torch.rand(2, 1, 4, 4) * 0.9 + 0.05
    scale1, _, (scale0,) = flow._run(x)
    deepest, (factored0,) = flow._disassemble(flow(x)[0])
    assert torch.equal(factored0, scale0) and torch.equal(deepest, scale1)


@pytest.mark.parametrize("name", ["realnvp-checkerboard-2scales", "realnvp-3scales-rgb", "realnvp-horizontal"])
def test_scale_dims_and_log_prior_by_scale_follow_the_latents_of_each_scale(name):
    flow = ready_flow(IMAGE_CONFIGS[name])
    x = torch.randint(0, 256, (3, *flow.input_shape), dtype=torch.uint8)
    latents = flow.latents_by_scale(x, generator=torch.Generator().manual_seed(0))
    assert flow.scale_dims == [p[0].numel() for p in latents] and sum(flow.scale_dims) == flow.num_dims
    by_scale = flow.log_prior_by_scale(x, generator=torch.Generator().manual_seed(0))
    assert by_scale.shape == (3, flow.num_scales)
    by_hand = torch.stack([(-0.5 * p.flatten(1) ** 2 - 0.5 * math.log(2 * math.pi)).sum(1) for p in latents], 1)
    torch.testing.assert_close(by_scale, by_hand)


def test_dequantize_gives_the_continuous_inputs_log_prob_feeds_the_flow():
    flow = ready_flow(IMAGE_CONFIGS["glow-channel"])
    k = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(flow.dequantize(k, noise="center"), (k.float() + 0.5) / 256)
    torch.testing.assert_close(flow.dequantize(k.float() / 255, noise="center"), (k.float() + 0.5) / 256)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    z, log_det = flow(flow.dequantize(k, generator=g1))  # seeded uniform noise, as log_prob draws it
    expected = flow.prior.log_prob(z) + log_det + flow.num_dims * DEQUANTIZATION_LOG_DET
    torch.testing.assert_close(flow.log_prob(k, generator=g2), expected)
    vectors = RealNVPTabular(3, num_coupling_layers=2, num_hidden_units=4)
    x = torch.randn(2, 3)
    assert vectors.dequantize(x) is x  # continuous already
    assert vectors.dequantize(torch.tensor([[1, 2, 3]], dtype=torch.uint8)).dtype == torch.float32


@pytest.mark.parametrize("name", ["glow-channel", "realnvp-checkerboard-2scales", "realnvp-3scales-rgb"])
def test_log_prob_parts_are_the_terms_log_prob_sums(name):
    flow = ready_flow(IMAGE_CONFIGS[name])
    x = torch.randint(0, 256, (4, *flow.input_shape), dtype=torch.uint8)
    with torch.no_grad():
        parts = flow.log_prob_parts(flow.dequantize(x, noise="center"))
        assert parts.log_det.shape == (4,) and parts.scale_log_prior.shape == (4, flow.num_scales)
        torch.testing.assert_close(parts.log_prob, flow.log_prob(x, noise="center"), rtol=1e-5, atol=1e-3)
        total = parts.scale_log_prior.sum(1) + parts.log_det + flow.num_dims * DEQUANTIZATION_LOG_DET
        torch.testing.assert_close(parts.log_prob, total)
        torch.testing.assert_close(parts.scale_log_prior, flow.log_prior_by_scale(x, noise="center"))
    log_prob, log_det, scale_log_prior = parts  # a named tuple
    assert log_prob is parts.log_prob and scale_log_prior is parts.scale_log_prior
    with pytest.raises(InputError, match=r"log_prob_parts\(\) maps continuous inputs"):
        flow.log_prob_parts(x)
    with pytest.raises(InputError, match=r"log_prob_parts\(\) of an image model takes dequantized images"):
        flow.log_prob_parts(torch.zeros(2, *flow.input_shape))  # an 8-bit image's 0, not dequantized


def test_log_prob_parts_of_a_vector_flow_have_no_bin_width():
    flow = RealNVPTabular(4, num_coupling_layers=2, num_hidden_units=8).eval()
    x = torch.randn(6, 4) * 3 + 1
    with torch.no_grad():
        flow.log_prob(x)  # the standardisation from these data
        parts = flow.log_prob_parts(x)
        torch.testing.assert_close(parts.log_prob, flow.log_prob(x))
        torch.testing.assert_close(parts.log_prob, parts.scale_log_prior.sum(1) + parts.log_det)


def test_the_compiled_density_is_switched_on_and_off_in_public():
    flow = ready_flow(IMAGE_CONFIGS["glow-channel"])
    assert not flow.density_compiled
    assert flow.compile_density() is flow and flow.density_compiled
    assert not flow.compile_density(False).density_compiled
    assert flow.optimize(compile=True).density_compiled and not flow.optimize().density_compiled
