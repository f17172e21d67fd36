"""Does bf16 training keep bits/dim? flowood's `flowood train` in fp32 and with bf16 st-networks, same seeds.

Usage: python benchmarks/training_precision.py [--seeds 3] [--cases demo bottleneck glow] [--steps N] [--compile]

Each case is trained by the real command (`flowood train`, Lightning, channels-last; one process per run, all
threads of the machine) for a fixed number of steps, once per seed and precision, in rounds (seed 0 fp32, seed
0 bf16, seed 1 fp32, ...) so that drift of the machine hits both alike. Each run's final model is then scored in
fp32 on the same held-out FashionMNIST test images, so the two precisions are compared as models, not as
arithmetic. Printed per case: wall-clock seconds of the run and training steps/s (from the run's own log of step
times), test bits/dim per seed, the paired difference bf16 - fp32 with its standard error, and the fp32 runs'
spread over seeds, the noise a difference is judged against.

With ``--compile`` each seed also trains in bf16 with ``--compile`` (torch.compile), to weigh what compiling saves
per step against what it costs at the start of a run of that length.

`flowood train --precision auto` (the default) trains in bf16 on a CPU with native BF16 (AVX-512 BF16 or AMX);
the script prints the CPU's flags and refuses to run where bf16 would only be emulated, since its timings would
say nothing about the default there.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flowood.runtime import NATIVE_BF16_FLAGS, cpu_flags, native_bf16

#: the cases: flags of `flowood train` beyond the seed, precision and steps; and the default step count.
CASES = {
    # the demo (`make demo`): the paper's RealNVP with weight-normalised ResNet st-networks, small
    "demo": (["--config", "demo"], 300),
    # the bottleneck st-network of the paper's Section 7 (l = 10) at `flowood reproduce`'s cpu scale
    "bottleneck": (["--dataset", "fashionmnist", "--flow", "RealNVP", "--num_scales", "2", "--num_blocks", "1",
                    "--num_mid_channels", "16", "--st_type", "autoencoder", "--latent_dim", "10", "--lr", "1e-3",
                    "--batch_size", "64", "--max_test_samples", "2000"], 150),
    # Glow at `flowood reproduce`'s cpu scale (03_glow_fashionmnist)
    "glow": (["--dataset", "fashionmnist", "--flow", "Glow", "--num_scales", "2", "--num_coupling_layers_per_scale",
              "4", "--st_type", "convnet", "--num_blocks", "1", "--num_mid_channels", "32", "--lr", "1e-3",
              "--batch_size", "64", "--max_test_samples", "2000"], 300),
}
TEST_IMAGES = 2000


def train_run(case: str, seed: int, precision: str, steps: int, out: Path, compile: bool = False) -> dict:
    """One `flowood train` run: its summary and the wall-clock seconds of the whole command."""
    flags, _ = CASES[case]
    flags = [*flags, "--compile"] if compile else flags
    cmd = [sys.executable, "-m", "flowood.cli.main", "train", *flags, "--seed", str(seed), "--precision", precision,
           "--max_steps", str(steps), "--max_minutes", "60", "--out", str(out), "--no_progress", "--loggers", "csv",
           "--samples_every_n_epochs", "0", "--checkpoint_every_minutes", "0"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{case} seed {seed} {precision} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    if summary["steps"] != steps or summary["precision"] != precision:
        raise SystemExit(f"{case} seed {seed}: ran {summary['steps']} steps at {summary['precision']}, not {steps} "
                         f"at {precision}")
    return {"summary": summary, "wall_s": wall}


def score_fp32(checkpoint: Path, images: torch.Tensor) -> float:
    """Mean bits/dim of ``images`` (uint8) under the checkpoint's flow in fp32 (eval mode, centred dequantization)."""
    from flowood.checkpoints import load_flow

    flow = load_flow(checkpoint).flow.eval().mixed_precision(None)
    with torch.inference_mode():
        bpd = torch.cat([flow.bits_per_dim(batch, noise="center") for batch in images.split(500)])
    return float(bpd.mean())


