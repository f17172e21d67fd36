"""What a user watches while a flow trains (flowood.training.monitor): gradient norms, learning rate, per-scale
test bits/dim, sample grids, the monitored OOD set's curve, a time-limit progress bar, periodic checkpoints."""

from __future__ import annotations

import csv
from datetime import timedelta

import pytest

from flowood.options import ConfigError
from flowood.training import train
from flowood.training.monitor import TimeLimitBar


def test_the_logs_show_the_training_and_the_ood_curve(tmp_path, train_config, mnist_npz):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = train_config(tmp_path / "run", max_steps=30, num_epochs=100, test_every_n_epochs=1,
                          max_train_samples=320, monitor_ood=mnist_npz)
    train(config, progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "csv" / "metrics.csv").read_text().splitlines()))
    columns = set(rows[0])
    for metric in ("grad_norm", "test_bpd", "test_bpd_scale0", "test_bpd_scale1",
                   "ood_bpd_mnist-small.npz", "ood_auroc_mnist-small.npz"):
        assert metric in columns, metric
    assert any(c.startswith("lr-Adam") for c in columns)  # (one per parameter group)
    aurocs = [float(r["ood_auroc_mnist-small.npz"]) for r in rows if r["ood_auroc_mnist-small.npz"]]
    assert len(aurocs) >= 2 and all(0.0 <= a <= 1.0 for a in aurocs)  # one point per test pass: a curve
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "samples_t0.75" in events.Tags()["images"] and "grad_norm" in events.Tags()["scalars"]


def test_loggers_are_chosen_by_one_option(tmp_path, train_config):
    train(train_config(tmp_path / "csv_only", loggers=["csv"]), progress=False)
    assert sorted(p.name for p in (tmp_path / "csv_only" / "logs").iterdir()) == ["csv"]
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        train_config(tmp_path / "x", loggers=["tensorbord"])
    with pytest.raises(ConfigError, match="pip install mlflow"):  # mlflow is not installed here
        train(train_config(tmp_path / "mlflow", loggers=["mlflow"]), progress=False)


def test_a_time_limited_run_counts_minutes_and_checkpoints_every_few_minutes(tmp_path, train_config, capfd):
    from flowood.training.run import _checkpointing

    config = train_config(tmp_path / "run", max_steps=None, max_minutes=0.05, num_epochs=1000)
    timed = [c for c in _checkpointing(config, tmp_path) if c._train_time_interval is not None]
    assert timed and timed[0]._train_time_interval == timedelta(minutes=2)  # the default: resumable runs
    train(config, progress=True)
    captured = capfd.readouterr()
    shown = captured.out + captured.err  # Lightning's bars write to stdout
    assert "training for 0.05 min" in shown and "/3 s" in shown  # the bar counts seconds toward the 3-second limit
    assert isinstance(TimeLimitBar(1.0), TimeLimitBar)
