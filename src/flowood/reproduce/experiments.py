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
      long: {train: {...}}       # applied on top of cpu's (an experiment without it runs as at cpu)
      smoke: {train: {...}}
    evaluate: {ood: [mnist, notmnist], scores: [likelihood]}
    inspect: {images: [fashionmnist:test:0-7, mnist:test:0-7]}
    checks:                      # the paper's claims, tested on our numbers
      - {claim: "...", metric: auroc, ood: mnist, better_than: realnvp_fashionmnist}
    paper_numbers:               # numbers to set beside ours, each with where it comes from
      - {metric: test_bpd, value: 3.49, source: "Dinh et al. 2017 (Real NVP), not a table of this paper"}
      - {metric: auroc, ood: mnist, value: 0.1, source: "...", note: "..."}
    paper_numbers_note: "..."    # why no number (or only some) is recorded; shown on the results page

``metric`` is one of the checks' metrics (``test_bpd``, ``ood_bpd``, ``auroc``; the last two name their
``ood`` set), and every number needs a ``source``. The older form, a mapping such as ``{test_bpd: 3.49}``, is
still read: a key that names a metric (``auroc:mnist`` for one of an OOD set) is compared with ours, any other
key is shown as a label, and the source is shown as not given.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from flowood.data.registry import DATASETS, canonical_name
from flowood.embed.backbones import build_backbone, last_linear
from flowood.errors import closest
from flowood.flows.config import ConfigError
from flowood.resources import paper_configs_dir

__all__ = ["Experiment", "Check", "PaperNumber", "load_experiments", "parse_paper_numbers", "default_config_dir",
           "run_folder", "SCALES"]

