"""``flowood train`` as a function: set up the output directory, the Trainer, and fit."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from flowood.checkpoints import CheckpointError, load_flow
from flowood.data import dataset_inputs, fit_to_shape, load_dataset
from flowood.flows.layers import set_standardization
from flowood.options import ConfigError, merge_options
from flowood.outputs import OutputExistsError, OutputFolder, open_output_folder, write_text_atomic
from flowood.runtime import CoreShare, lightning_accelerator, lightning_precision, resolve_precision
from flowood.training.callbacks import (
    InvertibilityCheck,
    NonFiniteGuard,
    RandomState,
    RecomputeBatchNorm,
    RecordLogs,
    ShareCores,
    TrainedBatches,
)
from flowood.training.config import TrainConfig
from flowood.training.module import FlowDataModule, FlowModule
from flowood.training.monitor import TimeLimitBar, TrainingMonitor
from flowood.training.persistence import AtomicCheckpointIO, check_disk_space

__all__ = ["train", "TrainResult", "OutputExistsError"]


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        out: the output directory.
        checkpoint: ``checkpoints/last.ckpt``, the final state (use it for evaluate and --resume).
        test_bpd: test bits/dim of the final model (measured at the training precision).
        steps: optimizer steps taken in total (a resumed run counts the earlier ones).
        seconds: wall-clock time of this call.
        precision: the precision it trained at (``auto`` resolved: ``bf16`` or ``fp32``).
    """

    out: Path
    checkpoint: Path
    test_bpd: float
    steps: int
    seconds: float
    precision: str = "fp32"


