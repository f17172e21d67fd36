"""Load test of ``flowood serve`` on loopback, beside the ceiling ``flowood score`` sets on the same files.

Usage: python benchmarks/serve_load.py --detector NAME=DETECTOR.pt [--detector NAME=...] [--requests 400]
                                       [--seconds 60] [--threads 2]

For each detector: ``flowood score``'s throughput on N PNG files of the FashionMNIST test fixture (the ceiling:
one process, batches of 256), then ``flowood serve`` with batching off (``--max_batch_size 1``) and on
(``--max_batch_size 32 --batch_timeout 0.01``), each loaded by an async httpx client at concurrency 1, 8 and 32
sending one image per request (multipart) until ``--requests`` are answered or ``--seconds`` pass: requests/s,
p50/p99 latency, failed requests, and the requests/s as a share of the ceiling. Loopback only, bounded in requests
and time. Prints the CPU's model and flags with the table; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from builders import start_server  # noqa: E402

from flowood.deploy import score_files  # noqa: E402


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f.startswith(("avx512", "avx2", "amx")) or f in ("avx_vnni", "fma")]
    return f"{model}; flags: {' '.join(sorted(wanted))}"


def write_images(folder: Path, count: int) -> list[Path]:
    with np.load(ROOT / "tests" / "fixtures" / "fashionmnist-small.npz") as f:
        images = f["images_test"][:, 0]
    paths = []
    for i in range(count):
        path = folder / f"fm{i:04d}.png"
        Image.fromarray(images[i % len(images)]).save(path)
        paths.append(path)
    return paths


def ceiling(detector: str, paths: list[Path], threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    score_files(detector, [str(p) for p in paths[:32]], None, progress=False)  # warm up
    start = time.perf_counter()
    summary = score_files(detector, [str(p) for p in paths], None, progress=False)
    return summary.rows / (time.perf_counter() - start)


async def load(url: str, bodies: list[bytes], concurrency: int, requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    failures = 0
    sent = 0
    deadline = time.monotonic() + seconds

    async def one_client(client: httpx.AsyncClient) -> None:
        nonlocal failures, sent
        while sent < requests and time.monotonic() < deadline:
            body = bodies[sent % len(bodies)]
            sent += 1
            start = time.perf_counter()
            try:
                r = await client.post(f"{url}/score", files=[("files", ("x.png", body, "image/png"))])
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            failures += not ok

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for _ in range(4):  # warm the server up
            await client.post(f"{url}/score", files=[("files", ("x.png", bodies[0], "image/png"))])
        start = time.perf_counter()
        await asyncio.gather(*(one_client(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50": 1000 * statistics.median(latencies),
            "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "failed": failures,
            "answered": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {cpu()}, torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), 1000)
        bodies = [p.read_bytes() for p in paths[:200]]
        print("| detector | `flowood score` inputs/s | batching | concurrency | requests/s | p50 ms | p99 ms | "
              "failed | share of ceiling |")
        print("|---|---|---|---|---|---|---|---|---|")
        for spec in args.detector:
            name, path = spec.split("=", 1)
            top = ceiling(path, paths, args.threads)
            for batching, flags in (("off", ["--max_batch_size", "1"]),
                                    ("on", ["--max_batch_size", "32", "--batch_timeout", "0.01"])):
                served = start_server(Path(path), Path(tmp) / "server.log", *flags, "--threads", str(args.threads),
                                      "--max_inputs", "64")
                try:
                    for concurrency in (1, 8, 32):
                        r = asyncio.run(load(served.url, bodies, concurrency, args.requests, args.seconds))
                        print(f"| {name} | {top:.0f} | {batching} | {concurrency} | {r['rps']:.0f} | {r['p50']:.1f} | "
                              f"{r['p99']:.1f} | {r['failed']}/{r['answered']} | {r['rps'] / top:.0%} |", flush=True)
                finally:
                    served.stop(30)


if __name__ == "__main__":
    main()