SCALES = ("smoke", "cpu", "long", "paper")
#: a scale whose overrides are applied on top of another's: ``long`` is the cpu scale trained longer, where an
#: experiment's claim needs it (the bottleneck l-sweep); an experiment without a ``long`` entry runs as at cpu.
_EXTENDS = {"long": "cpu"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEYS = {"name", "title", "paper", "suites", "embed", "train", "scales", "evaluate", "inspect", "checks",
         "paper_numbers", "paper_numbers_note", "notes"}
_CHECK_KEYS = {"claim", "metric", "ood", "below", "above", "better_than", "worse_than"}
_PAPER_NUMBER_KEYS = {"metric", "ood", "value", "source", "note"}
METRICS = ("auroc", "test_bpd", "ood_bpd")
METRIC_LABELS = {"auroc": "AUROC", "test_bpd": "test bits/dim", "ood_bpd": "bits/dim"}


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
class PaperNumber:
    """One number of the paper (or of its authors' code) to set beside ours, with where it comes from.

    ``metric`` is ``test_bpd``, ``ood_bpd`` or ``auroc`` (the last two of the OOD set ``ood``), as in a
    :class:`Check`; it is None for a number of the older mapping form whose key names no metric, which is then
    shown by its ``label`` and not compared. ``source`` says where the number was read (empty: not given).
    """

    metric: str | None
    value: float
    source: str = ""
    ood: str | None = None
    note: str = ""
    label: str = ""

    def describe(self) -> str:
        """What the number measures, e.g. ``AUROC (mnist)`` or ``test bits/dim``."""
        if self.metric is None:
            return self.label
        name = METRIC_LABELS[self.metric]
        return f"{name} ({self.ood})" if self.ood else name


@dataclass
class Experiment:
    """One experiment, resolved for a scale (``scale``)."""

    name: str
    title: str
    paper: str
    suites: list[str]
    train: dict[str, Any]
    evaluate: dict[str, Any]
    inspect: dict[str, Any] | None
    embed: dict[str, Any] | None
    checks: list[Check]
    paper_numbers: list[PaperNumber] = field(default_factory=list)
    paper_numbers_note: str = ""
    notes: str = ""
    path: Path | None = None
    scale: str = "paper"

    def input_shape(self) -> tuple[int, ...] | None:
        """One sample's shape as the flow sees it, known without loading any data: the registered data set's shape,
        or for embeddings the backbone's feature size (None where only the data can tell, e.g. ``folder:`` sets)."""
        if self.embed:
            backbone = self.embed.get("backbone", "smallcnn")
            if backbone == "smallcnn":
                return (int(self.embed.get("embedding_dim", 64)),)
            with torch.device("meta"):  # the architecture only: no weights, no memory
                return (last_linear(build_backbone(backbone))[2].in_features,)
        spec = DATASETS.get(canonical_name(str(self.train.get("dataset", ""))))
        return tuple(spec.shape) if spec is not None and spec.shape is not None else None


def run_folder(out: Path, exp: Experiment, seed: int, seeds: int) -> Path:
    """Where one run of ``exp`` writes: ``OUT/NAME`` with one seed, ``OUT/NAME/seedS`` with several."""
    return out / exp.name if seeds == 1 else out / exp.name / f"seed{seed}"


def default_config_dir() -> Path:
    """The paper's experiments shipped with flowood."""
    return paper_configs_dir()


def _merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = value
    return out


def _number(path: Path, what: str, value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: paper_numbers: {what} must be a number, got {value!r}") from None


def _paper_number_entry(path: Path, entry: Any) -> PaperNumber:
    """One entry of the list form: ``{metric, ood, value, source, note}``."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: paper_numbers: each entry is a mapping with metric, value and source; "
                          f"got {entry!r}")
    bad = sorted(set(entry) - _PAPER_NUMBER_KEYS)
    if bad:
        raise ConfigError(f"{path}: unknown paper_numbers key {bad[0]!r}{closest(bad[0], _PAPER_NUMBER_KEYS)}")
    for key in ("metric", "value", "source"):
        if entry.get(key) in (None, ""):
            raise ConfigError(f"{path}: a paper_numbers entry needs {key!r} (metric, value and source)")
    metric = str(entry["metric"])
    if metric not in METRICS:
        raise ConfigError(f"{path}: paper_numbers metric {metric!r}{closest(metric, METRICS)}; metrics are "
                          f"{', '.join(METRICS)}")
    ood = entry.get("ood")
    if (metric != "test_bpd") != (ood is not None):
        fix = "needs the OOD set as 'ood'" if ood is None else "is of the in-distribution test set; drop 'ood'"
        raise ConfigError(f"{path}: paper_numbers: {metric} {fix}")
    return PaperNumber(metric, _number(path, metric, entry["value"]), str(entry["source"]),
                       None if ood is None else str(ood), str(entry.get("note") or ""))


def _paper_number_legacy(path: Path, key: str, value: Any) -> PaperNumber:
    """One ``key: value`` of the older mapping form (``test_bpd: 3.49``, ``auroc:mnist: 0.1``, or any label)."""
    metric, _, ood = str(key).partition(":")
    if metric in METRICS and (metric == "test_bpd") == (not ood):
        return PaperNumber(metric, _number(path, str(key), value), ood=ood or None)
    return PaperNumber(None, _number(path, str(key), value), label=str(key))


def parse_paper_numbers(path: Path, raw: Any) -> list[PaperNumber]:
    """The ``paper_numbers`` of an experiment file: a list of entries, or the older ``{key: value}`` mapping."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [_paper_number_legacy(path, k, v) for k, v in raw.items()]
    if isinstance(raw, list):
        return [_paper_number_entry(path, e) for e in raw]
    raise ConfigError(f"{path}: paper_numbers must be a list of {{metric, value, source}} entries, got {raw!r}")


_SECTIONS = ("train", "evaluate", "embed", "inspect")


def _scale_override(scales: dict[str, Any], scale: str) -> dict[str, Any]:
    """The overrides of ``scale`` for each section (``train``, ...): its own entry, on top of the entry of the scale it
    extends (``long`` extends ``cpu``), key by key within each section; none for ``paper``."""
    if scale == "paper":
        return {}
    base = _scale_override(scales, _EXTENDS[scale]) if scale in _EXTENDS else {}
    own = scales.get(scale) or {}
    return {key: {**(base.get(key) or {}), **(own.get(key) or {})} for key in _SECTIONS
            if key in base or key in own}


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
    for name, entry in scales.items():
        for key in entry or {}:
            if key not in _SECTIONS:
                raise ConfigError(f"{path}: scales.{name} may override {', '.join(_SECTIONS)}; got {key!r}")
    override = _scale_override(scales, scale)
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
                      checks=checks, paper_numbers=parse_paper_numbers(path, raw.get("paper_numbers")),
                      paper_numbers_note=str(raw.get("paper_numbers_note") or ""), notes=str(raw.get("notes", "")),
                      path=path, scale=scale)


def load_experiments(config_dir: str | Path | None = None, scale: str = "cpu", suite: str = "all",
                     only: list[str] | None = None) -> list[Experiment]:
    """The experiments of ``suite`` in ``config_dir`` (sorted by file name), resolved for ``scale``."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}{closest(scale, SCALES)}; choose {', '.join(SCALES)}")
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
