"""Training configurations (flowood.training.config): YAML files and flags, every flow option by its flat name and
nested, the shipped configs, and clear errors before any data are loaded."""

from __future__ import annotations

import pytest

from flowood.flows import ConfigError
from flowood.training import load_config


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
        vectors = cfg.architecture.flow in ("RealNVPTabular", "MAF")  # the features config: a flow on embeddings
        resolved = cfg.flow_config((64,) if vectors else (1, 28, 28)).resolved()
        assert resolved.flow in (("RealNVPTabular", "MAF") if vectors else ("RealNVP", "Glow"))


def test_architecture_errors_come_before_data_loading(tmp_path):
    # the data set does not exist here; the mistyped flow must still be the error reported
    with pytest.raises(ConfigError, match="did you mean 'RealNVP'"):
        load_config(None, dict(flow="RealNVPP", dataset="npz:/nonexistent.npz", out=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match="did you mean 'highway'"):
        load_config(None, dict(flow="Glow", st_type="higway"))


def test_bad_training_options_are_refused(tmp_path, train_config):
    with pytest.raises(ConfigError, match="did you mean 'rollback'"):
        train_config(tmp_path / "run", nan_policy="rollbak").check()
    with pytest.raises(ConfigError, match="nan_lr_factor"):
        train_config(tmp_path / "run", nan_lr_factor=2.0).check()
