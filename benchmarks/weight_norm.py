"""How much of a training step weight normalisation takes, and what PyTorch's fused kernel would save.

Usage: python benchmarks/weight_norm.py [--repeats 200]

The demo's RealNVP (the original's ResNet st-networks, every convolution weight-normalised) in channels-last, as
`flowood train` runs it. Timed in one process, alternating, medians of 5 rounds:

* the weight of every weight-normalised convolution, ``g * v / ||v||`` computed as flowood does
  (:class:`flowood.flows.nets.WeightNormConv2d`), forward and backward;
* the same with ``torch._weight_norm`` (one fused kernel per convolution);
* one whole training step (forward, backward, Adam) of the flow on a batch of 64.

The share of the step that weight normalisation takes bounds what any faster implementation of it can gain.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowood.flows import build_flow
from flowood.flows.nets import WeightNormConv2d
from flowood.runtime import cpu_flags


def flowood_weight(conv: WeightNormConv2d) -> torch.Tensor:
    return conv.weight


def fused_weight(conv: WeightNormConv2d) -> torch.Tensor:
    return torch._weight_norm(conv.weight_v, conv.weight_g, 0)


def time_weights(convs: list[WeightNormConv2d], weight, repeats: int) -> float:
    """Milliseconds to compute every convolution's weight and back-propagate through it."""
    start = time.perf_counter()
    for _ in range(repeats):
        sum(weight(c).sum() for c in convs).backward()
    return (time.perf_counter() - start) / repeats * 1e3


def time_step(flow, opt, x: torch.Tensor, repeats: int) -> float:
    """Milliseconds per training step."""
    start = time.perf_counter()
    for _ in range(repeats):
        loss = flow.bits_per_dim(x, validate=False).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="weight computations per timing")
    args = parser.parse_args()
    flags = sorted(f for f in (cpu_flags() or ()) if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni"))
    print(f"torch {torch.__version__}; {torch.get_num_threads()} threads; CPU flags {', '.join(flags) or '?'}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    torch.manual_seed(0)
    flow = build_flow(dict(flow="RealNVP", num_blocks=1, num_mid_channels=16, input_shape=(1, 28, 28)))
    flow.optimize(channels_last=True).train()
    convs = [m for m in flow.modules() if isinstance(m, WeightNormConv2d)]
    for conv in convs:
        torch.testing.assert_close(fused_weight(conv), flowood_weight(conv))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    time_step(flow, opt, x, 3)  # warm-up
    rounds: dict[str, list[float]] = {"flowood": [], "fused": [], "step": []}
    for _ in range(5):
        rounds["flowood"].append(time_weights(convs, flowood_weight, args.repeats))
        rounds["fused"].append(time_weights(convs, fused_weight, args.repeats))
        rounds["step"].append(time_step(flow, opt, x, 10))
    ours, fused, step = (statistics.median(rounds[k]) for k in ("flowood", "fused", "step"))
    print(f"{len(convs)} weight-normalised convolutions; training step {step:.1f} ms")
    print(f"weight normalisation, forward + backward: flowood {ours:.2f} ms ({ours / step:.1%} of the step), "
          f"torch._weight_norm {fused:.2f} ms: it would save {(ours - fused) / step:.1%} of the step")


if __name__ == "__main__":
    main()