def _is_launched_child() -> bool:
    """True in the processes Lightning starts for ranks > 0 (they must not touch the output dir)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _resume_checkpoint(out: Path, resume: str | bool | None) -> Path | None:
    """The checkpoint to resume from, verified before anything else happens (None: a fresh run)."""
    if not resume:
        return None
    path = out / "checkpoints" / "last.ckpt" if resume is True else Path(resume)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: checkpoint {path} does not exist")
    try:
        load_flow(path)  # verified before Lightning reads it: a bad file gives one clear error
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume: {err}") from err
    return path


def _open_out(config: TrainConfig, resume_path: Path | None, overwrite: bool, inputs: Iterable[str | Path]
              ) -> OutputFolder | None:
    """Check, lock and claim the output folder before any data are loaded (None in launched DDP ranks)."""
    if _is_launched_child():
        return None
    out = Path(config.out)
    continues = resume_path is not None and resume_path.resolve().is_relative_to(out.resolve())
    inputs = [*dataset_inputs([config.dataset, config.ood_dataset, config.monitor_ood], config.data_root), *inputs]
    if resume_path is not None and not continues:
        inputs.append(resume_path)
    return open_output_folder(out, "train", inputs, overwrite=overwrite, resume=continues)


def train(config: TrainConfig | None = None, *, resume: str | bool | None = None, overwrite: bool = False,
          progress: bool = True, inputs: Iterable[str | Path] = (), **option_values: Any) -> TrainResult:
    """Train a flow as ``config`` says and write everything under ``config.out``.

    Writes ``config.yaml``, ``checkpoints/last.ckpt`` (and ``epoch=N.ckpt`` every ``save_freq``
    epochs), TensorBoard and CSV logs under ``logs/``, and ``train_summary.json``.

    Args:
        config: the checked training configuration (:func:`~flowood.training.load_config` reads one from YAML);
            None: the defaults.
        resume: True to continue from ``out/checkpoints/last.ckpt``, or a checkpoint path.
        overwrite: replace an earlier run in ``config.out`` (only the files that run wrote are removed;
            see :func:`flowood.outputs.open_output_folder` for the folders flowood refuses to write into).
        progress: show Lightning's progress bar.
        inputs: further files the run reads (e.g. its YAML config), which the output folder must not hold.
        **option_values: any option of :class:`~flowood.training.TrainConfig` (flat architecture names too), applied
            to ``config`` and checked, e.g. ``out="runs/t", max_steps=100``.

    Raises:
        OutputError: ``config.out`` is unsafe, not writable, holds an earlier run (without ``overwrite`` or
            ``resume``), or is being written by another process.
        CheckpointError: the checkpoint to resume from is missing or unreadable.
    """
    start = time.time()
    if config is None or option_values:
        config = merge_options(TrainConfig, config, option_values).check()
    precision = resolve_precision(config.precision, config.device)  # `auto` in a config that was not checked
    if precision != config.precision:
        config = replace(config, precision=precision)
    out = Path(config.out)
    resume_path = _resume_checkpoint(out, resume)
    folder = _open_out(config, resume_path, overwrite, inputs)
    try:
        with CoreShare():  # this process's share of the CPUs (the command line's, or a new one)
            return _fit(config, out, resume_path, folder, progress, start)
    finally:
        if folder is not None:
            folder.close()


def _monitor(config: TrainConfig, data: FlowDataModule) -> TrainingMonitor:
    """Gradient norms, per-scale test bits/dim, sample grids and (with ``monitor_ood``) the OOD curve."""
    test = data.test_set.take(512, seed=config.seed).data
    ood = None
    if config.monitor_ood:
        shape = data.sample_shape
        ood_set = load_dataset(config.monitor_ood, "test", config.data_root, shape=shape)
        ood = fit_to_shape(ood_set.take(512, seed=config.seed), shape)
    name = config.monitor_ood.rsplit("/", 1)[-1] if config.monitor_ood else "ood"
    return TrainingMonitor(test, ood, name, config.samples_every_n_epochs, config.seed)


def _checkpointing(config: TrainConfig, ckpt_dir: Path) -> list[ModelCheckpoint]:
    """``last.ckpt`` at every epoch end (every ``checkpoint_every_n_steps`` steps and ``checkpoint_every_minutes``
    too) and, with ``save_freq``, ``epoch=N.ckpt`` every that many epochs; never versioned (``last-v1.ckpt``):
    one writer per folder."""
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=-1 if config.save_freq else 0,
                                 every_n_epochs=config.save_freq or 1, filename="epoch={epoch}",
                                 auto_insert_metric_name=False, enable_version_counter=False)]
    if config.checkpoint_every_n_steps:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                         every_n_train_steps=config.checkpoint_every_n_steps,
                                         enable_version_counter=False))
    if config.checkpoint_every_minutes:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                         train_time_interval=timedelta(minutes=config.checkpoint_every_minutes),
                                         enable_version_counter=False))
    return callbacks


def _loggers(config: TrainConfig, out: Path, resume_path: Path | None, folder: OutputFolder | None) -> list[Any]:
    """The loggers ``config.loggers`` names, writing under ``logs/``. A resumed run logs its CSV rows beside the
    earlier ones (Lightning's CSV logger would replace them)."""
    loggers: list[Any] = []
    logs = out / "logs"
    if "tensorboard" in config.loggers:
        loggers.append(TensorBoardLogger(str(logs), name="tensorboard", version=""))
        if folder is not None:
            folder.record(Path("logs") / "tensorboard" / "hparams.yaml")
    if "csv" in config.loggers:
        csv_version = ""
        if resume_path is not None and (logs / "csv" / "metrics.csv").exists():
            csv_version = f"resume_{len(list((logs / 'csv').glob('resume_*'))) + 1}"
        if folder is not None:  # named before they exist: a crash cannot leave a log file the manifest misses
            folder.record(Path("logs") / "csv" / csv_version / "metrics.csv",
                          Path("logs") / "csv" / csv_version / "hparams.yaml")
        loggers.append(CSVLogger(str(logs), name="csv", version=csv_version))
    for name in ("mlflow", "wandb"):
        if name in config.loggers:
            loggers.append(_optional_logger(name, logs))
    return loggers


def _optional_logger(name: str, logs: Path) -> Any:
    """MLflow's or Weights & Biases' Lightning logger, or a ConfigError saying what to install."""
    import importlib.util

    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"the {name} logger needs the {name} package: pip install {name}")
    if name == "mlflow":
        return MLFlowLogger(experiment_name="flowood", save_dir=str(logs / "mlflow"))
    return WandbLogger(project="flowood", save_dir=str(logs))


