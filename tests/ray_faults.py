"""A Ray scoring worker that dies (``os._exit``) as files say, for the Ray scoring tests: tests put it in place of
flowood's (Ray sends the class by name, so workers import it from here) and drop ``once`` (the first worker to claim
it dies, once) or ``always`` into the folder that the ``FLOWOOD_TEST_FAULTS`` variable names."""

from __future__ import annotations

import os
from pathlib import Path

from flowood.deploy import ray_scoring


class DyingScoreWorker(ray_scoring._ScoreWorker):
    """flowood's worker, dying while it scores a batch when a fault file says so."""

    def __call__(self, batch):
        faults = Path(os.environ["FLOWOOD_TEST_FAULTS"])
        if (faults / "always").exists():
            os._exit(1)
        try:
            os.rename(faults / "once", faults / "once.taken")  # one worker wins the rename, and dies
        except FileNotFoundError:
            return super().__call__(batch)
        os._exit(1)
