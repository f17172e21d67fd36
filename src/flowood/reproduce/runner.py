"""``flowood reproduce``: run a suite of the paper's experiments end to end (embed, train, evaluate,
inspect), resuming where an interrupted run stopped, and write ``results.md`` and ``results.html``."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from flowood.data import DatasetNotFoundError, load_dataset
from flowood.data import data_root as default_data_root
from flowood.flows.config import ConfigError
from flowood.options import option
from flowood.outputs import open_output_folder, remove_output_folder, write_text_atomic
from flowood.reproduce.experiments import SCALES, Experiment, default_config_dir, load_experiments
from flowood.reproduce.report import write_results
from flowood.runtime import data_root_option

__all__ = ["reproduce", "ReproduceOptions", "ReproduceResult", "machine_description"]


@dataclass
class ReproduceResult:
    """Where the results are, and each experiment's status (``done``, ``skipped``, ``failed``)."""

    out: Path
    markdown: Path
    html: Path
    statuses: dict[str, str]
    seconds: float


def machine_description() -> str:
    """One line about the machine, for the results page."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPU cores, {gpu}; "
            f"Python {platform.python_version()}, PyTorch {torch.__version__}")


def _spec_hash(exp: Experiment) -> str:
    spec = {k: v for k, v in asdict(exp).items() if k != "path"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    scale: str = option("cpu", "smoke (minutes), cpu (hours on 2 cores), paper (GPU)", choices=SCALES)
    configs: str | None = option(None, "experiment folder (default: the paper's experiments shipped with flowood)",
                                 metavar="DIR")
    only: list[str] | None = option(None, "run only these experiments", metavar="EXPERIMENT")
    data_root: str | None = data_root_option()


@dataclass
class Stage:
    """One experiment's run: where it writes, its status (saved after every stage), and how to report."""

    exp: Experiment
    folder: Path
    state: dict[str, Any]
    data_root: str | None
    progress: bool
    say: Callable[[str], None]

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
    from flowood.embed import embed

    if "embed" not in run.done:
        values = dict(run.exp.embed)
        dataset = values.pop("dataset")
        run.say(f"{run.exp.name}: embedding {dataset} and {', '.join(ood)}")
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
    from flowood.training import load_config, train

    checkpoint = run.folder / "train" / "checkpoints" / "last.ckpt"
    if "train" not in run.done:
        train_values.setdefault("checkpoint_every_n_steps", 200)
        config = load_config(None, dict(train_values, out=str(run.folder / "train"), data_root=run.data_root))
        resume = checkpoint.exists()
        run.say(f"{run.exp.name}: {'resuming' if resume else 'training'} {config.architecture.flow} on "
                f"{config.dataset}")
        result = train(config, resume=True if resume else None, overwrite=not resume, progress=run.progress)
        run.done["train"] = {"test_bpd": result.test_bpd, "steps": result.steps, "seconds": round(result.seconds, 1)}
        run.save()
    return checkpoint


def _evaluate_stage(run: Stage, checkpoint: Path, ood: list[str]) -> None:
    from flowood.evaluation import evaluate

    if "evaluate" in run.done:
        return
    run.say(f"{run.exp.name}: evaluating against {', '.join(ood) or 'nothing'}")
    values = {k: v for k, v in run.exp.evaluate.items() if k != "ood"}
    start = time.time()
    result = evaluate(checkpoint, ood, out=run.folder / "eval", data_root=run.data_root, progress=run.progress,
                      overwrite=True, **values)
    m = result.metrics
    run.done["evaluate"] = {
        "test_bpd": m["in_distribution"]["bpd_mean"], "seconds": round(time.time() - start, 1),
        "ood": {name: {"auroc": v["auroc"], "bpd": v["bpd_mean"],
                       "scores": {s: v["scores"][s]["auroc"] for s in v.get("scores", {})}}
                for name, v in m["ood"].items()}}
    run.save()


