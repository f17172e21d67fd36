"""Training and scoring throughput of flowood's flows on one device (flowood alone; peers: compare.py).

Usage: python benchmarks/throughput.py [--device cpu|cuda] [--steps 20] [--batch 64]

Prints, for RealNVP and Glow on 1x28x28 and 3x32x32 batches: training steps/s and images/s
(forward + backward + Adam step), scoring images/s (log_prob under torch.inference_mode), and
peak GPU memory. benchmarks/compare.py measures the same against normflows, nflows and zuko.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from flowood.flows import build_flow

MODELS = {
    "realnvp-small": dict(flow="RealNVP", num_blocks=1, num_mid_channels=16),
    "realnvp-paper-fmnist": dict(flow="RealNVP", num_blocks=6, num_mid_channels=64),
    "glow-small": dict(flow="Glow", num_coupling_layers_per_scale=8, num_blocks=2, num_mid_channels=64,
                       st_type="glow_convnet"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, shape: tuple[int, int, int], device: torch.device, steps: int, batch: int) -> dict:
    flow = build_flow(dict(MODELS[name], input_shape=shape)).to(device)
    x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    flow.train()
    for _ in range(3):
        loss = flow.bits_per_dim(x, validate=False).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        loss = flow.bits_per_dim(x, validate=False).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    train_s = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    flow.eval()
    big = torch.randint(0, 256, (batch * 8, *shape), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        flow.log_prob(big, validate=False)
        sync(device)
        t = time.perf_counter()
        reps = max(steps // 4, 2)
        for _ in range(reps):
            flow.log_prob(big, validate=False)
        sync(device)
        score_s = (time.perf_counter() - t) / reps
    return {"model": name, "shape": "x".join(map(str, shape)), "params": sum(p.numel() for p in flow.parameters()),
            "train_steps_s": 1 / train_s, "train_img_s": batch / train_s, "score_img_s": big.shape[0] / score_s,
            "peak_mib": peak, "final_bpd": float(loss.detach())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}")
    print("| model | input | params | train steps/s | train img/s | score img/s | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model in MODELS:
        for shape in ((1, 28, 28), (3, 32, 32)):
            r = bench(model, shape, device, args.steps, args.batch)
            print(f"| {r['model']} | {r['shape']} | {r['params']:,} | {r['train_steps_s']:.2f} | "
                  f"{r['train_img_s']:.0f} | {r['score_img_s']:.0f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
