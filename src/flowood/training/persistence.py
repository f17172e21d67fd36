"""What makes a training run survive a crash: atomic checkpoint files, a data order that can be
resumed mid-epoch, and a disk-space check before the run starts.

A run killed at any moment (power loss, SIGKILL, a full disk) leaves either the previous checkpoint or
the new one, never half a file; ``--resume`` then continues with exactly the batches, random numbers
and optimizer state the uninterrupted run would have used.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "EpochPermutationSampler", "ResumableDataLoader",
           "check_disk_space", "DiskSpaceError"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


class DiskSpaceError(OSError):
    """Not enough free disk space for the run's checkpoints."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes a temporary file, flushes it to disk, then renames it over
    the old checkpoint, so a crash mid-write never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointWriteError(
                    err.errno, f"no space left on the device while writing checkpoint {path}; the previous "
                               f"checkpoint is intact. Free some space and continue with --resume") from err
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
                                           "choose another --out")


class EpochPermutationSampler(Sampler[int]):
    """Shuffles with its own generator, seeded by ``(seed, epoch)``, and counts its own epochs (one per
    pass), so the order of every epoch is known in advance and a pass can start part-way: exact
    mid-epoch resume, whatever epoch number the training loop believes it is in.

    Example:
        >>> s = EpochPermutationSampler(5, seed=0, batch_size=1)
        >>> first = list(s)                     # epoch 0
        >>> s.resume_at(epoch=0, samples=2)
        >>> list(s) == first[2:], s.epoch       # epoch 0 again, from its third sample
        (True, 0)
        >>> _ = list(s); s.epoch                # then epoch 1
        1
    """

    def __init__(self, num_samples: int, seed: int = 0, batch_size: int = 1) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.epoch = -1  # the epoch of the current pass
        self.skip = 0  # samples skipped at the start of the current pass
        self.pass_id = 0
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
        self.epoch, self.skip, self.pass_id = epoch, skip, self.pass_id + 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        return iter(order[skip:].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose position Lightning saves in checkpoints and restores on resume.

    ``batches_done()`` returns how many batches of the sampler's current pass the model has trained
    on; it is supplied by the training module (Lightning prefetches one batch ahead, so the
    sampler's own count would be one batch too far).
    """

    batches_done: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        done = self.batches_done() if self.batches_done is not None else 0
        return {"epoch": int(sampler.epoch), "samples": int(sampler.skip + done * self.batch_size)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if isinstance(self.sampler, EpochPermutationSampler) and state["epoch"] >= 0:
            self.sampler.resume_at(state["epoch"], state["samples"])
