"""``flowood reproduce``: run a suite of the paper's experiments end to end (embed, train, evaluate,
inspect), once or with several seeds, resuming where an interrupted run stopped, and write ``results.md``,
``results.html`` and ``results.json``."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from flowood.checkpoints import load_flow
from flowood.data import DatasetNotFoundError, load_dataset
from flowood.data import data_root as default_data_root
from flowood.embed import embed
from flowood.evaluation import evaluate
from flowood.flows.config import ConfigError
from flowood.inspect.run import inspect_flow, parse_image_spec
from flowood.options import merge_options, option
from flowood.outputs import open_output_folder, remove_output_folder, write_text_atomic
from flowood.reproduce.aggregate import overall_status
from flowood.reproduce.experiments import SCALES, Experiment, default_config_dir, load_experiments, run_folder
from flowood.reproduce.report import write_results
from flowood.runtime import data_root_option
from flowood.training import load_config, train

__all__ = ["reproduce", "ReproduceOptions", "ReproduceResult", "machine_description", "run_seeds", "seeded",
           "default_out", "DEFAULT_OUT"]

#: where :func:`reproduce` writes when no ``out`` is given (SUITE and SCALE: the options').
DEFAULT_OUT = "runs/reproduce/SUITE-SCALE"


@dataclass
class ReproduceResult:
    """Where the results are, and each experiment's status (``done``, ``skipped``, ``failed``).

    With several seeds an experiment's status is its seeds' when they agree (else ``failed`` if one failed, else
    their counts); ``seed_statuses`` holds each seed's (experiment -> seed -> status).
    """

    out: Path
    markdown: Path
    html: Path
    statuses: dict[str, str]
    seconds: float
    results_json: Path | None = None
    seed_statuses: dict[str, dict[int, str]] = field(default_factory=dict)


def machine_description() -> str:
    """One line about the machine, for the results page."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPU cores, {gpu}; "
            f"Python {platform.python_version()}, PyTorch {torch.__version__}")


def _run_spec(exp: Experiment) -> str:
    """A fingerprint of what a run computes (its name and the embed, train, evaluate and inspect settings); the
    title, claims and the paper's numbers may change without starting the run again."""
    spec = {"name": exp.name, "embed": exp.embed, "train": exp.train, "evaluate": exp.evaluate,
            "inspect": exp.inspect}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_seeds(exp: Experiment, seeds: int) -> list[int]:
    """The seeds of an experiment's ``seeds`` runs: its training ``seed`` (0 unless its YAML sets one), +1, +2, ..."""
    base = int(exp.train.get("seed", 0))
    return [base + k for k in range(seeds)]


