"""``flowood train`` as a function: set up the output directory, the Trainer, and fit."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from flowood.checkpoints import CheckpointError, load_flow
from flowood.paths import check_output_dir
from flowood.training.config import TrainConfig
from flowood.training.module import FlowDataModule, FlowModule
from flowood.training.persistence import AtomicCheckpointIO, check_disk_space

__all__ = ["train", "TrainResult", "OutputExistsError"]


class OutputExistsError(FileExistsError):
    """The output directory holds an earlier run; refusing to overwrite it."""


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        out: the output directory.
        checkpoint: ``checkpoints/last.ckpt``, the final state (use it for evaluate and --resume).
        test_bpd: test bits/dim of the final model.
        steps: optimizer steps taken in total (a resumed run counts the earlier ones).
        seconds: wall-clock time of this call.
    """

    out: Path
    checkpoint: Path
    test_bpd: float
    steps: int
    seconds: float


def _is_launched_child() -> bool:
    """True in the processes Lightning starts for ranks > 0 (they must not touch the output dir)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _prepare_out(out: Path, resume: str | bool | None, overwrite: bool) -> Path | None:
    check_output_dir(out)
    ckpt_dir = out / "checkpoints"
    if resume:
        path = ckpt_dir / "last.ckpt" if resume is True else Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: checkpoint {path} does not exist")
        try:
            load_flow(path)  # verified before Lightning reads it: a bad file gives one clear error
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume: {err}") from err
        return path
    if _is_launched_child():
        return None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"output directory {out} already holds a run; pass --overwrite to replace it, "
                                    f"--resume to continue it, or choose another --out")
        shutil.rmtree(out)
    return None


def train(config: TrainConfig, resume: str | bool | None = None, overwrite: bool = False,
          progress: bool = True) -> TrainResult:
    """Train a flow as ``config`` says and write everything under ``config.out``.

    Writes ``config.yaml``, ``checkpoints/last.ckpt`` (and ``epoch=N.ckpt`` every ``save_freq``
    epochs), TensorBoard and CSV logs under ``logs/``, and ``train_summary.json``.

    Args:
        config: the checked training configuration.
        resume: True to continue from ``out/checkpoints/last.ckpt``, or a checkpoint path.
        overwrite: replace an existing output directory.
        progress: show Lightning's progress bar.
    """
    start = time.time()
    out = Path(config.out)
    resume_path = _prepare_out(out, resume, overwrite)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    data = FlowDataModule(config)
    data.setup()
    module = FlowModule(config.to_dict(), data.sample_shape)
    module.ood_data = data.ood_set
    module.check_batch = data.test_set.data[:16].clone()
    ckpt_dir = out / "checkpoints"
    if not _is_launched_child():
        # weights, Adam's two moments, and room for the temporary file of an atomic write
        n_params = sum(p.numel() for p in module.parameters())
        check_disk_space(out, 2 * 3 * 4 * n_params * (2 if config.save_freq else 1) + (1 << 20))
    checkpointing = ModelCheckpoint(dirpath=ckpt_dir, save_last=True,
                                    save_top_k=-1 if config.save_freq else 0,
                                    every_n_epochs=config.save_freq or 1, filename="epoch={epoch}",
                                    auto_insert_metric_name=False)
    callbacks: list[Any] = [checkpointing]
    if config.checkpoint_every_n_steps:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                         every_n_train_steps=config.checkpoint_every_n_steps))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    # A resumed run logs its CSV rows beside the earlier ones (Lightning's CSV logger would replace them).
    csv_version = ""
    if resume_path is not None and (out / "logs" / "csv" / "metrics.csv").exists():
        csv_version = f"resume_{len(list((out / 'logs' / 'csv').glob('resume_*'))) + 1}"
    loggers = [TensorBoardLogger(str(out / "logs"), name="tensorboard", version=""),
               CSVLogger(str(out / "logs"), name="csv", version=csv_version)]
    devices = config.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    trainer = pl.Trainer(
        max_epochs=config.num_epochs, max_steps=config.max_steps or -1,
        max_time=timedelta(minutes=config.max_minutes) if config.max_minutes else None,
        gradient_clip_val=config.max_grad_norm, devices=devices, num_nodes=config.num_nodes,
        accelerator=config.accelerator, strategy=config.strategy, precision=config.precision,
        logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=str(out), enable_progress_bar=progress,
        enable_model_summary=progress, check_val_every_n_epoch=config.test_every_n_epochs,
        log_every_n_steps=10, num_sanity_val_steps=0)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_path) if resume_path else None)
    last = ckpt_dir / "last.ckpt"
    trainer.save_checkpoint(last)  # the final state, also when max_steps/max_minutes stopped mid-epoch
    final = trainer.validate(module, datamodule=data, verbose=False)
    test_bpd = float(final[0]["test_bpd"]) if final else float("nan")
    result = TrainResult(out, last, test_bpd, int(trainer.global_step), time.time() - start)
    if trainer.is_global_zero:
        summary = {"test_bpd": test_bpd, "steps": result.steps, "epochs": int(trainer.current_epoch),
                   "seconds": round(result.seconds, 1), "skipped_nonfinite_steps": module.skipped_steps,
                   "rollbacks": module.rollbacks, "invertibility_error": module.invertibility_error,
                   "checkpoint": str(last), "dataset": config.dataset,
                   "train_samples": len(data.train_set), "test_samples": len(data.test_set)}
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return result
