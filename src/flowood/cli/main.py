"""The ``flowood`` command: thin subcommands that parse flags, call the library and print.

    flowood train     train a flow (YAML config and/or the original scripts' flags)
    flowood evaluate  OOD scores and metrics of a checkpoint against named OOD sets
    flowood inspect   the paper's analyses of a checkpoint: latents, couplings, likelihood maps, samples
    flowood embed     image sets -> classifier features (.npz) for flows on embeddings
    flowood compare   several evaluations (pixel flow, embedding flow, classifiers; seeds) in one ranking
    flowood reproduce run a suite of the paper's experiments and write results.md / results.html
    flowood detector  fit a detector (a flow, a score and a calibrated threshold) into one file
    flowood score     score new files, folders, globs and .npz files with a detector, one row per input
    flowood export    a flow's log-likelihood as an ONNX / OpenVINO graph, checked against PyTorch
    flowood data      list the known data sets, or fetch one by every route flowood knows

The command line is one table, :data:`COMMANDS`: each command names the function that runs it and the library's
options class its flags are generated from (:func:`flowood.cli.flags.add_options`), so every option's flag, help
line and default come from its one definition (:mod:`flowood.options`). The flags every command shares
(``--overwrite``, ``--no_progress``, ``--threads``) come from :class:`flowood.runtime.RunOptions`; the arguments no
options class defines (what a command works on: ``--checkpoint``, ``--ood``, ...) are :class:`Arg` entries, each
declared once. Known user errors (:class:`flowood.errors.FlowoodError`) print one line and exit 2; anything else is a
bug and keeps its traceback, with a request to report it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowood import __version__, allocator
from flowood.cli.flags import Accumulate, FlowoodParser, add_options, as_flags, given_options, spellings
from flowood.deploy import DetectorOptions
from flowood.deploy.pipeline import detector_info
from flowood.deploy.ray_scoring import RayOptions, RayScoringOptions
from flowood.deploy.select import SelectOptions, select_detector, selection_table, ties_note
from flowood.embed import EmbedOptions
from flowood.engines.common import ExportOptions
from flowood.errors import FlowoodError, InputError
from flowood.evaluation import EvaluateOptions
from flowood.inspect.run import InspectOptions
from flowood.options import ConfigError, from_mapping, option_info, to_mapping
from flowood.reproduce import ReproduceOptions
from flowood.reproduce.runner import DEFAULT_OUT
from flowood.runtime import CoreShare, RunOptions, data_root_option
from flowood.serve.options import ServeOptions
from flowood.training import TrainConfig

__all__ = ["main", "build_parser", "COMMANDS", "Command", "Arg", "as_flags"]


@dataclass(frozen=True)
class Arg:
    """An argument that no options class defines: what a command works on (a checkpoint, data sets, files) or a
    switch of the command line itself (``--list``). Each is declared once and used by every command that takes it.

    Attributes:
        name: the flag's name without dashes (``checkpoint`` is ``--checkpoint``), or a positional argument's.
        help: its help line.
        metavar: its placeholder in ``--help``.
        required: whether the command needs it.
        many: it takes one or more values (a flag may be repeated: ``--ood A --ood B`` is ``--ood A B``).
        positional: an argument without a flag.
        extra: anything else argparse takes (e.g. ``action="store_true"``).
    """

    name: str
    help: str
    metavar: str | None = None
    required: bool = False
    many: bool = False
    positional: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def but(self, **changes: Any) -> Arg:
        """The same argument with ``changes`` (e.g. ``required=True``)."""
        return dataclasses.replace(self, **changes)

    def add(self, parser: Any) -> None:
        """Add it to ``parser`` (a parser or a group of one)."""
        kwargs = dict(self.extra, help=self.help)
        if self.metavar:
            kwargs["metavar"] = self.metavar
        if self.positional:
            parser.add_argument(self.name, nargs="+" if self.many else None, **kwargs)
            return
        if self.many:
            kwargs.update(nargs="+", action=Accumulate, default=[])
        parser.add_argument(*spellings(self.name), dest=self.name, required=self.required, **kwargs)


@dataclass(frozen=True)
class Command:
    """One subcommand of ``flowood``.

    Attributes:
        run: ``run(args, values)`` returns the exit status; ``values`` are the options of ``options`` given as flags.
        options: the library's options class whose fields are the command's flags (None: none).
        help: its line in ``flowood --help``. description: its ``--help`` text. usage: its usage line.
        out: the help line of ``--out`` (what the command writes; None: no ``--out``).
        out_metavar: its placeholder. out_required: whether ``--out`` must be given (else the library's default).
        arguments: its :class:`Arg` entries. one_of: arguments of which exactly one must be given.
        run_options: which of :class:`~flowood.runtime.RunOptions` it takes.
        exclude: fields of ``options`` without a flag (given otherwise, e.g. ``out``).
        subcommands: the commands of ``flowood NAME SUBCOMMAND`` (then the others are unused).
    """

    run: Callable[[argparse.Namespace, dict[str, Any]], int] | None = None
    options: type | None = None
    help: str = ""
    description: str | None = None
    usage: str | None = None
    out: str | None = None
    out_metavar: str = "DIR"
    out_required: bool = True
    arguments: tuple[Arg, ...] = ()
    one_of: tuple[Arg, ...] = ()
    run_options: tuple[str, ...] = ("overwrite", "progress", "threads")
    exclude: tuple[str, ...] = ()
    subcommands: dict[str, Command] = field(default_factory=dict)


@dataclass
class DataOptions:
    """The option of ``flowood data list`` and ``fetch``: where the data sets live."""

    data_root: str | None = data_root_option()


# -- the arguments no options class defines, each declared once ------------------------------------------------
CHECKPOINT = Arg("checkpoint", "a checkpoint written by flowood train (OUT/checkpoints/last.ckpt); evaluate also takes "
                 "an export folder; detector fit: the flow on the inputs, or with --classifier --method flow the flow "
                 "on its features; detector select: a pixel flow whose scores join the candidates", "CKPT")
DETECTOR = Arg("detector", "a detector file written by flowood detector fit or select, or its export folder (scored on "
               "an engine with --backend)", "FILE")
CLASSIFIER = Arg("classifier", "the classifier whose features the detector works on: a file flowood embed wrote "
                 "(.classifier.pt, or its .npz), a torchvision state_dict (with --backbone), or a .pt2", "FILE")


def _help_of(cls: type, name: str) -> str:
    """The help line of the option ``name`` of ``cls``."""
    return next(option_info(f).help for f in dataclasses.fields(cls) if f.name == name)


# -- what each command does after parsing ------------------------------------------------------------------------
def _precision_note(precision: str) -> str:
    """What a training run computed in, for its closing line."""
    from flowood.runtime import native_bf16

    if precision == "bf16" and native_bf16():
        return "bf16 st-networks: the default on this CPU, which has native BF16; --precision fp32 trains in fp32"
    return f"precision {precision}"


def _cmd_train(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.training import load_config, train
    from flowood.training.config import config_path

    path = config_path(args.config) if args.config else None
    config = load_config(path, dict(values, out=args.out))
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=args.progress,
                   inputs=[path] if path else [])
    print(f"test bits/dim: {result.test_bpd:.4f} after {result.steps} steps ({result.seconds:.0f} s, "
          f"{_precision_note(result.precision)})")
    print(f"checkpoint: {result.checkpoint}")
    print(f"logs: {result.out / 'logs'} (tensorboard --logdir {result.out / 'logs' / 'tensorboard'})")
    return 0


def _cmd_evaluate(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.evaluation import evaluate, markdown_table, ranking_table, scores_table
    from flowood.evaluation.evaluate import benchmark_table

    if args.detector is not None:
        from flowood.deploy.evaluate import detector_metrics_table, evaluate_detector

        done = evaluate_detector(args.detector, args.ood, out=args.out, progress=args.progress,
                                 overwrite=args.overwrite, **values)
        print(detector_metrics_table(done.metrics))
        print(f"wrote {Path(args.out) / 'report.html'} (open it in a browser), metrics.json, scores.npz, scores.png")
        return 0
    result = evaluate(args.checkpoint, args.ood, out=args.out, progress=args.progress, overwrite=args.overwrite,
                      **values)
    print(markdown_table(result.metrics))
    print()
    print("AUROC of every score (higher = better detection; 0.5 = chance):")
    print(scores_table(result.metrics))
    if result.metrics.classifier is not None:
        print()
        print(ranking_table(result.metrics))
    if result.metrics.benchmark is not None:
        print()
        print(benchmark_table(result.metrics))
    ind = result.metrics.in_distribution
    for name, m in result.metrics.ood.items():
        if m.bpd_mean < ind.bpd_mean:
            print(f"note: {name} gets HIGHER likelihood than {ind.name} test data "
                  f"({m.bpd_mean:.3f} vs {ind.bpd_mean:.3f} bits/dim, AUROC {m.auroc:.3f}): "
                  "the failure the paper explains")
    print(f"wrote {Path(args.out) / 'report.html'} (open it in a browser), metrics.json, scores.npz, figures")
    return 0


def _cmd_inspect(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.inspect.run import inspect_flow

    result = inspect_flow(args.checkpoint, args.images, args.out, progress=args.progress, overwrite=args.overwrite,
                          **values)
    for label, layers in result.numbers["coupling_prediction"].items():
        r2 = [q["r2"] for q in layers]
        print(f"{label}: mean R² of -t over {len(r2)} couplings = {np.nanmean(r2):.3f}; "
              f"log-likelihood {result.numbers['likelihood_contributions'][label]['total_nats']:.1f} nats/image; "
              f"corr. with PNG complexity {result.numbers['likelihood_vs_complexity_correlation'][label]:.3f}")
    print(f"wrote {result.html} (open it in a browser), inspect.json and the figures in {result.out}")
    return 0


def _cmd_embed(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.embed import embed

    result = embed(args.dataset, args.out, args.ood, progress=args.progress, overwrite=args.overwrite, **values)
    if result.test_accuracy is not None:
        print(f"classifier test accuracy on {args.dataset}: {result.test_accuracy:.4f}")
    if result.classifier is not None:
        print(f"classifier: {result.classifier} (reuse with --weights {result.classifier})")
    for warning in result.warnings:
        print(f"warning: {as_flags(warning)}")
    print(f"wrote {result.out} ({result.dim}-dim embeddings, {result.seconds:.0f} s)")
    for name, path in result.ood_files.items():
        print(f"wrote {path} ({name})")
    ood = " ".join(f"npz:{p}" for p in result.ood_files.values()) or "npz:OTHER.npz"
    print(f"next: flowood train --dataset npz:{result.out} --flow MAF --out runs/emb_flow && "
          f"flowood evaluate --checkpoint runs/emb_flow/checkpoints/last.ckpt --ood {ood} --out runs/emb_eval")
    return 0


def _compare_groups(specs: list[str]) -> dict[str, list[str]]:
    """``LABEL=PATH`` arguments (PATH may be a glob) -> ``{label: [paths]}`` in the order given."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        label, sep, pattern = spec.partition("=")
        if not sep or not label or not pattern:
            raise InputError(f"--runs takes LABEL=EVAL_DIR, got {spec!r} (e.g. --runs 'pixel flow=runs/eval')")
        matches = sorted(glob.glob(str(Path(pattern).expanduser()))) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise InputError(f"--runs {spec!r}: no folder matches {pattern}")
        groups.setdefault(label, []).extend(matches)
    return groups


def _cmd_compare(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.evaluation.compare import compare, comparison_markdown

    result = compare(_compare_groups(args.runs), out=args.out, overwrite=args.overwrite)
    print(f"AUROC on {result.summary['in_distribution']} (in-distribution) against each OOD set, mean ± sd over runs:")
    print(comparison_markdown(result.summary))
    print(f"wrote {Path(args.out) / 'report.html'} (open it in a browser), compare.json, compare.md, auroc.png")
    return 0


def _cmd_reproduce(args: argparse.Namespace, values: dict[str, Any]) -> int:
    import flowood.reproduce as reproduce  # looked up when run (tests replace it)

    o = from_mapping(ReproduceOptions, values)
    if args.list:
        for exp in reproduce.load_experiments(o.configs, o.scale, o.suite, o.only):
            print(f"{exp.name:34s} {exp.title} [{exp.paper}] suites: {', '.join(exp.suites)}")
        return 0
    result = reproduce.reproduce(args.out, o, progress=args.progress,
                                 say=lambda line: print(as_flags(line), flush=True))
    counts = {s: list(result.statuses.values()).count(s) for s in sorted(set(result.statuses.values()))}
    print(f"{', '.join(f'{n} {s}' for s, n in counts.items())} in {result.seconds / 60:.1f} min")
    print(f"wrote {result.markdown}, {result.html} and {result.results_json}")
    return 0 if "failed" not in counts else 1


def _cmd_detector_fit(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.deploy import fit_detector

    detector = fit_detector(args.checkpoint, args.out, classifier=args.classifier, overwrite=args.overwrite,
                            progress=args.progress, **values)
    print(f"wrote {args.out}: {detector.score_name}, threshold {detector.threshold_:.4g} flags "
          f"{100 * detector.fpr:.1f}% of {len(detector.reference_scores_)} in-distribution calibration inputs")
    run = (getattr(detector, "provenance_", {}).get("flow") or {}).get("run")
    if run:
        print(f"the flow on the features: {run}")
    print(f"next: flowood score --detector {args.out} NEW_IMAGES/ --out scores.csv")
    return 0


def _cmd_detector_select(args: argparse.Namespace, values: dict[str, Any]) -> int:
    result = select_detector(args.classifier, args.out, args.ood, checkpoint=args.checkpoint, progress=args.progress,
                             overwrite=args.overwrite, **values)
    print(selection_table(result.detector.selection_))
    note = ties_note(result.detector.selection_)
    if note:
        print(f"note: {note}")
    print(f"wrote {result.out}: {result.chosen}, threshold {result.detector.threshold_:.4g} flags "
          f"{100 * result.detector.fpr:.1f}% of the in-distribution calibration inputs; the ranking: {result.page}")
    print("the validation sets above are the ones it was chosen on: evaluate it on others "
          f"(flowood evaluate --detector {result.out} --ood OTHER_SETS --out DIR)")
    return 0


def _cmd_detector_info(args: argparse.Namespace, values: dict[str, Any]) -> int:
    info = detector_info(args.detector)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "selection":
            print(f"selection ({value['selected']}; chosen: {value['chosen']}, by {value['chosen_by']}; "
                  f"validation sets: {', '.join(value['validation_sets'])}):")
            print(selection_table(value))
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                if v is not None:
                    print(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
        else:
            print(f"{key}: {value}")
    return 0


def _cmd_score(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.deploy import score_files
    from flowood.deploy.ray_scoring import score_files_on_ray

    out = sys.stdout if args.out == "-" else args.out
    on_ray = "ray" in vars(args)  # --ray given, with or without an address
    ray_flags = [f"--{name}" for name in given_options(args, RayOptions)]
    if ray_flags and not on_ray:
        raise ConfigError(f"{', '.join(ray_flags)} {'is' if len(ray_flags) == 1 else 'are'} for scoring on Ray: add "
                          "--ray")
    score = functools.partial(score_files_on_ray, address=args.ray) if on_ray else score_files
    summary = score(args.detector, args.inputs, out, overwrite=args.overwrite, progress=args.progress, **values)
    if out is not sys.stdout:
        adapted = f"; {summary.adapted} adapted to the detector's input (see `adapted`)" if summary.adapted else ""
        print(f"scored {summary.rows - summary.errors} inputs: {summary.flagged} flagged as OOD; "
              f"{summary.errors} could not be scored{adapted}; wrote {summary.out}")
    return 1 if summary.errors else 0


def _cmd_serve(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.options import from_mapping
    from flowood.serve import serve

    options = from_mapping(ServeOptions, values)
    where = "[::1]" if options.host == "::" else options.host
    print(f"serving {args.detector} at http://{where}:{options.port}/score (health: /health, what it serves: "
          f"/metadata, metrics: /metrics, schema: /docs); stop with Ctrl+C or SIGTERM", file=sys.stderr)
    serve(args.detector, options)
    return 0


def _cmd_export(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.deploy.export import export_detector
    from flowood.engines.export import export_flow

    if args.detector is not None:
        done = export_detector(args.detector, args.out, overwrite=args.overwrite, **values)
        print(f"wrote {', '.join(done.files)} to {done.path} in {done.seconds:.0f} s")
        print(f"parity with PyTorch: max |score difference| {done.max_abs_diff:.3g} = {done.max_diff_in_spreads:.3g} "
              f"of the calibration scores' spread (tolerance {done.tolerance:g})")
        if done.quantization:
            _print_int8_check(done.quantization, detector=True)
        backend = "openvino" if values.get("format") == "openvino" else "onnxruntime"
        print(f"next: flowood score --detector {args.out} --backend {backend} NEW_IMAGES/ --out scores.csv")
        return 0
    result = export_flow(args.checkpoint, args.out, overwrite=args.overwrite, **values)
    print(f"wrote {', '.join(result.files)} to {result.path} in {result.seconds:.0f} s")
    print(f"parity with PyTorch: max |log-likelihood difference| {result.max_abs_diff_nats:.3g} nats = "
          f"{result.max_abs_diff_bpd:.3g} bits/dim (tolerance {result.tolerance_bpd:g})")
    backend = "openvino" if values.get("format") == "openvino" else "onnxruntime"
    if result.quantization:
        _print_int8_check(result.quantization)
    print(f"next: flowood evaluate --checkpoint {args.out} --backend {backend} --ood SET [SET ...] --out DIR")
    return 0


def _print_int8_check(quantization: dict[str, Any], detector: bool = False) -> None:
    from flowood.deploy.quantized import detector_check_table
    from flowood.engines.quantized import check_table

    q, check = quantization, quantization["check"]
    what, inputs = (", ".join(q["quantized"]), "images") if detector else ("the st-networks", "inputs")
    print(f"INT8: {q['quantized_tensors']} tensors of {what} quantized ({q['method']}; {', '.join(q['int8_ops'])} in "
          f"INT8), calibrated on {q['calibration_data']['samples']} training {inputs}")
    print(f"INT8 against fp32 on {check['held_out_samples']} held-out {inputs} and each OOD set:")
    print((detector_check_table if detector else check_table)(check))
    if detector:
        shift = (f"mean score shift {check['worst_score_shift']:+.4f} of the spread (at most "
                 f"{check['max_score_shift']:g})")
    else:
        shift = f"mean bits/dim shift {check['worst_bpd_shift']:+.4f} (at most {check['max_bpd_shift']:g})"
    print(f"within the tolerances: {shift}, AUROC shift {check['worst_auroc_shift']:+.4f} (at most "
          f"{check['max_auroc_shift']:g})")


def _cmd_data_list(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.data import DATASETS, PREFIXES, DatasetNotFoundError, data_root, load_dataset

    root = from_mapping(DataOptions, values).data_root
    print(f"data root: {data_root(root)}")
    for name, spec in DATASETS.items():
        try:
            ds = load_dataset(name, "test", root, shape=spec.shape)
            state = f"available ({len(ds)} test samples, {ds.source})"
        except DatasetNotFoundError:
            state = f"not here: flowood data fetch {name}"
        print(f"  {name:13s} {spec.description}\n  {'':13s} {state}")
    for source in PREFIXES.values():
        print(f"  {source.form:13s} {source.description}")
    return 0


def _cmd_data_fetch(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from flowood.data import fetch_dataset

    root, status = from_mapping(DataOptions, values).data_root, 0
    for name in args.names:
        for line in fetch_dataset(name, root):
            print(f"{name}: {line}")
            if line.startswith("failed"):
                status = 1
    return status


# -- the command line as one table -------------------------------------------------------------------------------
_NO_RUN: tuple[str, ...] = ()
COMMANDS: dict[str, Command] = {
    "train": Command(
        _cmd_train, TrainConfig, "train a flow",
        "Train a flow by maximum likelihood. Options come from --config (a YAML file, or the name of a config shipped "
        "with flowood) and flags; flags win.",
        "%(prog)s --out DIR [--config YAML] [--resume [CKPT]] [options]",
        out=_help_of(TrainConfig, "out"), exclude=("out",),
        arguments=(Arg("config", "YAML file of options (flags override it)", "YAML"),
                   Arg("resume", "continue from CKPT, or from OUT/checkpoints/last.ckpt if no path is given", "CKPT",
                       extra={"nargs": "?", "const": True, "default": None}))),
    "evaluate": Command(
        _cmd_evaluate, EvaluateOptions, "OOD scores and metrics of a checkpoint, or of a saved detector",
        "Score in-distribution test data and OOD sets with every requested score of a checkpoint (or of its export "
        "folder, on an engine --backend), or with a saved detector (any family, as flowood score runs it; or its "
        "export folder); write metrics.json, scores.npz, figures and report.html; print tables.",
        "%(prog)s (--checkpoint CKPT | --detector FILE) (--ood NAME [NAME ...] | --benchmark NAME) --out DIR "
        "[options]",
        out="folder for metrics.json, scores.npz, figures and report.html", one_of=(CHECKPOINT, DETECTOR),
        arguments=(Arg("ood", "OOD data sets (repeatable; optional with --benchmark)", "NAME", many=True),)),
    "inspect": Command(
        _cmd_inspect, InspectOptions, "look inside a flow: latents, couplings, likelihood maps, samples",
        "The paper's analyses for one checkpoint and chosen images: writes PNG figures (PDF with --pdf), "
        "inspect.json and inspect.html.",
        "%(prog)s --checkpoint CKPT --images SPEC [SPEC ...] --out DIR [options]",
        out="folder for the figures, inspect.json and inspect.html",
        arguments=(CHECKPOINT.but(required=True),
                   Arg("images", "images to look at, e.g. fashionmnist:test:0-7 (repeatable)", "NAME[:SPLIT[:INDICES]]",
                       required=True, many=True))),
    "embed": Command(
        _cmd_embed, EmbedOptions, "image sets -> feature vectors (.npz) for a tabular flow",
        "Extract the features before a classifier's last layer for the in-distribution set (train and test) and OOD "
        "sets (test), through one backbone and transform. Then: flowood train --dataset npz:OUT --flow MAF; flowood "
        "evaluate --ood npz:OUT_STEM-NAME.npz.",
        "%(prog)s --dataset NAME --out OUT.npz [--ood NAME ...] [options]",
        out="the .npz to write; OOD sets go to OUT_STEM-NAME.npz beside it",
        arguments=(Arg("dataset", "in-distribution image set", "NAME", required=True),
                   Arg("ood", "OOD image sets to embed the same way (repeatable)", "NAME", many=True))),
    "compare": Command(
        _cmd_compare, None, "rank the detectors of several evaluations on their shared OOD sets",
        "Put several `flowood evaluate` outputs (a pixel flow, a flow on embeddings with its classifier-based "
        "detectors, ...) in one ranking of every detector on every OOD set they share, sets matched by the images "
        "behind them. Runs with the same LABEL are seeds of one model: each metric is shown as mean ± sd over them.",
        "%(prog)s --runs LABEL=EVAL_DIR [LABEL=EVAL_DIR ...] --out DIR [options]",
        out="folder for compare.json, compare.md, auroc.png and report.html",
        arguments=(Arg("runs", "evaluation folders with a label; a glob such as 'pixel=runs/r/seed*/eval' gives one "
                       "run per match (repeatable)", "LABEL=EVAL_DIR", required=True, many=True),)),
    "reproduce": Command(
        _cmd_reproduce, ReproduceOptions, "run the paper's experiments and write a results page",
        "Embed, train, evaluate and inspect every experiment of a suite at a scale; write OUT/results.md, "
        "OUT/results.html and OUT/results.json (with --seeds N, mean ± sd over N seeds). Run the same command again "
        "to resume an interrupted suite.",
        "%(prog)s [--suite SUITE] [--scale SCALE] [--out DIR] [--list] [options]",
        out=f"output folder (default: {DEFAULT_OUT})", out_required=False, run_options=("progress", "threads"),
        arguments=(Arg("list", "list the suite's experiments and exit", extra={"action": "store_true"}),)),
    "detector": Command(
        help="fit a detector into one file (for flowood score), or show what one holds",
        description="Fit an OOD detector into one file: a flow on the inputs (--checkpoint) with a score, or a "
                    "pipeline from raw images through a classifier (--classifier) to a detector on its features "
                    "(--method: a flow, or a classifier-based detector); the threshold is calibrated on held-out "
                    "in-distribution data at --fpr.",
        subcommands={
            "fit": Command(
                _cmd_detector_fit, DetectorOptions, "fit a detector on a checkpoint, or on a classifier's features",
                "With --checkpoint: a flow on the inputs and --score. With --classifier (a classifier flowood embed "
                "wrote, a torchvision state_dict with --backbone, or a torch.export .pt2): images -> its features -> "
                "--method; for --method flow, --checkpoint gives a flow trained on those features, else one is "
                "trained here (--flow_config, --max_minutes).",
                "%(prog)s (--checkpoint CKPT | --classifier C --dataset NAME [--method METHOD]) --out DETECTOR.pt "
                "[--fpr F] [options]",
                out="the detector file to write", out_metavar="FILE", arguments=(CHECKPOINT, CLASSIFIER)),
            "select": Command(
                _cmd_detector_select, SelectOptions, "fit every detector, rank them on validation OOD sets, save the "
                "best",
                "Fit every classifier-based detector the classifier allows, a flow on its features (flow:SCORE) and, "
                "with --checkpoint, a pixel flow's scores (pixel:SCORE) on the same in-distribution images; rank them "
                "by AUROC on the validation OOD sets (FPR95 too, with bootstrap intervals); save the best (or "
                "--method) with the ranking, and the ranking as OUT_STEM-selection.html beside it.",
                "%(prog)s --classifier C --dataset NAME --ood VAL_SET [VAL_SET ...] --out DETECTOR.pt [--checkpoint "
                "PIXEL_FLOW] [--method METHOD] [options]",
                out="the detector file to write", out_metavar="FILE",
                arguments=(CLASSIFIER.but(required=True), CHECKPOINT,
                           Arg("ood", "validation OOD sets (repeatable); evaluate the chosen detector on others",
                               "NAME", required=True, many=True))),
            "info": Command(
                _cmd_detector_info, None, "what a detector file holds and where it came from",
                usage="%(prog)s DETECTOR.pt [--json]", run_options=_NO_RUN,
                arguments=(DETECTOR.but(positional=True, metavar="DETECTOR"),
                           Arg("json", "print it as JSON", extra={"action": "store_true"}))),
        }),
    "score": Command(
        _cmd_score, RayScoringOptions, "score new data with a saved detector, one row per input",
        "Score image files, folders (recursively), glob patterns and .npz files (one row per array row) with a "
        "detector from flowood detector fit (or its export folder, on an engine --backend). Writes CSV, JSON Lines or "
        "Parquet, one row per input in the inputs' order: input, score, decision (in/ood), ood, the in-distribution "
        "percentile, error, and how the input was adapted to the detector. With --ray, the same rows come from a "
        "Ray Data job, on workers across a cluster. Exits 0 unless an input could not be scored.",
        "%(prog)s --detector DETECTOR.pt INPUT [INPUT ...] --out FILE.csv|FILE.jsonl|FILE.parquet|- "
        "[--ray [ADDRESS]] [options]",
        out="where to write the rows: .csv, .jsonl, .parquet, or - for the standard output", out_metavar="FILE",
        arguments=(DETECTOR.but(required=True),
                   Arg("inputs", "image files, folders, glob patterns, .npz files", "INPUT", many=True,
                       positional=True),
                   Arg("ray", "score on Ray Data, with workers on the nodes of a Ray cluster (write it after the "
                       "inputs, lest it take one for its ADDRESS). ADDRESS: "
                       f"{_help_of(RayOptions, 'address')}; --ray alone is none", "ADDRESS",
                       extra={"nargs": "?", "const": None, "default": argparse.SUPPRESS}))),
    "serve": Command(
        _cmd_serve, ServeOptions, "serve a detector over HTTP: POST /score, GET /health, /metadata, /metrics",
        "Serve a detector from flowood detector fit or select (or its export folder, on an engine --backend) over "
        "HTTP, on LitServe (extra: serve). POST /score takes image or .npz files as multipart/form-data, or "
        '{"inputs": [{"name": ..., "data": BASE64}]} as JSON, and answers the rows flowood score writes; requests '
        "arriving together are scored in one batch. GET /health (200 once every worker is ready), /metadata (the "
        "detector, its threshold, input, backend and limits), /metrics (Prometheus), /openapi.json and /docs. "
        "Requests over a limit are refused with a 4xx answer; SIGTERM finishes the requests in flight, then stops.",
        "%(prog)s --detector DETECTOR.pt [--host 127.0.0.1] [--port 8000] [options]", out=None,
        run_options=_NO_RUN, arguments=(DETECTOR.but(required=True),)),
    "export": Command(
        _cmd_export, ExportOptions, "export a flow's density, or a whole detector, to ONNX or OpenVINO, checked "
        "against PyTorch",
        "With --checkpoint: the log-likelihood of a trained flow as an ONNX graph (input x: dequantized images in "
        "(0, 1) or vectors, dynamic batch; outputs log_prob in nats and the prior's log-density of each scale), "
        "refused above --tolerance bits/dim of difference from PyTorch. With --detector: the whole detector, from "
        "uint8 images (preprocessing and feature extractor inside) to the anomaly score and the decision, refused "
        "above --score_tolerance. --quantize int8: a flow's st-networks, or a detector's feature extractor, in "
        "INT8, checked against fp32 on held-out and OOD data (--check_ood) and refused beyond --max_bpd_shift "
        "(a detector: --max_score_shift) or --max_auroc_shift. Score with it: flowood evaluate/score --backend "
        "onnxruntime|openvino.",
        "%(prog)s (--checkpoint CKPT | --detector DETECTOR.pt) --out DIR [--format onnx|openvino] [options]",
        out="export folder (model.onnx, model.xml/.bin, flowood-export.json)", one_of=(CHECKPOINT, DETECTOR)),
    "data": Command(
        help="list or fetch data sets",
        subcommands={
            "list": Command(_cmd_data_list, DataOptions, "known data sets and whether each is available here",
                            run_options=_NO_RUN),
            "fetch": Command(_cmd_data_fetch, DataOptions, "get a data set by every route flowood knows",
                             run_options=_NO_RUN,
                             arguments=(Arg("names", "data set names (flowood data list)", many=True,
                                            positional=True),)),
        }),
}


def _add_command(sub: Any, name: str, command: Command) -> None:
    """``command``'s parser (and its subcommands') under the subparsers ``sub``."""
    parser = sub.add_parser(name, help=command.help, description=command.description, usage=command.usage,
                            allow_abbrev=False)  # no silent prefix matches
    if command.subcommands:
        nested = parser.add_subparsers(dest=f"{name}_command", parser_class=FlowoodParser)
        for sub_name, sub_command in command.subcommands.items():
            _add_command(nested, sub_name, sub_command)
        return
    if command.one_of:
        group = parser.add_mutually_exclusive_group(required=True)
        for arg in command.one_of:
            arg.add(group)
    if command.out is not None:
        parser.add_argument(*spellings("out"), dest="out", required=command.out_required, default=None,
                            metavar=command.out_metavar, help=command.out)
    for arg in command.arguments:
        arg.add(parser)
    if command.run_options:
        excluded = tuple(f.name for f in dataclasses.fields(RunOptions) if f.name not in command.run_options)
        add_options(parser, RunOptions, exclude=excluded)
    if command.options is not None:
        add_options(parser, command.options, exclude=command.exclude)


def build_parser() -> argparse.ArgumentParser:
    """The ``flowood`` command's parser (every subcommand), generated from :data:`COMMANDS`."""
    parser = FlowoodParser(prog="flowood", description="Normalizing flows as OOD detectors.", allow_abbrev=False)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=FlowoodParser)
    for name, command in COMMANDS.items():
        _add_command(sub, name, command)
    return parser


def _chosen(args: argparse.Namespace) -> Command | None:
    """The command to run (None: a subcommand is missing, said on the standard error)."""
    command = COMMANDS[args.command]
    if command.subcommands:
        sub_name = getattr(args, f"{args.command}_command", None)
        if sub_name is None:
            print(f"usage: flowood {args.command} {{{','.join(command.subcommands)}}} ...", file=sys.stderr)
            return None
        command = command.subcommands[sub_name]
    return command


def _run(command: Command, args: argparse.Namespace) -> int:
    """Type the options given as flags (the library's defaults for the others) and run the command."""
    run = from_mapping(RunOptions, given_options(args, RunOptions))
    for key, value in to_mapping(run).items():
        setattr(args, key, value)
    values = given_options(args, command.options) if command.options is not None else {}
    with warnings.catch_warnings(), CoreShare(run.threads):
        warnings.showwarning = _show_warning
        return command.run(args, values)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, in command-line words, without the source line Python would print."""
    print(f"warning: {as_flags(str(message))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``flowood`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if args.command not in COMMANDS:
        parser.print_help()
        return 2
    command = _chosen(args)
    if command is None:
        return 2
    # CPU steps reuse freed memory instead of faulting it in again (FLOWOOD_MALLOC_TUNING=0: off)
    allocator.tune_allocator()
    try:
        return _run(command, args)
    except FlowoodError as err:
        print(f"flowood {args.command}: error: {as_flags(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flowood {args.command}: interrupted; files written so far are complete (checkpoints: resume with "
              "--resume)", file=sys.stderr)
        return 130
    except Exception:
        print(f"flowood {args.command}: an unexpected error (a bug in flowood or a library it uses); please report "
              "it to flowood's maintainers with the traceback below and the command you ran", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