def seeded(exp: Experiment, offset: int) -> Experiment:
    """The experiment's run number ``offset``: the seed of every stage (embed, train, evaluate, inspect; 0 unless
    the YAML sets it) raised by ``offset``. Run 0 is the experiment as written."""
    if offset == 0:
        return exp

    def shift(values: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if values is None else dict(values, seed=int(values.get("seed", 0)) + offset)

    return replace(exp, train=shift(exp.train), evaluate=shift(exp.evaluate), embed=shift(exp.embed),
                   inspect=shift(exp.inspect))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def _available(name: str, root: str | None, shape: tuple[int, ...] | None = None) -> str | None:
    """None if ``name`` loads here, else the reason it does not."""
    try:
        load_dataset(name, "test", root, shape=shape)
        return None
    except DatasetNotFoundError as err:
        return str(err).split(". Get it")[0] + f" (flowood data fetch {name})"


@dataclass
class ReproduceOptions:
    """Which experiments :func:`reproduce` runs: every field is an option (``flowood reproduce --help``)."""

    suite: str = option("all", "suite of experiments (see --list)", metavar="SUITE")
    scale: str = option("cpu", "smoke (minutes), cpu (hours on 2 cores), long (cpu, with longer training where a "
                        "claim needs it), paper (GPU)", choices=SCALES)
    configs: str | None = option(None, "experiment folder (default: the paper's experiments shipped with flowood)",
                                 metavar="DIR")
    only: list[str] | None = option(None, "run only these experiments", metavar="EXPERIMENT")
    data_root: str | None = data_root_option()
    seeds: int = option(1, "run each experiment N times, with seeds seed, seed+1, ... (the experiment's seed, 0 "
                           "unless its YAML sets one); with N > 1 each run writes OUT/NAME/seedS and the results show "
                           "mean ± sd over the seeds", minimum=1, metavar="N")


@dataclass
class Stage:
    """One experiment's run: where it writes, its status (saved after every stage), and how to report."""

    exp: Experiment
    folder: Path
    state: dict[str, Any]
    data_root: str | None
    progress: bool
    say: Callable[[str], None]
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.exp.name

    @property
    def done(self) -> dict[str, Any]:
        return self.state.setdefault("stages", {})

    def save(self) -> None:
        _write_json(self.folder / "status.json", self.state)


def _run_one(run: Stage) -> None:
    """Embed (if asked), train, evaluate and inspect one experiment, skipping the stages already done."""
    exp = run.exp
    needed = [exp.embed["dataset"] if exp.embed else exp.train["dataset"], exp.train.get("ood_dataset")]
    reason = next((r for r in (_available(n, run.data_root) for n in needed if n) if r is not None), None)
    if reason is not None:
        run.state.update(status="skipped", reason=f"data not available here: {reason}")
        run.save()
        return
    ood = list(exp.evaluate.get("ood", []))
    missing = {name: why for name in ood if (why := _available(name, run.data_root, shape=(1, 28, 28)))}
    run.state["ood_missing"] = missing
    ood = [name for name in ood if name not in missing]
    train_values = dict(exp.train)
    if exp.embed:
        ood = _embed_stage(run, ood)
        train_values["dataset"] = f"npz:{run.folder / 'emb.npz'}"
    checkpoint = _train_stage(run, train_values)
    _evaluate_stage(run, checkpoint, ood)
    if exp.inspect and not exp.embed:
        _inspect_stage(run, checkpoint)
    run.state["status"] = "done"
    run.save()


def _embed_stage(run: Stage, ood: list[str]) -> list[str]:
    """Embeddings of the in-distribution and OOD sets; returns the OOD sets as ``npz:`` names."""
    if "embed" not in run.done:
        values = dict(run.exp.embed)
        dataset = values.pop("dataset")
        run.say(f"{run.label}: embedding {dataset} and {', '.join(ood)}")
        start = time.time()
        result = embed(dataset, run.folder / "emb.npz", ood, data_root=run.data_root, overwrite=True,
                       progress=run.progress, **values)
        run.done["embed"] = {"seconds": round(time.time() - start, 1), "dim": result.dim,
                             "classifier_test_accuracy": result.test_accuracy,
                             "ood_files": {k: str(v) for k, v in result.ood_files.items()}}
        run.save()
    return [f"npz:{p}" for p in run.done["embed"]["ood_files"].values()]


def _train_stage(run: Stage, train_values: dict[str, Any]) -> Path:
    """Train (or resume an interrupted training); returns the final checkpoint."""
    checkpoint = run.folder / "train" / "checkpoints" / "last.ckpt"
    if "train" not in run.done:
        train_values.setdefault("checkpoint_every_n_steps", 200)
        config = load_config(None, dict(train_values, out=str(run.folder / "train"), data_root=run.data_root))
        resume = checkpoint.exists()
        run.say(f"{run.label}: {'resuming' if resume else 'training'} {config.architecture.flow} on "
                f"{config.dataset}")
        result = train(config, resume=True if resume else None, overwrite=not resume, progress=run.progress)
        run.done["train"] = {"test_bpd": result.test_bpd, "steps": result.steps, "seconds": round(result.seconds, 1)}
        run.save()
    return checkpoint


def _evaluate_stage(run: Stage, checkpoint: Path, ood: list[str]) -> None:
    if "evaluate" in run.done:
        return
    run.say(f"{run.label}: evaluating against {', '.join(ood) or 'nothing'}")
    values = {k: v for k, v in run.exp.evaluate.items() if k != "ood"}
    start = time.time()
    result = evaluate(checkpoint, ood, out=run.folder / "eval", data_root=run.data_root, progress=run.progress,
                      overwrite=True, **values)
    m = result.metrics
    run.done["evaluate"] = {
        "test_bpd": m.in_distribution.bpd_mean, "seconds": round(time.time() - start, 1),
        "ood": {name: {"auroc": v.auroc, "bpd": v.bpd_mean, "scores": {s: e.auroc for s, e in v.scores.items()}}
                for name, v in m.ood.items()}}
    run.save()


def _inspect_stage(run: Stage, checkpoint: Path) -> None:
    if "inspect" in run.done:
        return
    loaded = load_flow(checkpoint)
    if not loaded.flow.discrete:
        return
    images = [s for s in run.exp.inspect.get("images", [])
              if _available(parse_image_spec(s).name, run.data_root) is None]
    run.say(f"{run.label}: inspecting {', '.join(images)}")
    start = time.time()
    values = {k: v for k, v in run.exp.inspect.items() if k != "images"}
    result = inspect_flow(loaded, images, run.folder / "inspect", data_root=run.data_root, progress=run.progress,
                          overwrite=True, **values)
    r2 = {label: float(sum(q["r2"] for q in layers) / max(1, len(layers)))
          for label, layers in result.numbers["coupling_prediction"].items()}
    run.done["inspect"] = {"seconds": round(time.time() - start, 1), "mean_r2": r2}
    run.save()


def default_out(options: ReproduceOptions) -> Path:
    """The folder :func:`reproduce` writes to when no ``out`` is given: :data:`DEFAULT_OUT` for these options."""
    return Path(DEFAULT_OUT.replace("SUITE", options.suite).replace("SCALE", options.scale))


def reproduce(out: str | Path | None = None, options: ReproduceOptions | None = None, *, progress: bool = False,
              say: Callable[[str], None] = print, **option_values: Any) -> ReproduceResult:
    """Run every experiment of ``suite`` at ``scale``, ``seeds`` times each; rerunning the same command resumes.

    Each run keeps a ``status.json`` (stages done and their numbers) in ``OUT/NAME`` (one seed) or
    ``OUT/NAME/seedS`` (several seeds: S = the experiment's seed, +1, ...); finished stages are not repeated, an
    interrupted training continues from its last checkpoint, and a run whose configuration changed since is
    started again. ``results.md``, ``results.html`` and ``results.json`` (every metric as mean ± sd over the
    seeds, with each seed's value) are rewritten after every run.

    Args:
        out: the output folder (default: :func:`default_out`, ``runs/reproduce/SUITE-SCALE``).
        options: a :class:`ReproduceOptions` (its fields are listed there).
        progress: show progress bars.
        say: where each line of progress goes (default: print).
        **option_values: any field of :class:`ReproduceOptions`, e.g. ``suite="mini", scale="smoke", seeds=3``.

    Raises:
        ConfigError: an unknown suite, scale, experiment or option. OutputError: ``out`` cannot be written.
    """
    start = time.time()
    o = merge_options(ReproduceOptions, options, option_values)
    out = Path(out) if out is not None else default_out(o)
    experiments = load_experiments(o.configs, o.scale, o.suite, o.only)
    folder_inputs = [o.configs or default_config_dir(), default_data_root(o.data_root)]
    with open_output_folder(out, "reproduce", folder_inputs, resume=True) as folder:
        command = "flowood " + " ".join(sys.argv[1:]) if sys.argv and "flowood" in sys.argv[0] else \
            f"flowood reproduce --suite {o.suite} --scale {o.scale} --out {out}" + \
            (f" --seeds {o.seeds}" if o.seeds > 1 else "")
        info = {"suite": o.suite, "scale": o.scale, "seeds": o.seeds, "command": command,
                "machine": machine_description()}
        return _reproduce(Suite(experiments, folder.path, o.seeds, o.data_root, progress, say, info, start))


@dataclass
class Suite:
    """One call of :func:`reproduce`: its experiments, where and how often they run, and how to report."""

    experiments: list[Experiment]
    out: Path
    seeds: int
    data_root: str | None
    progress: bool
    say: Callable[[str], None]
    info: dict[str, Any]
    start: float

    def runs(self, exp: Experiment) -> list[tuple[int, Path]]:
        """``(seed, folder)`` of each of an experiment's runs."""
        return [(seed, run_folder(self.out, exp, seed, self.seeds)) for seed in run_seeds(exp, self.seeds)]

    def collect(self) -> dict[str, list[dict[str, Any]]]:
        """Every experiment's runs' statuses (``not run`` where none is recorded), in seed order."""
        states = {}
        for exp in self.experiments:
            states[exp.name] = []
            for seed, folder in self.runs(exp):
                path = folder / "status.json"
                state = json.loads(path.read_text()) if path.exists() else {"status": "not run"}
                state.setdefault("seed", seed)
                states[exp.name].append(state)
        return states

    def write(self) -> tuple[Path, Path, Path]:
        """Write the results pages from what every run has recorded so far."""
        return write_results(self.out, self.experiments, self.collect(), self.info, time.time() - self.start)


def _reproduce(suite: Suite) -> ReproduceResult:
    seed_statuses: dict[str, dict[int, str]] = {}
    for exp in suite.experiments:
        exp_dir = suite.out / exp.name
        if exp_dir.resolve().parent != suite.out.resolve():  # names are checked on loading; never leave the folder
            raise ConfigError(f"experiment name {exp.name!r} would write outside {suite.out}")
        seed_statuses[exp.name] = {}
        for offset, (seed, folder) in enumerate(suite.runs(exp)):
            seed_statuses[exp.name][seed] = _run_seed(suite, seeded(exp, offset), seed, folder)
            suite.write()
    md, html, results = suite.write()
    all_runs = suite.collect()
    statuses = {name: overall_status(all_runs[name]) for name in seed_statuses}
    return ReproduceResult(suite.out, md, html, statuses, time.time() - suite.start, results, seed_statuses)


def _load_state(folder: Path, exp: Experiment, label: str, say: Callable[[str], None]) -> dict[str, Any]:
    """A run's recorded status; empty (its outputs removed) when it was recorded for another configuration."""
    path = folder / "status.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    spec = _run_spec(exp)
    if state and state.get("run_spec") != spec:
        why = ("its configuration changed since the last run" if "run_spec" in state
               else "its status was recorded by an earlier version of flowood")
        say(f"{label}: {why}; starting it again")
        state = {}
        for sub in ("train", "eval", "inspect"):
            remove_output_folder(folder / sub)  # only the files flowood wrote there
    state["run_spec"] = spec
    return state


def _run_seed(suite: Suite, exp: Experiment, seed: int, folder: Path) -> str:
    """Run (or keep) one seed of an experiment in ``folder``; returns its status."""
    label = exp.name if suite.seeds == 1 else f"{exp.name} (seed {seed})"
    folder.mkdir(parents=True, exist_ok=True)
    state = _load_state(folder, exp, label, suite.say)
    state.update(title=exp.title, seed=seed)
    if state.get("status") in ("done", "skipped"):
        suite.say(f"{label}: {state['status']} earlier; kept")
        return state["status"]
    state["status"] = "running"
    try:
        _run_one(Stage(exp, folder, state, suite.data_root, suite.progress, suite.say, label))
    except KeyboardInterrupt:
        state["status"] = "interrupted"
        _write_json(folder / "status.json", state)
        suite.write()
        raise
    except Exception as err:
        state.update(status="failed", reason=f"{type(err).__name__}: {err}")
        _write_json(folder / "status.json", state)
        suite.say(f"{label}: failed: {type(err).__name__}: {err}")
    return state["status"]
