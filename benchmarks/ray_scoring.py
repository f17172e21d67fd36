"""Batch scoring on Ray Data (``flowood score --ray``) against ``flowood score`` on one process, same files.

Usage: python benchmarks/ray_scoring.py --detector DETECTOR.pt [--files 4000] [--workers 1 2]

Writes ``--files`` PNGs (the FashionMNIST test fixture, repeated) to a temporary folder, then times, each once:
``flowood score`` (``score_files``, one process, every core), and ``score_files_on_ray`` with 1 and 2 workers of
one CPU on a local Ray instance started beforehand (``ray.init(num_cpus=<cores>)``), so the times are the jobs'
(each job starts its worker processes, which load flowood and the detector) and not Ray's start. Prints inputs/s and
the ratio to ``flowood score``, with the CPU's model and flags. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_load import cpu, write_images  # noqa: E402

from flowood.deploy import score_files  # noqa: E402
from flowood.deploy.ray_scoring import score_files_on_ray  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True)
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    import ray

    cores = torch.get_num_threads()
    print(f"# {time.strftime('%Y-%m-%d')}, {cpu()}, {cores} cores, {args.files} PNG files, detector {args.detector}")
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), args.files)
        start = time.perf_counter()
        summary = score_files(args.detector, [tmp], None, progress=False)
        base = summary.rows / (time.perf_counter() - start)
        print("| how | workers | inputs/s | ratio to `flowood score` |\n|---|---|---|---|")
        print(f"| `flowood score` (one process, {cores} threads) | – | {base:.0f} | 1.00 |", flush=True)
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        try:
            for workers in args.workers:
                start = time.perf_counter()
                done = score_files_on_ray(args.detector, [tmp], None, progress=False, workers=workers,
                                          cpus_per_worker=1)
                assert done.rows == summary.rows
                rate = done.rows / (time.perf_counter() - start)
                print(f"| `flowood score --ray` (local Ray, 1 CPU each) | {workers} | {rate:.0f} | "
                      f"{rate / base:.2f} |", flush=True)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
