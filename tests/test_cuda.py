"""CUDA paths: run where a GPU is present, skipped (with the reason) elsewhere."""

from __future__ import annotations

import pytest
import torch

from flowood.flows import build_flow

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("config", [
    dict(flow="RealNVP", input_shape=(1, 28, 28), num_blocks=1, num_mid_channels=16),
    dict(flow="Glow", input_shape=(3, 32, 32), num_coupling_layers_per_scale=2, num_blocks=1, num_mid_channels=16),
])
def test_log_prob_on_gpu_matches_cpu(config):
    flow = build_flow(config)
    x = torch.randint(0, 256, (16, *flow.input_shape), dtype=torch.uint8)
    flow.log_prob(x)  # ActNorm init on CPU
    flow.eval()
    cpu = flow.log_prob(x, noise="center")
    gpu = flow.cuda().log_prob(x.cuda(), noise="center").cpu()
    assert torch.allclose(gpu, cpu, rtol=1e-4, atol=1e-3)
    z = flow.sample(4)
    assert z.is_cuda and z.shape == (4, *flow.input_shape)


def test_training_on_gpu_through_lightning(tmp_path, fixtures_dir):
    from flowood.training import load_config, train
    cfg = load_config(None, dict(dataset=f"npz:{fixtures_dir}/fashionmnist-small.npz", out=str(tmp_path / "gpu"),
                                 num_blocks=1, num_mid_channels=8, max_steps=10, max_test_samples=64,
                                 accelerator="gpu", devices=1))
    result = train(cfg, progress=False)
    assert result.steps == 10 and result.test_bpd < 8.5


def test_evaluate_on_gpu_equals_cpu(tmp_path, fixtures_dir):
    from flowood.checkpoints import save_flow
    from flowood.evaluation import evaluate
    flow = build_flow(dict(flow="RealNVP", input_shape=(1, 28, 28), num_blocks=1, num_mid_channels=8))
    flow.log_prob(torch.rand(8, 1, 28, 28))
    path = save_flow(flow, tmp_path / "f.pt", {"dataset": f"npz:{fixtures_dir}/fashionmnist-small.npz"})
    a = evaluate(path, ["noise"], device="cpu", progress=False, max_samples=100)
    b = evaluate(path, ["noise"], device="cuda", progress=False, max_samples=100)
    for key in a.scores:
        assert torch.allclose(torch.tensor(a.scores[key]), torch.tensor(b.scores[key]), rtol=1e-4)


def test_every_score_on_gpu_equals_cpu(tmp_path, fixtures_dir):
    from flowood.checkpoints import save_flow
    from flowood.evaluation import evaluate
    flow = build_flow(dict(flow="Glow", input_shape=(1, 28, 28), num_coupling_layers_per_scale=2, num_blocks=1,
                           num_mid_channels=8))
    flow.log_prob(torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8))
    path = save_flow(flow, tmp_path / "f.pt", {"dataset": f"npz:{fixtures_dir}/fashionmnist-small.npz"})
    scores = ["likelihood", "complexity", "typicality", "latent_last_scale", "latent_early_scales"]
    a = evaluate(path, [f"npz:{fixtures_dir}/mnist-small.npz"], device="cpu", scores=scores, progress=False)
    b = evaluate(path, [f"npz:{fixtures_dir}/mnist-small.npz"], device="cuda", scores=scores, progress=False)
    for score in scores:
        for name in a.score_values[score]:
            assert torch.allclose(torch.tensor(a.score_values[score][name]), torch.tensor(b.score_values[score][name]),
                                  rtol=1e-4, atol=1e-4), score
    r = evaluate(path, ["noise"], device="cuda", scores=["likelihood_ratio"], background_steps=5, max_samples=50,
                 progress=False)
    assert 0.0 <= r.metrics.ood["noise"].scores["likelihood_ratio"].auroc <= 1.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_gpu_keeps_log_det_fp32_and_the_inverse_exact(precision):
    flow = build_flow(dict(flow="Glow", input_shape=(3, 32, 32), num_coupling_layers_per_scale=2, num_blocks=2,
                           num_mid_channels=32))
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    flow.log_prob(x)
    flow.cuda().eval()
    with torch.no_grad():
        full = flow.log_prob(x.cuda(), noise="center")
        mixed = flow.mixed_precision(precision).log_prob(x.cuda(), noise="center")
        z, log_det = flow(torch.rand(4, 3, 32, 32, device="cuda") * 0.9 + 0.05)
        back = flow.inverse(z)
    assert mixed.dtype == torch.float32 and log_det.dtype == torch.float32
    assert torch.allclose(mixed, full, rtol=2e-2)
    assert back.dtype == torch.float32


def test_training_on_gpu_with_bf16_mixed_precision(tmp_path, fixtures_dir):
    from flowood.training import load_config, train
    cfg = load_config(None, dict(dataset=f"npz:{fixtures_dir}/fashionmnist-small.npz", out=str(tmp_path / "bf16"),
                                 num_blocks=1, num_mid_channels=8, max_steps=10, max_test_samples=64,
                                 accelerator="gpu", devices=1, precision="bf16-mixed"))
    result = train(cfg, progress=False)
    assert result.steps == 10 and result.test_bpd < 8.5
