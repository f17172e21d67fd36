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

Every option's flag, help line and default come from its one definition (:mod:`flowood.options`); the
flags a command shares with others (``--out``, ``--overwrite``, ``--no_progress``) are declared once here.
Known user errors (:class:`flowood.errors.FlowoodError`) print one line and exit 2; anything else is a bug and
keeps its traceback, with a request to report it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from flowood.cli.flags import Accumulate, FlowoodParser, add_options, as_flags, given_options, spellings

__all__ = ["main", "build_parser"]

def _shared(out_help: str, overwrite: bool = True) -> argparse.ArgumentParser:
    """The flags every writing command shares, declared once."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(*spellings("out"), dest="out", required=True, metavar="DIR", help=out_help)
    if overwrite:
        parent.add_argument("--overwrite", action="store_true",
                            help="replace an earlier output of this command in --out (only the files flowood "
                                 "wrote there are removed; never a folder of your own files)")
    parent.add_argument(*spellings("no_progress"), dest="progress", action="store_false",
                        help="hide progress bars")
    parent.add_argument("--progress", dest="progress", action="store_true", help=argparse.SUPPRESS)
    _threads_flag(parent)
    return parent


def _threads_flag(parser: argparse.ArgumentParser) -> None:
    from flowood.runtime import threads_option

    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=threads_option().metadata["option"].help)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.training.config import TrainConfig

    p = sub.add_parser("train", help="train a flow", parents=[_shared("output folder (config, checkpoints, logs)")],
                       usage="%(prog)s --out DIR [--config YAML] [--resume [CKPT]] [options]",
                       description="Train a flow by maximum likelihood. Options come from --config (a YAML file, "
                                   "or the name of a config shipped with flowood) and flags; flags win.")
    p.add_argument("--config", metavar="YAML", help="YAML file of options (flags override it)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue from CKPT, or from OUT/checkpoints/last.ckpt if no path is given")
    add_options(p, TrainConfig, exclude=("out",))


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.evaluation import EvaluateOptions

    p = sub.add_parser("evaluate", help="OOD scores and metrics of a checkpoint, or of a saved detector",
                       usage="%(prog)s (--checkpoint CKPT | --detector FILE) (--ood NAME [NAME ...] | --benchmark "
                             "NAME) --out DIR [options]",
                       parents=[_shared("folder for metrics.json, scores.npz, figures and report.html")],
                       description="Score in-distribution test data and OOD sets with every requested score of a "
                                   "checkpoint, or with a saved detector (any family, as flowood score runs it); "
                                   "write metrics.json, scores.npz, figures and report.html; print tables.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT",
                        help="checkpoint from flowood train (e.g. OUT/checkpoints/last.ckpt), or an export folder")
    source.add_argument("--detector", metavar="FILE", help="a detector file from flowood detector fit or select (or "
                                                           "its export folder, with an engine --backend)")
    p.add_argument("--ood", nargs="+", action=Accumulate, default=[], metavar="NAME",
                   help="OOD data sets (repeatable; optional with --benchmark)")
    add_options(p, EvaluateOptions)


def _compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="rank the detectors of several evaluations on their shared OOD sets",
                       usage="%(prog)s --runs LABEL=EVAL_DIR [LABEL=EVAL_DIR ...] --out DIR [options]",
                       parents=[_shared("folder for compare.json, compare.md, auroc.png and report.html")],
                       description="Put several `flowood evaluate` outputs (a pixel flow, a flow on embeddings with "
                                   "its classifier-based detectors, ...) in one ranking of every detector on every "
                                   "OOD set they share, sets matched by the images behind them. Runs with the same "
                                   "LABEL are seeds of one model: each metric is shown as mean ± sd over them.")
    p.add_argument("--runs", nargs="+", action=Accumulate, required=True, metavar="LABEL=EVAL_DIR",
                   help="evaluation folders with a label; a glob such as 'pixel=runs/r/seed*/eval' gives one run per "
                        "match (repeatable)")


def _inspect_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.inspect.run import InspectOptions

    p = sub.add_parser("inspect", help="look inside a flow: latents, couplings, likelihood maps, samples",
                       usage="%(prog)s --checkpoint CKPT --images SPEC [SPEC ...] --out DIR [options]",
                       parents=[_shared("folder for the figures, inspect.json and inspect.html")],
                       description="The paper's analyses for one checkpoint and chosen images: writes PNG figures "
                                   "(PDF with --pdf), inspect.json and inspect.html.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint from flowood train")
    p.add_argument("--images", nargs="+", action=Accumulate, required=True, metavar="NAME[:SPLIT[:INDICES]]",
                   help="images to look at, e.g. fashionmnist:test:0-7 (repeatable)")
    add_options(p, InspectOptions)


def _embed_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.embed import EmbedOptions

    p = sub.add_parser("embed", help="image sets -> feature vectors (.npz) for a tabular flow",
                       usage="%(prog)s --dataset NAME --out OUT.npz [--ood NAME ...] [options]",
                       parents=[_shared("the .npz to write; OOD sets go to OUT_STEM-NAME.npz beside it")],
                       description="Extract the features before a classifier's last layer for the in-distribution "
                                   "set (train and test) and OOD sets (test), through one backbone and transform. "
                                   "Then: flowood train --dataset npz:OUT --flow MAF; flowood evaluate --ood "
                                   "npz:OUT_STEM-NAME.npz.")
    p.add_argument("--dataset", required=True, metavar="NAME", help="in-distribution image set")
    p.add_argument("--ood", nargs="+", action=Accumulate, default=[], metavar="NAME",
                   help="OOD image sets to embed the same way (repeatable)")
    add_options(p, EmbedOptions)


def _reproduce_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.reproduce import ReproduceOptions

    p = sub.add_parser("reproduce", help="run the paper's experiments and write a results page",
                       usage="%(prog)s [--suite SUITE] [--scale SCALE] [--out DIR] [--list] [options]",
                       description="Embed, train, evaluate and inspect every experiment of a suite at a scale; "
                                   "write OUT/results.md, OUT/results.html and OUT/results.json (with --seeds N, "
                                   "mean ± sd over N seeds). Run the same command again to resume an interrupted "
                                   "suite.")
    p.add_argument(*spellings("out"), dest="out", default=None, metavar="DIR",
                   help="output folder (default: runs/reproduce/SUITE-SCALE)")
    p.add_argument("--list", action="store_true", help="list the suite's experiments and exit")
    p.add_argument(*spellings("no_progress"), dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--progress", dest="progress", action="store_true", help=argparse.SUPPRESS)
    _threads_flag(p)
    add_options(p, ReproduceOptions)


def _detector_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.deploy import DetectorOptions
    from flowood.deploy.select import SelectOptions

    p = sub.add_parser("detector", help="fit a detector into one file (for flowood score), or show what one holds",
                       description="Fit an OOD detector into one file: a flow on the inputs (--checkpoint) with a "
                                   "score, or a pipeline from raw images through a classifier (--classifier) to a "
                                   "detector on its features (--method: a flow, or a classifier-based detector); the "
                                   "threshold is calibrated on held-out in-distribution data at --fpr.")
    detector_sub = p.add_subparsers(dest="detector_command", parser_class=FlowoodParser)
    fit = detector_sub.add_parser("fit", help="fit a detector on a checkpoint, or on a classifier's features",
                                  usage="%(prog)s (--checkpoint CKPT | --classifier C --dataset NAME [--method "
                                        "METHOD]) --out DETECTOR.pt [--fpr F] [options]",
                                  description="With --checkpoint: a flow on the inputs and --score. With --classifier "
                                              "(a classifier flowood embed wrote, a torchvision state_dict with "
                                              "--backbone, or a torch.export .pt2): images -> its features -> "
                                              "--method; for --method flow, --checkpoint gives a flow trained on "
                                              "those features, else one is trained here (--flow_config, "
                                              "--max_minutes).")
    fit.add_argument("--checkpoint", metavar="CKPT", help="checkpoint from flowood train: the flow on the inputs, or "
                                                            "with --classifier --method flow, on its features")
    fit.add_argument("--classifier", metavar="FILE", help="the classifier whose features the detector works on: a "
                                                           "file flowood embed wrote (.classifier.pt, or its .npz), a "
                                                           "torchvision state_dict (with --backbone), or a .pt2")
    fit.add_argument(*spellings("out"), dest="out", required=True, metavar="FILE", help="the detector file to write")
    fit.add_argument("--overwrite", action="store_true", help="replace a detector file flowood wrote earlier")
    fit.add_argument(*spellings("no_progress"), dest="progress", action="store_false", help="hide progress bars")
    _threads_flag(fit)
    add_options(fit, DetectorOptions)
    select = detector_sub.add_parser("select", help="fit every detector, rank them on validation OOD sets, save the "
                                                    "best",
                                     usage="%(prog)s --classifier C --dataset NAME --ood VAL_SET [VAL_SET ...] --out "
                                           "DETECTOR.pt [--checkpoint PIXEL_FLOW] [--method METHOD] [options]",
                                     description="Fit every classifier-based detector the classifier allows, a flow on "
                                                 "its features (flow:SCORE) and, with --checkpoint, a pixel flow's "
                                                 "scores (pixel:SCORE) on the same in-distribution images; rank them "
                                                 "by AUROC on the validation OOD sets (FPR95 too, with bootstrap "
                                                 "intervals); save the best (or --method) with the ranking, and the "
                                                 "ranking as OUT_STEM-selection.html beside it.")
    select.add_argument("--classifier", required=True, metavar="FILE", help="the classifier whose features the "
                                                                             "candidates use (as for detector fit)")
    select.add_argument("--checkpoint", metavar="CKPT", help="a pixel flow from flowood train, whose scores join the "
                                                             "candidates")
    select.add_argument("--ood", nargs="+", action=Accumulate, required=True, metavar="NAME",
                        help="validation OOD sets (repeatable); evaluate the chosen detector on others")
    select.add_argument(*spellings("out"), dest="out", required=True, metavar="FILE", help="the detector file to write")
    select.add_argument("--overwrite", action="store_true", help="replace a detector file (and page) flowood wrote")
    select.add_argument(*spellings("no_progress"), dest="progress", action="store_false", help="hide progress bars")
    _threads_flag(select)
    add_options(select, SelectOptions)
    info = detector_sub.add_parser("info", help="what a detector file holds and where it came from",
                                   usage="%(prog)s DETECTOR.pt [--json]")
    info.add_argument("detector", metavar="DETECTOR", help="a detector file")
    info.add_argument("--json", action="store_true", help="print it as JSON")


def _score_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.deploy import ScoringOptions

    p = sub.add_parser("score", help="score new data with a saved detector, one row per input",
                       usage="%(prog)s --detector DETECTOR.pt INPUT [INPUT ...] --out FILE.csv|FILE.jsonl|- "
                             "[options]",
                       description="Score image files, folders (recursively), glob patterns and .npz files (one row "
                                   "per array row) with a detector from flowood detector fit. Writes CSV or JSON "
                                   "Lines: input, score, decision (in/ood), ood, the in-distribution percentile, "
                                   "error, and how the input was adapted to the detector. Exits 0 unless an input "
                                   "could not be scored.")
    p.add_argument("--detector", required=True, metavar="FILE", help="a detector file from flowood detector fit")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns, .npz files")
    p.add_argument(*spellings("out"), dest="out", required=True, metavar="FILE",
                   help="where to write the rows: .csv, .jsonl, or - for the standard output")
    p.add_argument("--overwrite", action="store_true", help="replace a scores file flowood wrote earlier")
    p.add_argument(*spellings("no_progress"), dest="progress", action="store_false", help="hide the progress bar")
    _threads_flag(p)
    add_options(p, ScoringOptions)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.engines.export import ExportOptions

    p = sub.add_parser("export", help="export a flow's density, or a whole detector, to ONNX or OpenVINO, checked "
                                      "against PyTorch",
                       parents=[_shared("export folder (model.onnx, model.xml/.bin, flowood-export.json)")],
                       usage="%(prog)s (--checkpoint CKPT | --detector DETECTOR.pt) --out DIR [--format "
                             "onnx|openvino] [options]",
                       description="With --checkpoint: the log-likelihood of a trained flow as an ONNX graph (input "
                                   "x: dequantized images in (0, 1) or vectors, dynamic batch; outputs log_prob in "
                                   "nats and the prior's log-density of each scale), refused above --tolerance "
                                   "bits/dim of difference from PyTorch. With --detector: the whole detector, from "
                                   "uint8 images (preprocessing and feature extractor inside) to the anomaly score and "
                                   "the decision, refused above --score_tolerance. Score with it: flowood "
                                   "evaluate/score --backend onnxruntime|openvino.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by flowood train")
    source.add_argument("--detector", metavar="FILE", help="a detector file written by flowood detector fit or "
                                                           "select")
    add_options(p, ExportOptions)


def _data_parser(sub: argparse._SubParsersAction) -> None:
    from flowood.runtime import data_root_option

    root_help = data_root_option().metadata["option"].help
    p = sub.add_parser("data", help="list or fetch data sets")
    data_sub = p.add_subparsers(dest="data_command", parser_class=FlowoodParser)
    p_list = data_sub.add_parser("list", help="known data sets and whether each is available here")
    p_list.add_argument(*spellings("data_root"), dest="data_root", default=None, metavar="DIR", help=root_help)
    p_fetch = data_sub.add_parser("fetch", help="get a data set by every route flowood knows")
    p_fetch.add_argument("names", nargs="+", help="data set names (flowood data list)")
    p_fetch.add_argument(*spellings("data_root"), dest="data_root", default=None, metavar="DIR", help=root_help)


def build_parser() -> argparse.ArgumentParser:
    """The ``flowood`` command's parser (every subcommand)."""
    parser = FlowoodParser(prog="flowood", description="Normalizing flows as OOD detectors.", allow_abbrev=False)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=FlowoodParser)
    sub._parser_class = lambda **kw: FlowoodParser(allow_abbrev=False, **kw)  # no silent prefix matches
    for add in (_train_parser, _evaluate_parser, _inspect_parser, _embed_parser, _compare_parser, _reproduce_parser,
                _detector_parser, _score_parser, _export_parser, _data_parser):
        add(sub)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from flowood.training import TrainConfig, load_config, train
    from flowood.training.config import config_path

    path = config_path(args.config) if args.config else None
    config = load_config(path, dict(given_options(args, TrainConfig), out=args.out))
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=args.progress,
                   inputs=[path] if path else [])
    print(f"test bits/dim: {result.test_bpd:.4f} after {result.steps} steps ({result.seconds:.0f} s)")
    print(f"checkpoint: {result.checkpoint}")
    print(f"logs: {result.out / 'logs'} (tensorboard --logdir {result.out / 'logs' / 'tensorboard'})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flowood.evaluation import EvaluateOptions, evaluate, markdown_table, ranking_table, scores_table
    from flowood.evaluation.evaluate import benchmark_table

    if args.detector is not None:
        from flowood.deploy.evaluate import detector_metrics_table, evaluate_detector

        done = evaluate_detector(args.detector, args.ood, out=args.out, progress=args.progress,
                                 overwrite=args.overwrite, **given_options(args, EvaluateOptions))
        print(detector_metrics_table(done.metrics))
        print(f"wrote {Path(args.out) / 'report.html'} (open it in a browser), metrics.json, scores.npz, scores.png")
        return 0
    result = evaluate(args.checkpoint, args.ood, out=args.out, progress=args.progress, overwrite=args.overwrite,
                      **given_options(args, EvaluateOptions))
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


def _cmd_inspect(args: argparse.Namespace) -> int:
    from flowood.inspect.run import InspectOptions, inspect_flow

    result = inspect_flow(args.checkpoint, args.images, args.out, progress=args.progress, overwrite=args.overwrite,
                          **given_options(args, InspectOptions))
    for label, layers in result.numbers["coupling_prediction"].items():
        r2 = [q["r2"] for q in layers]
        print(f"{label}: mean R² of -t over {len(r2)} couplings = {np.nanmean(r2):.3f}; "
              f"log-likelihood {result.numbers['likelihood_contributions'][label]['total_nats']:.1f} nats/image; "
              f"corr. with PNG complexity {result.numbers['likelihood_vs_complexity_correlation'][label]:.3f}")
    print(f"wrote {result.html} (open it in a browser), inspect.json and the figures in {result.out}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from flowood.embed import EmbedOptions, embed

    result = embed(args.dataset, args.out, args.ood, progress=args.progress, overwrite=args.overwrite,
                   **given_options(args, EmbedOptions))
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


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from flowood.options import from_mapping
    from flowood.reproduce import ReproduceOptions, load_experiments, reproduce

    o = from_mapping(ReproduceOptions, given_options(args, ReproduceOptions))
    if args.list:
        for exp in load_experiments(o.configs, o.scale, o.suite, o.only):
            print(f"{exp.name:34s} {exp.title} [{exp.paper}] suites: {', '.join(exp.suites)}")
        return 0
    out = args.out or f"runs/reproduce/{o.suite}-{o.scale}"
    result = reproduce(o.suite, o.scale, out, o.configs, o.only, o.data_root, seeds=o.seeds, progress=args.progress,
                       say=lambda line: print(as_flags(line), flush=True))
    counts = {s: list(result.statuses.values()).count(s) for s in sorted(set(result.statuses.values()))}
    print(f"{', '.join(f'{n} {s}' for s, n in counts.items())} in {result.seconds / 60:.1f} min")
    print(f"wrote {result.markdown}, {result.html} and {result.results_json}")
    return 0 if "failed" not in counts else 1


def _cmd_detector(args: argparse.Namespace) -> int:
    if args.detector_command == "info":
        return _detector_info(args)
    if args.detector_command == "select":
        return _detector_select(args)
    if args.detector_command != "fit":
        print("usage: flowood detector {fit,select,info} ...", file=sys.stderr)
        return 2
    from flowood.deploy import DetectorOptions, fit_detector

    detector = fit_detector(args.checkpoint, args.out, classifier=args.classifier, overwrite=args.overwrite,
                            progress=args.progress, **given_options(args, DetectorOptions))
    print(f"wrote {args.out}: {detector.score_name}, threshold {detector.threshold_:.4g} flags "
          f"{100 * detector.fpr:.1f}% of {len(detector.reference_scores_)} in-distribution calibration inputs")
    run = (getattr(detector, "provenance_", {}).get("flow") or {}).get("run")
    if run:
        print(f"the flow on the features: {run}")
    print(f"next: flowood score --detector {args.out} NEW_IMAGES/ --out scores.csv")
    return 0


def _detector_select(args: argparse.Namespace) -> int:
    from flowood.deploy.select import SelectOptions, select_detector, selection_table, ties_note

    result = select_detector(args.classifier, args.out, args.ood, checkpoint=args.checkpoint, progress=args.progress,
                             overwrite=args.overwrite, **given_options(args, SelectOptions))
    print(selection_table(result.detector.selection_))
    note = ties_note(result.detector.selection_)
    if note:
        print(f"note: {note}")
    print(f"wrote {result.out}: {result.chosen}, threshold {result.detector.threshold_:.4g} flags "
          f"{100 * result.detector.fpr:.1f}% of the in-distribution calibration inputs; the ranking: {result.page}")
    print("the validation sets above are the ones it was chosen on: evaluate it on others "
          f"(flowood evaluate --detector {result.out} --ood OTHER_SETS --out DIR)")
    return 0


def _detector_info(args: argparse.Namespace) -> int:
    import json

    from flowood.deploy.pipeline import detector_info

    info = detector_info(args.detector)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "selection":
            from flowood.deploy.select import selection_table

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


def _cmd_score(args: argparse.Namespace) -> int:
    from flowood.deploy import ScoringOptions, is_scores_file, load_detector, score_inputs, write_scores
    from flowood.options import from_mapping
    from flowood.outputs import check_output_file

    o = from_mapping(ScoringOptions, given_options(args, ScoringOptions))
    out = None if args.out == "-" else args.out
    if out is not None:
        check_output_file(out, is_scores_file, [args.detector, *args.inputs], args.overwrite)
    detector = load_detector(args.detector, device=o.device, backend=o.backend)
    rows = score_inputs(detector, args.inputs, o.batch_size, progress=args.progress and out is not None,
                        mismatch=o.mismatch)
    summary = write_scores(rows, out, o.format, stream=sys.stdout if out is None else None)
    if out is not None:
        adapted = f"; {summary.adapted} adapted to the detector's input (see `adapted`)" if summary.adapted else ""
        print(f"scored {summary.rows - summary.errors} inputs: {summary.flagged} flagged as OOD; "
              f"{summary.errors} could not be scored{adapted}; wrote {summary.out}")
    return 1 if summary.errors else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from flowood.engines.export import ExportOptions, export_flow

    if args.detector is not None:
        from flowood.deploy.export import export_detector

        done = export_detector(args.detector, args.out, overwrite=args.overwrite,
                               **given_options(args, ExportOptions))
        print(f"wrote {', '.join(done.files)} to {done.path} in {done.seconds:.0f} s")
        print(f"parity with PyTorch: max |score difference| {done.max_abs_diff:.3g} = {done.max_diff_in_spreads:.3g} "
              f"of the calibration scores' spread (tolerance {done.tolerance:g})")
        print(f"next: flowood score --detector {args.out} --backend onnxruntime NEW_IMAGES/ --out scores.csv")
        return 0
    result = export_flow(args.checkpoint, args.out, overwrite=args.overwrite, **given_options(args, ExportOptions))
    print(f"wrote {', '.join(result.files)} to {result.path} in {result.seconds:.0f} s")
    print(f"parity with PyTorch: max |log-likelihood difference| {result.max_abs_diff_nats:.3g} nats = "
          f"{result.max_abs_diff_bpd:.3g} bits/dim (tolerance {result.tolerance_bpd:g})")
    print(f"next: flowood evaluate --checkpoint {args.out} --backend onnxruntime --ood SET [SET ...] --out DIR")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from flowood.data import DATASETS, PREFIXES, DatasetNotFoundError, data_root, fetch_dataset, load_dataset

    if args.data_command == "fetch":
        status = 0
        for name in args.names:
            for line in fetch_dataset(name, args.data_root):
                print(f"{name}: {line}")
                if line.startswith("failed"):
                    status = 1
        return status
    if args.data_command == "list":
        print(f"data root: {data_root(args.data_root)}")
        for name, spec in DATASETS.items():
            try:
                ds = load_dataset(name, "test", args.data_root, shape=spec.shape)
                state = f"available ({len(ds)} test samples, {ds.source})"
            except DatasetNotFoundError:
                state = f"not here: flowood data fetch {name}"
            print(f"  {name:13s} {spec.description}\n  {'':13s} {state}")
        for source in PREFIXES.values():
            print(f"  {source.form:13s} {source.description}")
        return 0
    print("usage: flowood data {list,fetch NAME...}", file=sys.stderr)
    return 2


def _compare_groups(specs: list[str]) -> dict[str, list[str]]:
    """``LABEL=PATH`` arguments (PATH may be a glob) -> ``{label: [paths]}`` in the order given."""
    import glob

    from flowood.errors import InputError

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


def _cmd_compare(args: argparse.Namespace) -> int:
    from flowood.evaluation.compare import compare, comparison_markdown

    result = compare(_compare_groups(args.runs), out=args.out, overwrite=args.overwrite)
    print(f"AUROC on {result.summary['in_distribution']} (in-distribution) against each OOD set, mean ± sd over runs:")
    print(comparison_markdown(result.summary))
    print(f"wrote {Path(args.out) / 'report.html'} (open it in a browser), compare.json, compare.md, auroc.png")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, in command-line words, without the source line Python would print."""
    print(f"warning: {as_flags(str(message))}", file=sys.stderr)


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "inspect": _cmd_inspect, "embed": _cmd_embed,
            "compare": _cmd_compare, "reproduce": _cmd_reproduce, "detector": _cmd_detector, "score": _cmd_score,
            "export": _cmd_export, "data": _cmd_data}


def main(argv: list[str] | None = None) -> int:
    """Run ``flowood`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from flowood import __version__
        print(__version__)
        return 0
    if args.command not in COMMANDS:
        parser.print_help()
        return 2
    from flowood.allocator import tune_allocator
    from flowood.errors import FlowoodError
    from flowood.runtime import CoreShare

    tune_allocator()  # CPU steps reuse freed memory instead of faulting it in again (FLOWOOD_MALLOC_TUNING=0: off)
    try:
        with warnings.catch_warnings(), CoreShare(getattr(args, "threads", None)):
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
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
