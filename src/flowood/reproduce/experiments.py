"""The paper's experiments as YAML files (shipped in ``flowood/configs/paper/``): what to train, at which scale, what to
evaluate and inspect, and which of the paper's claims each run can confirm or refute.

One file per experiment::

    name: cycle_mask_fashionmnist
    title: RealNVP with the cycle mask on FashionMNIST
    paper: "Section 6, claim 4"
    suites: [all, inductive_bias]
    embed: {...}                 # optional: embed images first (flowood embed's arguments)
    train: {...}                 # TrainConfig at the paper's scale (the original's hyper-parameters)
    scales:                      # overrides of `train` (and `evaluate`, `embed`) per scale
      cpu: {train: {...}, evaluate: {...}}
      smoke: {train: {...}}
    evaluate: {ood: [mnist, notmnist], scores: [likelihood]}
    inspect: {images: [fashionmnist:test:0-7, mnist:test:0-7]}
    checks:                      # the paper's claims, tested on our numbers
      - {claim: "...", metric: auroc, ood: mnist, better_than: realnvp_fashionmnist}
    paper_numbers: {test_bpd: 3.49}   # only numbers the paper (or our notes of it) gives
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowood.errors import closest
from flowood.flows.config import ConfigError

__all__ = ["Experiment", "Check", "load_experiments", "default_config_dir", "SCALES"]

SCALES = ("smoke", "cpu", "paper")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEYS = {"name", "title", "paper", "suites", "embed", "train", "scales", "evaluate", "inspect", "checks",
         "paper_numbers", "notes"}
_CHECK_KEYS = {"claim", "metric", "ood", "below", "above", "better_than", "worse_than"}
METRICS = ("auroc", "test_bpd", "ood_bpd")


@dataclass
class Check:
    """One claim of the paper as a test on our numbers.

    ``metric`` is ``auroc`` (of ``ood``), ``test_bpd`` (in-distribution) or ``ood_bpd`` (of ``ood``);
    it must be ``below`` / ``above`` a value, or ``better_than`` / ``worse_than`` the same metric of
    another experiment of the run (higher AUROC is better; lower bits/dim is better).
    """

    claim: str
    metric: str
    ood: str | None = None
    below: float | None = None
    above: float | None = None
    better_than: str | None = None
    worse_than: str | None = None


@dataclass
class Experiment:
    """One experiment, resolved for a scale."""

    name: str
    title: str
    paper: str
    suites: list[str]
    train: dict[str, Any]
    evaluate: dict[str, Any]
    inspect: dict[str, Any] | None
    embed: dict[str, Any] | None
    checks: list[Check]
    paper_numbers: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    path: Path | None = None


def default_config_dir() -> Path:
    """The paper's experiments shipped with flowood."""
    from flowood.resources import paper_configs_dir

    return paper_configs_dir()


def _merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = value
    return out


def _parse(path: Path, scale: str) -> Experiment:
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of experiment fields")
    for key in raw:
        if key not in _KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{closest(key, _KEYS)}")
    for key in ("name", "title", "train", "evaluate"):
        if key not in raw:
            raise ConfigError(f"{path}: missing {key!r}")
    if not _NAME.match(str(raw["name"])):
        raise ConfigError(f"{path}: experiment name {raw['name']!r} must be a plain folder name (letters, digits, "
                          "'_', '-', '.'; not starting with '.'), because results are written to OUT/NAME")
    scales = raw.get("scales") or {}
    for s in scales:
        if s not in SCALES:
            raise ConfigError(f"{path}: unknown scale {s!r}{closest(s, SCALES)}; scales are {', '.join(SCALES)}")
    override = scales.get(scale, {}) if scale != "paper" else {}
    for key in override:
        if key not in ("train", "evaluate", "embed", "inspect"):
            raise ConfigError(f"{path}: scales.{scale} may override train, evaluate, embed, inspect; got {key!r}")
    checks = []
    for c in raw.get("checks") or []:
        bad = set(c) - _CHECK_KEYS
        if bad:
            raise ConfigError(f"{path}: unknown check key {sorted(bad)[0]!r}{closest(sorted(bad)[0], _CHECK_KEYS)}")
        check = Check(**c)
        if check.metric not in METRICS:
            raise ConfigError(f"{path}: check metric {check.metric!r}{closest(check.metric, METRICS)}")
        checks.append(check)
    inspect = raw.get("inspect")
    if inspect is not None:
        inspect = _merge(inspect, override.get("inspect"))
    embed = raw.get("embed")
    if embed is not None:
        embed = _merge(embed, override.get("embed"))
    return Experiment(name=str(raw["name"]), title=str(raw["title"]), paper=str(raw.get("paper", "")),
                      suites=list(raw.get("suites") or ["all"]), train=_merge(raw["train"], override.get("train")),
                      evaluate=_merge(raw["evaluate"], override.get("evaluate")), inspect=inspect, embed=embed,
                      checks=checks, paper_numbers=dict(raw.get("paper_numbers") or {}),
                      notes=str(raw.get("notes", "")), path=path)


def load_experiments(config_dir: str | Path | None = None, scale: str = "cpu", suite: str = "all",
                     only: list[str] | None = None) -> list[Experiment]:
    """The experiments of ``suite`` in ``config_dir`` (sorted by file name), resolved for ``scale``."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}{closest(scale, SCALES)}; choose smoke, cpu or paper")
    folder = Path(config_dir) if config_dir else default_config_dir()
    if not folder.is_dir():
        raise ConfigError(f"experiment folder {folder} not found; pass `configs` (a folder of experiment YAML files)")
    experiments = [_parse(p, scale) for p in sorted(folder.glob("*.yaml"))]
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ConfigError(f"{folder}: experiment names repeat")
    suites = sorted({s for e in experiments for s in e.suites})
    if suite not in suites:
        raise ConfigError(f"unknown suite {suite!r}{closest(suite, suites)}; suites in {folder}: {', '.join(suites)}")
    chosen = [e for e in experiments if suite in e.suites]
    if only:
        for name in only:
            if name not in names:
                raise ConfigError(f"unknown experiment {name!r}{closest(name, names)}")
        chosen = [e for e in chosen if e.name in only]
    for e in chosen:
        for check in e.checks:
            for other in (check.better_than, check.worse_than):
                if other is not None and other not in names:
                    raise ConfigError(f"{e.path}: check refers to unknown experiment {other!r}{closest(other, names)}")
    return chosen