def _inspect_stage(run: Stage, checkpoint: Path) -> None:
    from flowood.checkpoints import load_flow
    from flowood.inspect.run import inspect_flow, parse_image_spec

    if "inspect" in run.done:
        return
    loaded = load_flow(checkpoint)
    if not loaded.flow.discrete:
        return
    images = [s for s in run.exp.inspect.get("images", [])
              if _available(parse_image_spec(s).name, run.data_root) is None]
    run.say(f"{run.exp.name}: inspecting {', '.join(images)}")
    start = time.time()
    values = {k: v for k, v in run.exp.inspect.items() if k != "images"}
    result = inspect_flow(loaded, images, run.folder / "inspect", data_root=run.data_root, progress=run.progress,
                          overwrite=True, **values)
    r2 = {label: float(sum(q["r2"] for q in layers) / max(1, len(layers)))
          for label, layers in result.numbers["coupling_prediction"].items()}
    run.done["inspect"] = {"seconds": round(time.time() - start, 1), "mean_r2": r2}
    run.save()


def reproduce(suite: str = "all", scale: str = "cpu", out: str | Path = "runs/reproduce",
              config_dir: str | Path | None = None, only: list[str] | None = None, data_root: str | None = None,
              progress: bool = False, say: Callable[[str], None] = print) -> ReproduceResult:
    """Run every experiment of ``suite`` at ``scale``; rerunning the same command resumes.

    Each experiment keeps ``OUT/NAME/status.json`` (stages done and their numbers); finished stages
    are not repeated, an interrupted training continues from its last checkpoint, and an experiment
    whose configuration changed since is started again. ``results.md`` and ``results.html`` are
    rewritten after every experiment.
    """
    start = time.time()
    experiments = load_experiments(config_dir, scale, suite, only)
    folder_inputs = [config_dir or default_config_dir(), default_data_root(data_root)]
    with open_output_folder(out, "reproduce", folder_inputs, resume=True) as folder:
        return _reproduce(experiments, folder.path, suite, scale, data_root, progress, say, start)


def _reproduce(experiments: list[Experiment], out: Path, suite: str, scale: str, data_root: str | None,
               progress: bool, say: Callable[[str], None], start: float) -> ReproduceResult:
    command = "flowood " + " ".join(sys.argv[1:]) if sys.argv and "flowood" in sys.argv[0] else \
        f"flowood reproduce --suite {suite} --scale {scale} --out {out}"
    run_info = {"suite": suite, "scale": scale, "command": command, "machine": machine_description()}
    states: dict[str, dict[str, Any]] = {}
    for exp in experiments:
        exp_dir = out / exp.name
        if exp_dir.resolve().parent != out.resolve():  # names are checked on loading; never leave the suite folder
            raise ConfigError(f"experiment name {exp.name!r} would write outside {out}")
        exp_dir.mkdir(parents=True, exist_ok=True)
        status_path = exp_dir / "status.json"
        state = json.loads(status_path.read_text()) if status_path.exists() else {}
        spec = _spec_hash(exp)
        if state.get("spec") not in (None, spec):
            say(f"{exp.name}: its configuration changed since the last run; starting it again")
            state = {}
            for sub in ("train", "eval", "inspect"):
                remove_output_folder(exp_dir / sub)  # only the files flowood wrote there
        state["spec"] = spec
        state["title"] = exp.title
        if state.get("status") in ("done", "skipped"):
            say(f"{exp.name}: {state['status']} earlier; kept")
        else:
            state["status"] = "running"
            try:
                _run_one(Stage(exp, exp_dir, state, data_root, progress, say))
            except KeyboardInterrupt:
                state["status"] = "interrupted"
                _write_json(status_path, state)
                write_results(out, experiments, _collect(out, experiments), run_info, time.time() - start)
                raise
            except Exception as err:
                state.update(status="failed", reason=f"{type(err).__name__}: {err}")
                _write_json(status_path, state)
                say(f"{exp.name}: failed: {type(err).__name__}: {err}")
        states[exp.name] = state
        write_results(out, experiments, _collect(out, experiments), run_info, time.time() - start)
    md, html = write_results(out, experiments, _collect(out, experiments), run_info, time.time() - start)
    return ReproduceResult(out, md, html, {k: v.get("status", "?") for k, v in states.items()}, time.time() - start)


def _collect(out: Path, experiments: list[Experiment]) -> dict[str, dict[str, Any]]:
    states = {}
    for exp in experiments:
        path = out / exp.name / "status.json"
        states[exp.name] = json.loads(path.read_text()) if path.exists() else {"status": "not run"}
    return states
