"""The ``flowood`` command: thin subcommands that parse flags, call the library and print.

    flowood train     train a flow (YAML config and/or the original scripts' flags)
    flowood evaluate  OOD scores and metrics of a checkpoint against named OOD sets
    flowood inspect   the paper's analyses of a checkpoint: latents, couplings, likelihood maps, samples
    flowood embed     image sets -> classifier features (.npz) for flows on embeddings
    flowood reproduce run a suite of the paper's experiments and write results.md / results.html
    flowood data      list the known data sets, or fetch one by every route flowood knows
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings

import numpy as np
from dataclasses import fields
from pathlib import Path

__all__ = ["main", "build_parser"]

class Accumulate(argparse.Action):
    """A list flag that may be repeated: ``--ood A --ood B`` is ``--ood A B`` (argparse's own ``nargs='+'``
    keeps only the last occurrence, silently). The first occurrence replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = getattr(namespace, "_accumulated", set())
        current = list(getattr(namespace, self.dest) or []) if self.dest in seen else []
        setattr(namespace, self.dest, current + list(values))
        namespace._accumulated = seen | {self.dest}


def as_flags(message: str) -> str:
    """A library message in command-line words: ```overwrite=True``` -> ``--overwrite``, ```lr``` -> ``--lr``,
    ```device='cpu'``` -> ``--device cpu``.

    Example:
        >>> as_flags("pass `overwrite=True` or lower `lr`")
        'pass --overwrite or lower --lr'
    """
    def flag(match: re.Match) -> str:
        name, _, value = match.group(1).partition("=")
        option = "--" + name
        if not value or value == "True":
            return option
        if value == "False":
            return "--no_" + name
        value = value.strip("'\"[]").replace("', '", " ").replace("'", "")
        return f"{option} {value}"
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*(?:=[^`]*)?)`", flag, message)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, without the source line Python would print."""
    print(f"warning: {as_flags(str(message))}", file=sys.stderr)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: printed as one line, never as a traceback."""
    from flowood.errors import FlowoodError
    return (FlowoodError, FileNotFoundError, ValueError)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from flowood.training.config import TrainConfig

    p.add_argument("--config", help="YAML file of options (flags below override it)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue from CKPT, or from OUT/checkpoints/last.ckpt if no path is given")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (only the files flowood wrote there are removed)")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.add_argument("--data-root", dest="data_root", default=None,
                   help="data root (default: $FLOWOOD_DATA or ~/.cache/flowood)")
    helps = {"dataset": "in-distribution data set (flowood data list)", "out": "output directory",
             "flow": "RealNVP, Glow, RealNVPTabular, MAF, or RealNVPCycleMask / RealNVPMaskHorizontal / RealNVP8Layers / "
                     "RealNVPSmall",
             "mask": "checkerboard, checkerboard_packed, horizontal, vertical, cycle (Glow also: channel)",
             "st_type": "resnet, convnet, highway, autoencoder, resnet_ae", "optim": "Adam, RMSprop, AdamW, SGD",
             "devices": "devices per node (int, list or 'auto')", "max_minutes": "stop training after this many minutes",
             "nan_policy": "on a NaN/Inf loss or gradient: skip (default) or rollback (last good state, lower lr)",
             "checkpoint_every_n_steps": "also write last.ckpt every N steps (0: epoch ends only)",
             "precision": "32-true (default); bf16-mixed or 16-mixed (GPU) run the st-networks in low precision, "
                          "log-determinants stay fp32"}
    for f in fields(TrainConfig):
        if f.name in ("extra", "data_root"):
            continue
        default = f.default
        flag = f"--{f.name}"
        if isinstance(default, bool):
            if default:
                p.add_argument(f"--no_{f.name}", dest=f.name, action="store_const", const=False, default=None,
                               help=f"turn off {f.name}")
            else:
                p.add_argument(flag, dest=f.name, action="store_const", const=True, default=None,
                               help=helps.get(f.name, f"turn on {f.name}"))
            continue
        kind = {int: int, float: float}.get(type(default), str)
        if f.name in ("max_steps", "max_train_samples", "max_test_samples", "num_coupling_layers_per_scale"):
            kind = int
        if f.name == "max_minutes":
            kind = float
        if f.name == "devices":
            kind = str  # an int, a list such as "0,1", or "auto"; Lightning parses it
        p.add_argument(flag, dest=f.name, type=kind, default=None, help=helps.get(f.name, f"(default: {default})"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowood", description="Normalizing flows as OOD detectors.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p_train = sub.add_parser("train", help="train a flow", description="Train a flow by maximum likelihood.")
    _add_train_flags(p_train)

    p_eval = sub.add_parser("evaluate", help="OOD scores and metrics of a checkpoint",
                            description="Score in-distribution test data and OOD sets with every requested score; "
                                        "write metrics.json, scores.npz, figures and report.html; print tables.")
    p_eval.add_argument("--checkpoint", required=True, help="checkpoint from flowood train (e.g. OUT/checkpoints/last.ckpt)")
    p_eval.add_argument("--ood", nargs="+", action=Accumulate, required=True,
                        help="OOD data set names (repeatable)")
    p_eval.add_argument("--out", required=True, help="output directory")
    p_eval.add_argument("--dataset", help="in-distribution set (default: the checkpoint's training set)")
    p_eval.add_argument("--data-root", dest="data_root", default=None, help="data root")
    p_eval.add_argument("--max_samples", type=int, default=None, help="score at most this many samples per set")
    p_eval.add_argument("--batch_size", type=int, default=512)
    p_eval.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p_eval.add_argument("--seed", type=int, default=0, help="seeds subsets and dequantization noise")
    p_eval.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% intervals")
    p_eval.add_argument("--scores", nargs="+", action=Accumulate, default=None,
                        help="scores to compute (default: every score that needs no extra model): likelihood, "
                             "complexity, complexity_jp2, typicality, latent_last_scale, latent_early_scales, "
                             "likelihood_ratio, waic")
    p_eval.add_argument("--ensemble", nargs="+", action=Accumulate, default=None, metavar="CKPT",
                        help="more checkpoints trained on the same data, for the waic score")
    p_eval.add_argument("--background", default=None, metavar="CKPT",
                        help="background flow for likelihood_ratio (default: train one on perturbed inputs)")
    p_eval.add_argument("--background_steps", type=int, default=1000,
                        help="training steps of the perturbation background flow")
    p_eval.add_argument("--typicality_batch", type=int, default=1,
                        help="group size of the typicality test (1: single-sample form)")
    p_eval.add_argument("--fit_samples", type=int, default=10000,
                        help="in-distribution training samples for scores that fit")
    p_eval.add_argument("--compile", action="store_true",
                        help="score through torch.compile: same numbers, faster on large sets after a slow first batch")
    p_eval.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="st-networks in bf16/fp16, log-determinants in fp32 (for GPUs; default fp32)")
    p_eval.add_argument("--no_progress", action="store_true")
    p_eval.add_argument("--overwrite", action="store_true",
                        help="replace an earlier evaluation in --out (only the files flowood wrote there are removed)")

    p_insp = sub.add_parser("inspect", help="look inside a flow: latents, couplings, likelihood maps, samples",
                            description="The paper's analyses for one checkpoint and chosen images: writes PNG "
                                        "figures (PDF with --pdf), inspect.json and inspect.html.")
    p_insp.add_argument("--checkpoint", required=True, help="checkpoint from flowood train")
    p_insp.add_argument("--images", action="append", required=True, metavar="NAME[:SPLIT[:INDICES]]",
                        help="images to look at, e.g. fashionmnist:test:0-7 (repeat for more sets)")
    p_insp.add_argument("--out", required=True, help="output directory")
    p_insp.add_argument("--noise-samples", dest="noise_samples", type=int, default=40,
                        help="dequantization noises averaged for the mean latents (paper: 40)")
    p_insp.add_argument("--temperatures", type=float, nargs="+", action=Accumulate, default=[0.5, 0.75, 1.0])
    p_insp.add_argument("--pdf", action="store_true", help="also write every figure as PDF")
    p_insp.add_argument("--complexity-samples", dest="complexity_samples", type=int, default=500,
                        help="images per set for the likelihood-vs-complexity scatter")
    p_insp.add_argument("--data-root", dest="data_root", default=None)
    p_insp.add_argument("--seed", type=int, default=0)
    p_insp.add_argument("--no_progress", action="store_true")
    p_insp.add_argument("--overwrite", action="store_true",
                        help="replace an earlier inspection in --out (only the files flowood wrote there are removed)")

    p_emb = sub.add_parser("embed", help="image sets -> feature vectors (.npz) for a tabular flow",
                           description="Extract the features before a classifier's last layer for the in-distribution "
                                       "set (train and test) and OOD sets (test), through one backbone and transform. "
                                       "Then: flowood train --dataset npz:OUT --flow MAF; flowood evaluate --ood "
                                       "npz:OUT_STEM-NAME.npz.")
    p_emb.add_argument("--backbone", default="smallcnn",
                       help="smallcnn (flowood's, fast on CPU) or any torchvision classification model, e.g. resnet18, "
                            "efficientnet_b4 (the paper's 1792-dim features)")
    p_emb.add_argument("--dataset", required=True, help="in-distribution image set")
    p_emb.add_argument("--out", required=True, help="output .npz; OOD sets go to OUT_STEM-NAME.npz beside it")
    p_emb.add_argument("--ood", nargs="+", action=Accumulate, default=[],
                       help="OOD image sets to embed the same way (repeatable)")
    p_emb.add_argument("--weights", default=None,
                       help="DEFAULT (or a torchvision weights name) to download pretrained weights; a file (a "
                            "classifier from --train-classifier, or a torchvision state_dict)")
    p_emb.add_argument("--train-classifier", dest="train_classifier", action="store_true",
                       help="train the backbone on the in-distribution labels first (no download needed)")
    p_emb.add_argument("--epochs", type=int, default=2, help="classifier training epochs")
    p_emb.add_argument("--lr", type=float, default=1e-3, help="classifier learning rate (Adam)")
    p_emb.add_argument("--batch_size", type=int, default=128)
    p_emb.add_argument("--image-size", dest="image_size", type=int, default=None,
                       help="resize images to this before the backbone")
    p_emb.add_argument("--embedding-dim", dest="embedding_dim", type=int, default=64, help="smallcnn's feature size")
    p_emb.add_argument("--max_train_samples", type=int, default=None)
    p_emb.add_argument("--device", default="auto")
    p_emb.add_argument("--seed", type=int, default=0)
    p_emb.add_argument("--overwrite", action="store_true")
    p_emb.add_argument("--data-root", dest="data_root", default=None)
    p_emb.add_argument("--no_progress", action="store_true")

    p_rep = sub.add_parser("reproduce", help="run the paper's experiments (configs/paper) and write a results page",
                           description="Embed, train, evaluate and inspect every experiment of a suite at a scale; "
                                       "write OUT/results.md and OUT/results.html. Run the same command again to "
                                       "resume an interrupted suite.")
    p_rep.add_argument("--suite", default="all", help="suite name (see --list); default: all")
    p_rep.add_argument("--scale", default="cpu", help="smoke (minutes), cpu (hours on 2 cores), paper (GPU)")
    p_rep.add_argument("--out", default=None, help="output directory (default: runs/reproduce/SUITE-SCALE)")
    p_rep.add_argument("--only", nargs="+", action=Accumulate, default=None, metavar="EXPERIMENT",
                       help="run only these experiments (repeatable)")
    p_rep.add_argument("--configs", default=None, help="experiment folder (default: configs/paper)")
    p_rep.add_argument("--list", action="store_true", help="list the suite's experiments and exit")
    p_rep.add_argument("--data-root", dest="data_root", default=None)
    p_rep.add_argument("--progress", action="store_true", help="show progress bars of each stage")

    p_data = sub.add_parser("data", help="list or fetch data sets")
    data_sub = p_data.add_subparsers(dest="data_command")
    p_list = data_sub.add_parser("list", help="known data sets and whether each is available here")
    p_list.add_argument("--data-root", dest="data_root", default=None)
    p_fetch = data_sub.add_parser("fetch", help="get a data set by every route flowood knows")
    p_fetch.add_argument("names", nargs="+", help="data set names (flowood data list)")
    p_fetch.add_argument("--data-root", dest="data_root", default=None)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from flowood.training import load_config, train
    from flowood.training.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                   inputs=[args.config] if args.config else [])
    print(f"test bits/dim: {result.test_bpd:.4f} after {result.steps} steps ({result.seconds:.0f} s)")
    print(f"checkpoint: {result.checkpoint}")
    print(f"logs: {result.out / 'logs'} (tensorboard --logdir {result.out / 'logs' / 'tensorboard'})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flowood.evaluation import evaluate, markdown_table, scores_table

    result = evaluate(args.checkpoint, args.ood, out=args.out, dataset=args.dataset, data_root=args.data_root,
                      max_samples=args.max_samples, batch_size=args.batch_size, device=args.device, seed=args.seed,
                      bootstrap=args.bootstrap, scores=args.scores, ensemble=args.ensemble, background=args.background,
                      background_steps=args.background_steps, typicality_batch=args.typicality_batch,
                      fit_samples=args.fit_samples, compile=args.compile, precision=args.precision,
                      progress=not args.no_progress, overwrite=args.overwrite)
    print(markdown_table(result.metrics))
    print()
    print("AUROC of every score (higher = better detection; 0.5 = chance):")
    print(scores_table(result.metrics))
    ind = result.metrics["in_distribution"]
    for name, m in result.metrics["ood"].items():
        if m["bpd_mean"] < ind["bpd_mean"]:
            print(f"note: {name} gets HIGHER likelihood than {ind['name']} test data "
                  f"({m['bpd_mean']:.3f} vs {ind['bpd_mean']:.3f} bits/dim, AUROC {m['auroc']:.3f}): "
                  "the failure the paper explains")
    print(f"wrote {Path(args.out) / 'report.html'} (open it in a browser), metrics.json, scores.npz, figures")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from flowood.inspect.run import inspect_flow

    if args.noise_samples < 1:
        raise ValueError("--noise-samples must be at least 1")
    result = inspect_flow(args.checkpoint, args.images, args.out, noise_samples=args.noise_samples,
                          temperatures=tuple(args.temperatures), pdf=args.pdf,
                          complexity_samples=args.complexity_samples, data_root=args.data_root, seed=args.seed,
                          progress=not args.no_progress, overwrite=args.overwrite)
    for label, layers in result.numbers["coupling_prediction"].items():
        r2 = [q["r2"] for q in layers]
        print(f"{label}: mean R² of -t over {len(r2)} couplings = {np.nanmean(r2):.3f}; "
              f"log-likelihood {result.numbers['likelihood_contributions'][label]['total_nats']:.1f} nats/image; "
              f"corr. with PNG complexity {result.numbers['likelihood_vs_complexity_correlation'][label]:.3f}")
    print(f"wrote {result.html} (open it in a browser), inspect.json and the figures in {result.out}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from flowood.embed import embed

    for name in ("epochs", "batch_size", "embedding_dim"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    result = embed(args.backbone, args.dataset, args.out, args.ood, weights=args.weights,
                   train_classifier=args.train_classifier, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                   image_size=args.image_size, embedding_dim=args.embedding_dim, device=args.device,
                   data_root=args.data_root, max_train_samples=args.max_train_samples, seed=args.seed,
                   overwrite=args.overwrite, progress=not args.no_progress)
    if result.test_accuracy is not None:
        print(f"classifier test accuracy on {args.dataset}: {result.test_accuracy:.4f}")
    if result.classifier is not None:
        print(f"classifier: {result.classifier} (reuse with --weights {result.classifier})")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"wrote {result.out} ({result.dim}-dim embeddings, {result.seconds:.0f} s)")
    for name, path in result.ood_files.items():
        print(f"wrote {path} ({name})")
    ood = " ".join(f"npz:{p}" for p in result.ood_files.values()) or "npz:OTHER.npz"
    print(f"next: flowood train --dataset npz:{result.out} --flow MAF --out runs/emb_flow && "
          f"flowood evaluate --checkpoint runs/emb_flow/checkpoints/last.ckpt --ood {ood} --out runs/emb_eval")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from flowood.reproduce import load_experiments, reproduce

    if args.list:
        for exp in load_experiments(args.configs, args.scale, args.suite, args.only):
            print(f"{exp.name:34s} {exp.title} [{exp.paper}] suites: {', '.join(exp.suites)}")
        return 0
    out = args.out or f"runs/reproduce/{args.suite}-{args.scale}"
    result = reproduce(args.suite, args.scale, out, args.configs, args.only, args.data_root, args.progress,
                       say=lambda line: print(line, flush=True))
    counts = {s: list(result.statuses.values()).count(s) for s in sorted(set(result.statuses.values()))}
    print(f"{', '.join(f'{n} {s}' for s, n in counts.items())} in {result.seconds / 60:.1f} min")
    print(f"wrote {result.markdown} and {result.html}")
    return 0 if "failed" not in counts else 1


def _cmd_data(args: argparse.Namespace) -> int:
    from flowood.data import DATASETS, DatasetNotFoundError, data_root, fetch_dataset, load_dataset

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
        print("  folder:PATH   a folder of images (one subfolder per class, or flat)")
        print("  npz:PATH      .npz with 'images' (uint8) or 'embeddings' (float), optional 'labels'")
        return 0
    print("usage: flowood data {list,fetch NAME...}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from flowood import __version__
        print(__version__)
        return 0
    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "inspect": _cmd_inspect, "embed": _cmd_embed,
                "reproduce": _cmd_reproduce, "data": _cmd_data}
    if args.command not in commands:
        parser.print_help()
        return 2
    from flowood.allocator import tune_allocator
    tune_allocator()  # CPU steps reuse freed memory instead of faulting it in again (FLOWOOD_MALLOC_TUNING=0: off)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return commands[args.command](args)
    except _user_errors() as err:
        print(f"flowood {args.command}: error: {as_flags(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flowood {args.command}: interrupted; checkpoints written so far are kept (use --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

