"""What makes a training run survive a crash: atomic checkpoint files, a data order that can be
resumed mid-epoch, and a disk-space check before the run starts.

A run killed at any moment (power loss, SIGKILL, a full disk) leaves either the previous checkpoint or
the new one, never half a file; ``--resume`` then continues with exactly the batches, random numbers
and optimizer state the uninterrupted run would have used.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from flowood.errors import FlowoodError
from flowood.outputs import atomic_write

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "EpochPermutationSampler", "PassPosition",
           "ResumableDataLoader",
           "check_disk_space", "DiskSpaceError"]


class CheckpointWriteError(FlowoodError, OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


class DiskSpaceError(FlowoodError, OSError):
    """Not enough free disk space for the run's checkpoints."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes through :func:`~flowood.outputs.atomic_write` (a temporary file,
    flushed, then renamed over the old checkpoint), so a crash mid-write never leaves a truncated
    ``last.ckpt``, and the run folder's manifest names every checkpoint before it exists."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        try:
            with atomic_write(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointWriteError(
                    err.errno, f"no space left on the device while writing checkpoint {path}; the previous "
                               f"checkpoint is intact. Free some space and resume the run") from err
            raise CheckpointWriteError(err.errno or 0, f"could not write checkpoint {path}: {err}") from err


def check_disk_space(folder: Path, needed_bytes: int, usage: Callable[[str], Any] | None = None) -> None:
    """Refuse to start when ``folder``'s file system has less than ``needed_bytes`` free."""
    usage = usage or shutil.disk_usage
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = usage(str(probe)).free
    if free < needed_bytes:
        raise DiskSpaceError(errno.ENOSPC, f"only {free / 2**20:.1f} MiB free under {probe}, but the run's "
                                           f"checkpoints need about {needed_bytes / 2**20:.1f} MiB; free space or "
                                           "choose another `out`")


@dataclass
class PassPosition:
    """How many batches of the sampler's current pass the model has trained on: the sampler starts passes,
    a callback (:class:`~flowood.training.callbacks.TrainedBatches`) counts batches, and the loader saves the
    position in checkpoints. The loader cannot count by itself: Lightning fetches one batch ahead.

    Example:
        >>> p = PassPosition()
        >>> p.start_pass(); p.count(); p.count(); p.done()
        2
        >>> p.start_pass(); p.done()
        0
    """

    pass_id: int = 0
    counted_pass: int = -1
    batches: int = 0

    def start_pass(self) -> None:
        self.pass_id += 1

    def count(self) -> None:
        if self.counted_pass != self.pass_id:
            self.counted_pass, self.batches = self.pass_id, 0
        self.batches += 1

    def done(self) -> int:
        return self.batches if self.counted_pass == self.pass_id else 0


class EpochPermutationSampler(Sampler[int]):
    """Shuffles with its own generator, seeded by ``(seed, epoch)``, and counts its own epochs (one per
    pass), so the order of every epoch is known in advance and a pass can start part-way: exact
    mid-epoch resume, whatever epoch number the training loop believes it is in.

    Args:
        num_samples: size of the data set.
        seed: seeds every epoch's order.
        batch_size: a resumed pass with fewer samples left than one batch starts the next epoch.
        position: told when a pass starts (see :class:`PassPosition`).

    Example:
        >>> s = EpochPermutationSampler(5, seed=0, batch_size=1)
        >>> first = list(s)                     # epoch 0
        >>> s.resume_at(epoch=0, samples=2)
        >>> list(s) == first[2:], s.epoch       # epoch 0 again, from its third sample
        (True, 0)
        >>> _ = list(s); s.epoch                # then epoch 1
        1
    """

    def __init__(self, num_samples: int, seed: int = 0, batch_size: int = 1,
                 position: PassPosition | None = None) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.position = position
        self.epoch = -1  # the epoch of the current pass
        self.skip = 0  # samples skipped at the start of the current pass
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the sampler numbers its passes itself (Lightning's count differs after a resume)."""

    def resume_at(self, epoch: int, samples: int) -> None:
        """The next pass continues ``epoch`` after its first ``samples`` samples."""
        self._resume = (int(epoch), int(samples))

    def __iter__(self):
        epoch, skip = self.epoch + 1, 0
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if self.num_samples - skip < self.batch_size:  # that epoch was finished: start the next one
                epoch, skip = epoch + 1, 0
        self.epoch, self.skip = epoch, skip
        if self.position is not None:
            self.position.start_pass()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        return iter(order[skip:].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose position Lightning saves in checkpoints and restores on resume.

    Args:
        dataset: the training set.
        position: the batches of the current pass trained on (see :class:`PassPosition`).
        **kwargs: DataLoader's; ``sampler`` must be an :class:`EpochPermutationSampler`.
    """

    def __init__(self, dataset: Any, *args: Any, position: PassPosition | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        done = self.position.done() if self.position is not None else 0
        return {"epoch": int(sampler.epoch), "samples": int(sampler.skip + done * self.batch_size)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if isinstance(self.sampler, EpochPermutationSampler) and state["epoch"] >= 0:
            self.sampler.resume_at(state["epoch"], state["samples"])
