"""Two flowood trainings on one machine at once: do they finish no later than one after the other?

Usage: python benchmarks/share_cores.py [--steps 60] [--repeats 2]

Runs ``flowood train --config demo --max_steps STEPS`` (FashionMNIST must be available: ``flowood data fetch
fashionmnist``) three ways and prints the wall-clock time until both trainings are done:

* one after the other (each alone, with every usable CPU);
* both at once, each sharing the CPUs with the other (flowood's default: ``flowood.runtime.CoreShare``);
* both at once, each with every CPU (``--threads`` set to the CPU count: what PyTorch does by default).

The ratios to "one after the other" are the result: at most 1.0 means running two jobs at once costs nothing.
Measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flowood.runtime import usable_cpus


def _command(out: Path, steps: int, threads: int | None) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "flowood"), "train", "--config", "demo", "--max_steps", str(steps),
           "--max_minutes", "30", "--out", str(out), "--overwrite", "--no_progress", "--loggers", "csv"]
    return cmd + (["--threads", str(threads)] if threads else [])


def _run(commands: list[list[str]], at_once: bool) -> float:
    start = time.perf_counter()
    if at_once:
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise SystemExit(f"a training failed:\n{err.decode()[-2000:]}")
    else:
        for c in commands:
            done = subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode:
                raise SystemExit(f"a training failed:\n{done.stderr.decode()[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cpus = usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / "a", Path(tmp) / "b"]
        modes = {"one after the other": ([_command(r, args.steps, None) for r in runs], False),
                 "at once, sharing the CPUs (default)": ([_command(r, args.steps, None) for r in runs], True),
                 f"at once, {cpus} threads each": ([_command(r, args.steps, cpus) for r in runs], True)}
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode, (commands, at_once) in modes.items():
                times[mode].append(_run(commands, at_once))
    print(f"two trainings of {args.steps} steps (flowood train --config demo), {cpus} usable CPUs, "
          f"{platform.processor() or platform.machine()}, median of {args.repeats}")
    base = statistics.median(times["one after the other"])
    for mode, values in times.items():
        t = statistics.median(values)
        print(f"{mode:40s} {t:7.1f} s   x{t / base:.2f} of one after the other")


if __name__ == "__main__":
    main()
