"""Training end to end on the committed real FashionMNIST fixture: outputs, resume, bad configs, NaN losses."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from flowood.checkpoints import CheckpointError, load_flow
from flowood.flows import ConfigError, FlowModel
from flowood.training import NonFiniteLossError, OutputExistsError, load_config, train

TINY = dict(flow="RealNVP", num_blocks=1, num_mid_channels=8, batch_size=32, lr=1e-3, max_test_samples=64)


def fm(fixtures_dir):
    return f"npz:{fixtures_dir}/fashionmnist-small.npz"


def config(tmp_path, fixtures_dir, **kw):
    values = dict(TINY, dataset=fm(fixtures_dir), out=str(tmp_path / "run"), max_steps=12)
    values.update(kw)
    return load_config(None, values)


def test_train_writes_everything_and_learns(tmp_path, fixtures_dir):
    result = train(config(tmp_path, fixtures_dir, max_steps=30), progress=False)
    out = tmp_path / "run"
    assert result.steps == 30
    assert (out / "config.yaml").exists() and result.checkpoint.exists()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 30 and summary["train_samples"] == 600
    assert result.test_bpd < 7.5  # from about 8 bits/dim at initialisation
    with open(out / "logs" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train_bpd_step") for r in rows)
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents*"))
    loaded = load_flow(result.checkpoint)
    assert loaded.train_config["dataset"] == fm(fixtures_dir)
    assert loaded.flow.config["flow"] == "RealNVP" and not loaded.flow.training


def test_resume_continues_from_last_checkpoint(tmp_path, fixtures_dir):
    train(config(tmp_path, fixtures_dir, max_steps=6), progress=False)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        train(config(tmp_path, fixtures_dir, max_steps=6), progress=False)
    result = train(config(tmp_path, fixtures_dir, max_steps=10), resume=True, progress=False)
    assert result.steps == 10
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(config(tmp_path, fixtures_dir), resume=str(tmp_path / "missing.ckpt"), progress=False)
    result = train(config(tmp_path, fixtures_dir, max_steps=3), overwrite=True, progress=False)
    assert result.steps == 3


def test_glow_trains_with_rmsprop_and_lr_anneal(tmp_path, fixtures_dir):
    cfg = config(tmp_path, fixtures_dir, flow="Glow", num_coupling_layers_per_scale=2, st_type="highway",
                 optim="RMSprop", lr_anneal=True, num_epochs=2, max_steps=None, max_train_samples=64)
    result = train(cfg, progress=False)
    assert result.steps == 4  # 2 epochs of 64 samples in batches of 32
    assert torch.isfinite(torch.tensor(result.test_bpd))


def test_nan_losses_are_skipped_then_stop_the_run(tmp_path, fixtures_dir, monkeypatch):
    original = FlowModel.bits_per_dim
    calls = {"n": 0}

    def flaky(self, x, **kw):
        calls["n"] += 1
        out = original(self, x, **kw)
        return out * float("nan") if self.training and calls["n"] in (2, 3) else out

    monkeypatch.setattr(FlowModel, "bits_per_dim", flaky)
    train(config(tmp_path, fixtures_dir, max_steps=6), progress=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["skipped_nonfinite_steps"] == 2

    monkeypatch.setattr(FlowModel, "bits_per_dim", lambda self, x, **kw: original(self, x, **kw) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="Lower `lr`"):
        train(config(tmp_path, fixtures_dir, nan_tolerance=3), overwrite=True, progress=False)


def test_config_files_and_errors(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("flow: Glow\nlr: 1e-4\nnum_blocks: 3\n")
    cfg = load_config(good, {"num_blocks": 5})
    # flags override the file; flat architecture names land in the one nested architecture
    assert cfg.architecture.flow == "Glow" and cfg.lr == 1e-4 and cfg.architecture.num_blocks == 5
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


@pytest.mark.parametrize("text,match", [
    ("num_block: 3\n", "did you mean 'num_blocks'"),
    ("optim: Adamm\n", "did you mean 'Adam'"),
    ("batch_size: 0\n", "batch_size"),
    ("lr: fast\n", "lr must be a number"),
    ("aug: 3\n", "true or false"),
    ("- a\n- b\n", "mapping"),
    ("a: [\n", "not valid YAML"),
    ("precision: bf16-true\n", "use bf16 or fp16"),
    ("precision: 16-true\n", "log-determinants"),
])
def test_bad_config_files_are_refused(tmp_path, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(bad)


def test_every_flow_option_is_a_training_option_by_its_flat_name_and_nested():
    """The architecture is one FlowConfig inside TrainConfig (no copied fields); every flow option is still
    accepted by its original flat name, in YAML and as a flag, and nested under `architecture`."""
    from dataclasses import fields

    from flowood.cli.main import build_parser
    from flowood.flows import FlowConfig
    from flowood.training import TrainConfig

    flags = build_parser()._known_flags()
    for f in fields(FlowConfig):
        if f.name == "input_shape":
            continue
        value = {"flow": "Glow", "mask": "channel", "st_type": "convnet"}.get(f.name, f.default)
        if isinstance(f.default, bool):
            value = not f.default
        elif isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            value = f.default + 1
        elif f.name == "num_coupling_layers_per_scale":
            value = 4
        flat = TrainConfig.from_dict({f.name: value})
        nested = TrainConfig.from_dict({"architecture": {f.name: value}})
        assert getattr(flat.architecture, f.name) == getattr(nested.architecture, f.name) == value, f.name
        assert f"--{f.name}" in flags
    assert not {f.name for f in fields(TrainConfig)} & {f.name for f in fields(FlowConfig)}


def test_shipped_configs_load_with_every_value_they_state():
    import yaml

    from flowood.resources import shipped_config, shipped_config_names
    from flowood.training.config import config_path

    names = shipped_config_names()
    assert {"demo", "realnvp_fashionmnist", "glow_fashionmnist", "cycle_mask_demo", "bottleneck_demo"} <= set(names)
    for name in names:
        assert config_path(name) == shipped_config(name)  # --config NAME finds a shipped config by name
        raw = yaml.safe_load(shipped_config(name).read_text())
        cfg = load_config(shipped_config(name))
        for key, value in raw.items():
            where = cfg.architecture if hasattr(cfg.architecture, key) else cfg
            assert getattr(where, key) == value, (name, key)
        resolved = cfg.flow_config((1, 28, 28)).resolved()
        assert resolved.flow in ("RealNVP", "Glow")


def test_unknown_dataset_fails_before_training(tmp_path):
    cfg = load_config(None, dict(dataset="fashion-mnst", out=str(tmp_path / "r")))
    from flowood.data import UnknownDatasetError
    with pytest.raises(UnknownDatasetError, match="fashionmnist"):
        train(cfg, progress=False)


def test_architecture_errors_come_before_data_loading(tmp_path):
    # the data set does not exist here; the mistyped flow must still be the error reported
    with pytest.raises(ConfigError, match="did you mean 'RealNVP'"):
        load_config(None, dict(flow="RealNVPP", dataset="npz:/nonexistent.npz", out=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match="did you mean 'highway'"):
        load_config(None, dict(flow="Glow", st_type="higway"))


def test_negative_training_loss_matches_the_paper():
    from flowood.training import negative_training_loss
    ll_in = torch.tensor([-100.0, -300.0])
    ll_ood = torch.tensor([-50.0, -20000.0, -40000.0])
    loss, share = negative_training_loss(ll_in, ll_ood, negative_val=-30000.0)
    # 0.5 * (mean NLL in = 200 + mean of the OOD log-likelihoods above -30000 = (-50 - 20000) / 2)
    assert float(loss) == pytest.approx(0.5 * (200.0 + (-50.0 - 20000.0) / 2))
    assert float(share) == pytest.approx(2 / 3)
    loss, share = negative_training_loss(ll_in, torch.tensor([-40000.0]), negative_val=-30000.0)
    assert float(loss) == pytest.approx(200.0) and float(share) == 0.0  # nothing above: in-distribution NLL alone


def test_negative_training_pushes_the_ood_likelihood_down(tmp_path, fixtures_dir):
    from flowood.evaluation import evaluate
    mnist = f"npz:{fixtures_dir}/mnist-small.npz"
    common = dict(max_steps=40, num_blocks=1, num_mid_channels=8)
    plain = train(config(tmp_path / "plain", fixtures_dir, **common), progress=False)
    neg = train(config(tmp_path / "neg", fixtures_dir, ood_dataset=mnist, negative_val=-30000.0, **common),
                progress=False)
    bpd = {name: evaluate(r.checkpoint, [mnist], scores=["likelihood"], progress=False).metrics
           for name, r in (("plain", plain), ("neg", neg))}
    assert bpd["neg"]["ood"][mnist]["bpd_mean"] > bpd["plain"]["ood"][mnist]["bpd_mean"] + 1.0
    assert bpd["neg"]["ood"][mnist]["auroc"] > bpd["plain"]["ood"][mnist]["auroc"]
    import csv
    with open(tmp_path / "neg" / "run" / "logs" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train_ood_loglik_step") for r in rows)
    assert any(r.get("train_ood_share_above_negative_val_step") for r in rows)
