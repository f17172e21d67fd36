"""Load test of ``flowood serve`` on loopback, beside the ceiling ``flowood score`` sets on the same files.

Usage: python benchmarks/serve_load.py --detector NAME=DETECTOR.pt [--detector NAME=...] [--client wrk|httpx]
                                       [--requests 400] [--seconds 10]

For each detector: ``flowood score``'s throughput on 1,000 PNG files of the FashionMNIST test fixture (the
ceiling: one process, batches of 256, with every core and with one), then ``flowood serve`` with its defaults
and batching off (``--max_batch_size 1``) or on (``--max_batch_size 32 --batch_timeout 0.01``), loaded at
concurrency 1, 8 and 32 with one image per request (multipart): requests/s, p50/p99 latency, failed requests
(not 200), and the requests/s as a share of each ceiling. The client is ``wrk`` (C, from Debian's ``wrk``
package; ``--seconds`` per level) or an async httpx loop (``--requests`` per level or ``--seconds``, whichever
comes first; it costs about a core of its own at these rates). Loopback only, bounded in time. Prints the CPU's
model and flags with the table; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
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


def wrk_load(url: str, body: bytes, concurrency: int, seconds: float, folder: Path) -> dict:
    """``wrk`` posting one PNG per request for ``seconds``: requests/s, p50/p99 ms, failed (non-2xx, socket errors)."""
    (folder / "body.bin").write_bytes(b"--flowoodbench\r\nContent-Disposition: form-data; name=\"files\"; "
                                      b"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n" + body +
                                      b"\r\n--flowoodbench--\r\n")
    (folder / "post.lua").write_text(f'local f = io.open("{folder / "body.bin"}", "rb")\nwrk.method = "POST"\n'
                                     'wrk.body = f:read("*all")\nf:close()\nwrk.headers["Content-Type"] = '
                                     '"multipart/form-data; boundary=flowoodbench"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", "-s",
                          str(folder / "post.lua"), f"{url}/score"], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    answered = int(re.search(r"(\d+) requests in", out).group(1))
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    failed += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50%"), "p99": ms("99%"),
            "failed": failed, "answered": answered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--client", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk") else "httpx")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    cores = torch.get_num_threads()
    print(f"# {time.strftime('%Y-%m-%d')}, {cpu()}, {cores} cores, client {args.client}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), 1000)
        bodies = [p.read_bytes() for p in paths[:200]]
        print(f"| detector | `flowood score` inputs/s ({cores} threads / 1) | batching | concurrency | requests/s | "
              "p50 ms | p99 ms | failed | share of ceiling |")
        print("|---|---|---|---|---|---|---|---|---|")
        for spec in args.detector:
            name, path = spec.split("=", 1)
            top, one = ceiling(path, paths, cores), ceiling(path, paths, 1)
            torch.set_num_threads(cores)
            for batching, flags in (("off", ["--max_batch_size", "1"]),
                                    ("on", ["--max_batch_size", "32", "--batch_timeout", "0.01"])):
                served = start_server(Path(path), Path(tmp) / "server.log", *flags, "--max_inputs", "64")
                try:
                    for concurrency in (1, 8, 32):
                        r = (wrk_load(served.url, bodies[0], concurrency, args.seconds, Path(tmp))
                             if args.client == "wrk" else
                             asyncio.run(load(served.url, bodies, concurrency, args.requests, args.seconds)))
                        print(f"| {name} | {top:.0f} / {one:.0f} | {batching} | {concurrency} | {r['rps']:.0f} | "
                              f"{r['p50']:.1f} | {r['p99']:.1f} | {r['failed']}/{r['answered']} | "
                              f"{r['rps'] / top:.0%} / {r['rps'] / one:.0%} |", flush=True)
                finally:
                    served.stop(30)


if __name__ == "__main__":
    main()