def summarise(case: str, runs: dict[tuple[int, str], dict], seeds: list[int]) -> str:
    """One case's lines: per seed, then the paired difference against the fp32 runs' spread."""
    lines = [f"{case}: {runs[(seeds[0], 'fp32')]['summary']['steps']} steps, {len(seeds)} seeds"]
    for seed in seeds:
        a, b = runs[(seed, "fp32")], runs[(seed, "bf16")]
        lines.append(f"  seed {seed}: fp32 {a['bpd']:.4f} ({a['wall_s']:.0f} s)   bf16 {b['bpd']:.4f} "
                     f"({b['wall_s']:.0f} s)   bf16 - fp32 {b['bpd'] - a['bpd']:+.4f}")
    fp32 = np.array([runs[(s, "fp32")]["bpd"] for s in seeds])
    bf16 = np.array([runs[(s, "bf16")]["bpd"] for s in seeds])
    diff = bf16 - fp32
    sd = float(fp32.std(ddof=1)) if len(seeds) > 1 else math.nan
    se = float(diff.std(ddof=1) / math.sqrt(len(seeds))) if len(seeds) > 1 else math.nan
    wall32 = np.median([runs[(s, "fp32")]["wall_s"] for s in seeds])
    wall16 = np.median([runs[(s, "bf16")]["wall_s"] for s in seeds])
    within = abs(float(diff.mean())) <= max(2 * se, sd) if len(seeds) > 1 else None
    lines.append(f"  test bits/dim (fp32 scoring): fp32 {fp32.mean():.4f} +- {sd:.4f} (sd over seeds), bf16 "
                 f"{bf16.mean():.4f} +- {float(bf16.std(ddof=1)) if len(seeds) > 1 else math.nan:.4f}; paired "
                 f"difference {diff.mean():+.4f} +- {se:.4f} (SE); within noise (|difference| <= max(2 SE, fp32 sd)): "
                 f"{'yes' if within else 'no' if within is not None else 'n/a'}")
    lines.append(f"  wall-clock per run (median): fp32 {wall32:.0f} s, bf16 {wall16:.0f} s: {wall32 / wall16:.2f}x")
    if all((s, "bf16-compile") in runs for s in seeds):
        compiled = np.array([runs[(s, "bf16-compile")]["bpd"] for s in seeds])
        wall_c = np.median([runs[(s, "bf16-compile")]["wall_s"] for s in seeds])
        lines.append(f"  bf16 with --compile: wall-clock {wall_c:.0f} s ({wall32 / wall_c:.2f}x fp32, "
                     f"{wall16 / wall_c:.2f}x bf16 eager), test bits/dim {compiled.mean():.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: each case's own)")
    parser.add_argument("--compile", action="store_true", help="also train in bf16 with --compile, per seed")
    parser.add_argument("--json", default=None, help="also write every run's numbers here")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    flags = cpu_flags()
    shown = sorted(f for f in (flags or ()) if f in ("avx2", "avx512f", "avx512_vnni", *NATIVE_BF16_FLAGS))
    print(f"{platform.processor() or platform.machine()}; CPU flags {', '.join(shown) or 'unreadable'}; "
          f"torch {torch.__version__}; {torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d %H:%M')}")
    if not native_bf16():
        raise SystemExit("this CPU has no native BF16 (AVX-512 BF16 or AMX): `flowood train` defaults to fp32 here, "
                         "and bf16 timings would only measure its emulation")
    from flowood.data import load_dataset

    images = torch.as_tensor(load_dataset("fashionmnist", "test").take(TEST_IMAGES, seed=0).data)
    seeds = list(range(args.seeds))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="flowood-precision-") as scratch:
        for case in args.cases:
            steps = args.steps or CASES[case][1]
            runs: dict[tuple[int, str], dict] = {}
            for seed in seeds:
                for variant in ("fp32", "bf16") + (("bf16-compile",) if args.compile else ()):
                    precision = variant.removesuffix("-compile")
                    out = Path(scratch) / f"{case}-{seed}-{variant}"
                    run = train_run(case, seed, precision, steps, out, compile=variant.endswith("-compile"))
                    run["bpd"] = score_fp32(out / "checkpoints" / "last.ckpt", images)
                    runs[(seed, variant)] = run
                    print(f"  {case} seed {seed} {variant}: {run['wall_s']:.0f} s, test bits/dim (run's own) "
                          f"{run['summary']['test_bpd']:.4f}, fp32 scoring {run['bpd']:.4f}", flush=True)
            print(summarise(case, runs, seeds), flush=True)
            results[case] = {f"{s}-{p}": {"bpd_fp32_scoring": r["bpd"], "wall_s": r["wall_s"], **r["summary"]}
                             for (s, p), r in runs.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
