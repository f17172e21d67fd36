"""``flowood reproduce``: run a suite of the paper's experiments end to end (embed, train, evaluate,
inspect), resuming where an interrupted run stopped, and write ``results.md`` and ``results.html``."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from flowood.data import DatasetNotFoundError, data_root as default_data_root, load_dataset
from flowood.outputs import open_output_folder, remove_output_folder, write_text_atomic
from flowood.flows.config import ConfigError
from flowood.reproduce.experiments import Experiment, default_config_dir, load_experiments
from flowood.reproduce.report import write_results

__all__ = ["reproduce", "ReproduceResult", "machine_description"]


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


def _run_one(exp: Experiment, exp_dir: Path, state: dict[str, Any], data_root: str | None, progress: bool,
             say: Callable[[str], None]) -> None:
    from flowood.embed import embed
    from flowood.evaluation import evaluate
    from flowood.training import load_config, train

    stages = state.setdefault("stages", {})
    save = lambda: _write_json(exp_dir / "status.json", state)  # noqa: E731
    train_values = dict(exp.train)
    ood = list(exp.evaluate.get("ood", []))
    # data available here?
    needed = exp.embed["dataset"] if exp.embed else train_values["dataset"]
    reason = _available(needed, data_root)
    if reason is None and train_values.get("ood_dataset"):
        reason = _available(train_values["ood_dataset"], data_root)
    if reason is not None:
        state.update(status="skipped", reason=f"data not available here: {reason}")
        save()
        return
    missing = {}
    for name in list(ood):
        why = _available(name, data_root, shape=(1, 28, 28))
        if why is not None:
            missing[name] = why
            ood.remove(name)
    state["ood_missing"] = missing
    if "embed" not in stages and exp.embed:
        say(f"{exp.name}: embedding {exp.embed['dataset']} and {', '.join(ood)}")
        start = time.time()
        values = dict(exp.embed)
        result = embed(values.pop("backbone", "smallcnn"), values.pop("dataset"), exp_dir / "emb.npz", ood=ood,
                       data_root=data_root, overwrite=True, progress=progress, **values)
        stages["embed"] = {"seconds": round(time.time() - start, 1), "dim": result.dim,
                           "classifier_test_accuracy": result.test_accuracy,
                           "ood_files": {k: str(v) for k, v in result.ood_files.items()}}
        save()
    if exp.embed:
        train_values["dataset"] = f"npz:{exp_dir / 'emb.npz'}"
        ood = [f"npz:{p}" for p in stages["embed"]["ood_files"].values()]
    ckpt = exp_dir / "train" / "checkpoints" / "last.ckpt"
    if "train" not in stages:
        train_values.setdefault("checkpoint_every_n_steps", 200)
        config = load_config(None, dict(train_values, out=str(exp_dir / "train"), data_root=data_root))
        resume = ckpt.exists()
        say(f"{exp.name}: {'resuming' if resume else 'training'} {config.flow} on {config.dataset}")
        result = train(config, resume=True if resume else None, overwrite=not resume, progress=progress)
        stages["train"] = {"test_bpd": result.test_bpd, "steps": result.steps, "seconds": round(result.seconds, 1)}
        save()
    if "evaluate" not in stages:
        say(f"{exp.name}: evaluating against {', '.join(ood) or 'nothing'}")
        e = dict(exp.evaluate)
        e.pop("ood", None)
        start = time.time()
        result = evaluate(ckpt, ood, out=exp_dir / "eval", data_root=data_root, progress=progress, overwrite=True, **e)
        m = result.metrics
        stages["evaluate"] = {
            "test_bpd": m["in_distribution"]["bpd_mean"], "seconds": round(time.time() - start, 1),
            "ood": {name: {"auroc": v["auroc"], "bpd": v["bpd_mean"],
                           "scores": {s: v["scores"][s]["auroc"] for s in v.get("scores", {})}}
                    for name, v in m["ood"].items()}}
        save()
    if exp.inspect and "inspect" not in stages and not exp.embed:
        from flowood.checkpoints import load_flow
        from flowood.inspect.run import inspect_flow, parse_image_spec
        loaded = load_flow(ckpt)
        if loaded.flow.discrete:
            images = [s for s in exp.inspect.get("images", [])
                      if _available(parse_image_spec(s).name, data_root) is None]
            say(f"{exp.name}: inspecting {', '.join(images)}")
            start = time.time()
            values = {k: v for k, v in exp.inspect.items() if k != "images"}
            result = inspect_flow(loaded, images, exp_dir / "inspect", data_root=data_root, progress=progress,
                                  overwrite=True, **values)
            r2 = {label: float(sum(q["r2"] for q in layers) / max(1, len(layers)))
                  for label, layers in result.numbers["coupling_prediction"].items()}
            stages["inspect"] = {"seconds": round(time.time() - start, 1), "mean_r2": r2}
            save()
    state["status"] = "done"
    save()


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
                _run_one(exp, exp_dir, state, data_root, progress, say)
            except KeyboardInterrupt:
                state["status"] = "interrupted"
                _write_json(status_path, state)
                write_results(out, experiments, _collect(out, experiments), run_info, time.time() - start)
                raise
            except Exception as err:  # noqa: BLE001 - one failed experiment must not stop the suite
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
