"""Files that ship inside the flowood package (found with importlib.resources, so an installed flowood finds
them as well as a checkout): the demo and example configs, and the paper's experiments."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["configs_dir", "paper_configs_dir", "shipped_config", "shipped_config_names"]


def configs_dir() -> Path:
    """The folder of shipped configs (``demo.yaml``, ...; the paper's experiments in ``paper/``)."""
    return Path(str(resources.files("flowood") / "configs"))


def paper_configs_dir() -> Path:
    """The paper's experiments, one YAML file each (``flowood reproduce``'s default)."""
    return configs_dir() / "paper"


def shipped_config_names() -> list[str]:
    """Names of the shipped training configs (``demo``, ``glow_fashionmnist``, ...)."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def shipped_config(name: str) -> Path | None:
    """The shipped training config called ``name`` (with or without ``.yaml``), or None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    path = configs_dir() / f"{Path(stem).name}.yaml"
    return path if path.is_file() and Path(stem).name == stem else None
