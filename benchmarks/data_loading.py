"""Share of a training step spent waiting for data, with flowood's training data loader.

Usage: python benchmarks/data_loading.py [--dataset npz:tests/fixtures/fashionmnist-small.npz] [--batches 50]

Times (1) drawing batches from the DataLoader that ``flowood train`` uses (data held in memory as uint8,
shuffled by the resumable sampler) and (2) full training steps of the demo's RealNVP on the same batches,
and prints the share of (1) in (1) + (2), for 0 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from flowood.training import load_config
from flowood.training.module import FlowDataModule, FlowModule

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default=f"npz:{ROOT}/tests/fixtures/fashionmnist-small.npz")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}")
    print("| workers | data ms/batch | step ms/batch | data share |")
    print("|---:|---:|---:|---:|")
    for workers in (0, 2):
        config = load_config(None, dict(dataset=args.dataset, num_blocks=1, num_mid_channels=16,
                                        batch_size=args.batch_size, num_workers=workers, out="unused"))
        data = FlowDataModule(config)
        data.setup()
        loader = data.train_dataloader()
        batches = []
        start = time.perf_counter()
        while len(batches) < args.batches:
            for x, _ in loader:
                batches.append(x)
                if len(batches) == args.batches:
                    break
        data_s = (time.perf_counter() - start) / args.batches
        module = FlowModule(config.to_dict(), data.sample_shape)
        flow = module.flow.train()
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
        for x in batches[:2]:  # warm-up, ActNorm/BN initialisation
            flow.bits_per_dim(x, validate=False).mean().backward()
        start = time.perf_counter()
        for x in batches:
            loss = flow.bits_per_dim(x, validate=False).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step_s = (time.perf_counter() - start) / len(batches)
        print(f"| {workers} | {1000 * data_s:.2f} | {1000 * step_s:.1f} | {100 * data_s / (data_s + step_s):.2f}% |")


if __name__ == "__main__":
    main()