def _fit(config: TrainConfig, out: Path, resume_path: Path | None, folder: OutputFolder | None, progress: bool,
         start: float) -> TrainResult:
    pl.seed_everything(config.seed, workers=True, verbose=False)
    data = FlowDataModule(config)
    data.setup()
    module = FlowModule(config.to_dict(), data.sample_shape, ood_data=data.ood_set)
    if resume_path is None:  # tabular flows standardise with the whole training set's statistics (a resumed run
        set_standardization(module.flow, data.train_set.data)  # has them in its checkpoint)
    if not _is_launched_child():
        # weights, Adam's two moments, and room for the temporary file of an atomic write
        n_params = sum(p.numel() for p in module.parameters())
        check_disk_space(out, 2 * 3 * 4 * n_params * (2 if config.save_freq else 1) + (1 << 20))
    guard = NonFiniteGuard(config.nan_policy, config.nan_tolerance, config.nan_lr_factor, config.explode_bpd,
                           config.rollback_every, 0.0 if config.ood_dataset else config.divergence_bpd,
                           config_hint=f"`lr` (now {config.lr}) or `max_grad_norm` (now {config.max_grad_norm})")
    inverse_check = InvertibilityCheck(data.test_set.data[:16].clone())
    callbacks: list[Any] = [guard, inverse_check, RandomState(), TrainedBatches(data.position), ShareCores(),
                            *_checkpointing(config, out / "checkpoints")]
    callbacks += [RecordLogs(folder)] if folder is not None else []
    callbacks += [_monitor(config, data)]
    if config.recompute_batchnorm:
        callbacks.append(RecomputeBatchNorm(config.recompute_batchnorm, data.train_set.data, data.ood_set,
                                            config.batch_size, config.seed))
    callbacks += [LearningRateMonitor(logging_interval="step")] if config.loggers else []
    if progress:
        callbacks.append(TimeLimitBar(config.max_minutes) if config.max_minutes else TQDMProgressBar(refresh_rate=10))
    accelerator, devices = lightning_accelerator(config.device, config.devices)
    trainer = pl.Trainer(
        max_epochs=config.num_epochs, max_steps=config.max_steps or -1,
        max_time=timedelta(minutes=config.max_minutes) if config.max_minutes else None,
        gradient_clip_val=config.max_grad_norm, devices=devices, num_nodes=config.num_nodes,
        accelerator=accelerator, strategy=config.strategy, precision=lightning_precision(config.precision),
        logger=_loggers(config, out, resume_path, folder), callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(out), enable_progress_bar=progress, enable_model_summary=progress,
        check_val_every_n_epoch=config.test_every_n_epochs, log_every_n_steps=10, num_sanity_val_steps=0)
    if trainer.is_global_zero:
        write_text_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_path) if resume_path else None)
    last = out / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)  # the final state, also when max_steps/max_minutes stopped mid-epoch
    final = trainer.validate(module, datamodule=data, verbose=False)
    if folder is not None:
        folder.record_tree("logs")  # the final validation may open a new event file
    result = TrainResult(out, last, float(final[0]["test_bpd"]) if final else float("nan"), int(trainer.global_step),
                         time.time() - start, config.precision)
    if trainer.is_global_zero:
        summary = {"test_bpd": result.test_bpd, "steps": result.steps, "epochs": int(trainer.current_epoch),
                   "seconds": round(result.seconds, 1), "skipped_nonfinite_steps": guard.skipped,
                   "rollbacks": guard.rollbacks, "invertibility_error": inverse_check.error,
                   "checkpoint": str(last), "dataset": config.dataset, "precision": config.precision,
                   "train_samples": len(data.train_set), "test_samples": len(data.test_set)}
        write_text_atomic(out / "train_summary.json", json.dumps(summary, indent=2))
    return result
