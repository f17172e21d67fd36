"""OOD evaluation of a trained flow: every requested score on the same data, metrics, figures, report.

Each score is oriented so that higher means more anomalous (for the likelihood: bits/dim), so an
AUROC below 0.5 means the score prefers the OOD set to the flow's own test data: for the
likelihood, the failure the paper explains.

:func:`evaluate` is a short pipeline of named steps: load the checkpoint and plan what to score
(:func:`plan_evaluation`), claim the output folder, put the models on their device
(:func:`prepare_models`), load every set in the model's shape (:func:`load_sets`), score them
(:func:`compute_scores`), summarise (:func:`summarize`) and write the files (:func:`write_outputs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from flowood import __version__
from flowood.checkpoints import LoadedFlow, load_flow
from flowood.data import canonical_name, dataset_inputs, fit_to_shape, load_dataset, parse_name
from flowood.data.openood import load_benchmark
from flowood.engines.backend import BACKENDS, EngineFlow, backend_option, engine_device, engine_flow
from flowood.engines.common import EXPORT_MANIFEST
from flowood.errors import DataError
from flowood.evaluation.embeddings import embeddings_meta, head_from_embeddings
from flowood.evaluation.figures import evaluation_figures
from flowood.evaluation.metrics_file import (
    METRICS_FILE,
    Benchmark,
    Classifier,
    GroupMean,
    InDistribution,
    Leaderboard,
    Metrics,
    OODSet,
    Provenance,
    RankedDetector,
    ScoreDetection,
    ScoreMean,
)
from flowood.evaluation.report import benchmark_rows, ranking_rows, write_report
from flowood.flows import FlowModel
from flowood.flows.precision import parse_precision
from flowood.ood.classifier import (
    CLASSIFIER_DETECTORS,
    ClassifierHead,
    available_detectors,
    check_detector_names,
    classifier_accuracy,
    classifier_scores,
)
from flowood.ood.density import as_density, capabilities
from flowood.ood.metrics import ood_metrics
from flowood.ood.scores import DEFAULT_SCORES, SCORE_NAMES, ScoreOptions, make_score, score_applies, score_bits_per_dim
from flowood.options import ConfigError, merge_options, option, to_mapping
from flowood.outputs import atomic_write, open_output_folder, write_text_atomic
from flowood.runtime import (
    check_precision,
    data_root_option,
    device_option,
    precision_option,
    resolve_device,
    seed_option,
)
from flowood.tables import Table

__all__ = ["evaluate", "EvaluateOptions", "EvaluationResult", "EvaluationPlan", "ScoredSets", "markdown_table",
           "scores_table", "plan_evaluation", "prepare_models", "load_sets", "compute_scores", "summarize",
           "write_outputs", "score_bits_per_dim", "plan_detectors", "detector_table",
           "ranking_table", "benchmark_summary", "benchmark_table"]


@dataclass
class EvaluateOptions:
    """How :func:`evaluate` scores: every field is an option (``flowood evaluate --help`` shows them all)."""

    dataset: str | None = option(None, "in-distribution set (default: the one the checkpoint was trained on)",
                                 metavar="NAME")
    data_root: str | None = data_root_option()
    scores: list[str] | None = option(None, lambda: "scores to compute (default: every score that needs no extra "
                                      f"model): {', '.join(SCORE_NAMES)}", metavar="SCORE")
    max_samples: int | None = option(None, "score at most this many samples of each set (a seeded random subset)",
                                     minimum=1)
    batch_size: int = option(512, "samples per forward pass", minimum=1)
    device: str = device_option()
    precision: str = precision_option()
    seed: int = seed_option()
    bootstrap: int = option(0, "bootstrap resamples for 95% intervals of every metric (0: none)", minimum=0)
    ensemble: list[str] | None = option(None, "more checkpoints trained on the same data, for the waic score",
                                        metavar="CKPT")
    background: str | None = option(None, "background flow for likelihood_ratio (default: train one on perturbed "
                                    "inputs)", metavar="CKPT")
    score_options: ScoreOptions = option(default_factory=ScoreOptions, help="the flow scores' own options (given by "
                                         "their own names)", flag=False)
    fit_samples: int = option(10000, "in-distribution training samples for the scores that fit", minimum=1)
    compile: bool = option(False, "score through torch.compile: the same numbers, faster on large sets after a "
                           "slow first batch")
    benchmark: str | None = option(None, "an OpenOOD v1.5 benchmark (cifar10, cifar100, imagenet200): a pixel flow is "
                                   "scored on its in-distribution test list and every near- and far-OOD set; results "
                                   "are grouped near/far as OpenOOD reports them", metavar="NAME")
    backend: str = backend_option()
    detectors: list[str] | None = option(None, lambda: "classifier-based detectors (pytorch-ood) beside the flow's "
                                         "scores, for a flow on embeddings from `flowood embed`: "
                                         f"{', '.join(CLASSIFIER_DETECTORS)}, or none (default: every one the "
                                         "embeddings allow)", metavar="DETECTOR")


@dataclass
class EvaluationResult:
    """What an evaluation produced.

    Attributes:
        metrics: the contents of metrics.json, typed (:class:`~flowood.evaluation.metrics_file.Metrics`).
        scores: bits/dim per sample of every set (the likelihood score), ``{set: array}``.
        score_values: every score, ``{score: {set: array}}``.
        out: the output directory, if one was written.
    """

    metrics: Metrics
    scores: dict[str, np.ndarray]
    score_values: dict[str, dict[str, np.ndarray]]
    out: Path | None


@dataclass
class EvaluationPlan:
    """What one evaluation will do, decided before any data are loaded.

    Attributes:
        loaded: the checkpoint.
        sets: the canonical set names, in-distribution first.
        scores: the score names, ``likelihood`` first.
        root: the data root.
        options: the options.
        detectors: classifier-based detectors to compute beside the flow's scores (embedding flows).
        head: the classifier's last linear layer, when the in-distribution set is embeddings that carry it.
    """

    loaded: LoadedFlow
    sets: list[str]
    scores: list[str]
    root: str | None
    options: EvaluateOptions
    detectors: list[str] = field(default_factory=list)
    head: ClassifierHead | None = None

    @property
    def inputs(self) -> list[Any]:
        """Every file and folder the evaluation reads (output folders must stay clear of them)."""
        o = self.options
        return [self.loaded.path, *(o.ensemble or []), o.background, *dataset_inputs(self.sets, self.root)]


@dataclass
class ScoredSets:
    """The data and every score of every set.

    Attributes:
        data: the samples of each set in the model's shape.
        info: size, source and original shape of each set.
        values: ``{score: {set: one number per sample}}``.
        fit_samples: in-distribution training samples the fitted scores saw (0: none fitted).
        classifier: the classifier behind classifier-based detectors (head source, classes, test accuracy).
    """

    data: dict[str, torch.Tensor]
    info: dict[str, dict[str, Any]]
    values: dict[str, dict[str, np.ndarray]]
    fit_samples: int = 0
    classifier: Classifier | None = None


def markdown_table(metrics: Metrics) -> str:
    """The likelihood evaluation as a Markdown table, one row per data set."""
    ind = metrics.in_distribution
    rows = [[f"{ind.name} (in-dist, test)", str(ind.n), f"{ind.bpd_mean:.3f} ± {ind.bpd_std:.3f}", "–", "–", "–"]]
    rows += [[name, str(m.n), f"{m.bpd_mean:.3f} ± {m.bpd_std:.3f}", f"{m.auroc:.3f}", f"{m.aupr:.3f}",
              f"{m.fpr95:.3f}"] for name, m in metrics.ood.items()]
    return Table(["data set", "n", "bits/dim (mean ± sd)", "AUROC", "AUPR", "FPR@95%TPR"], rows).markdown()


def scores_table(metrics: Metrics) -> str:
    """AUROC of every score against every OOD set, as a Markdown table."""
    names = metrics.scores_computed
    rows = [[name, *(f"{entry.scores[s].auroc:.3f}" if s in entry.scores else "–" for s in names)]
            for name, entry in metrics.ood.items()]
    return Table(["OOD set", *names], rows).markdown()


def ranking_table(metrics: Metrics) -> str:
    """The flow's scores and the classifier-based detectors ranked by mean AUROC, as Markdown, with the
    classifier's in-distribution test accuracy."""
    acc = metrics.classifier.test_accuracy if metrics.classifier is not None else None
    return (f"Flow scores and classifier-based detectors, ranked by mean AUROC over the OOD sets (classifier test "
            f"accuracy {'unknown' if acc is None else f'{acc:.3f}'}):\n\n" + ranking_rows(metrics).markdown())


def benchmark_table(metrics: Metrics) -> str:
    """AUROC of every score averaged over the benchmark's near-OOD and far-OOD sets (OpenOOD's columns), with the
    published leaderboard rows flowood records, as Markdown.

    Raises:
        ValueError: the evaluation was not run on a benchmark.
    """
    b = metrics.benchmark
    if b is None:
        raise ValueError("this evaluation has no benchmark: evaluate with `benchmark`")
    lines = [f"{b.title}: AUROC (%) averaged over near-OOD ({len(b.near)} sets) and far-OOD ({len(b.far)} sets)", "",
             benchmark_rows(b).markdown()]
    if b.leaderboard.note:
        lines += ["", f"Published rows: {b.leaderboard.note}."]
    return "\n".join(lines)


def plan_evaluation(loaded: LoadedFlow, ood: list[str], options: EvaluateOptions) -> EvaluationPlan:
    """Check the request (set names, score names, precision) and decide what will be scored.

    Raises:
        DataError: no OOD sets, repeated sets, or no in-distribution set known. ConfigError: unknown scores or
            precision, or waic without an ensemble.
    """
    options.precision = check_precision(options.precision)
    resolve_device(options.device)  # a device this machine lacks is refused before anything is written
    check_backend(options, loaded.flow)
    ind_name = options.dataset or loaded.train_config.get("dataset")
    if options.benchmark is not None:
        ind_name, ood = _benchmark_sets(loaded, options, ind_name, ood)
    if not ind_name:
        raise DataError("the checkpoint does not say which data set it was trained on; pass `dataset`")
    if not ood:
        raise DataError("no OOD data sets given; pass at least one, e.g. `ood=['mnist']`, or a `benchmark`")
    names = [ind_name, *ood]
    sets = [canonical_name(n) for n in names]
    if len(set(sets)) != len(sets):
        raise DataError(f"data set names repeat: {names}")
    flow = loaded.flow
    requested = list(options.scores or [s for s in DEFAULT_SCORES if score_applies(s, flow)])
    if "waic" in requested and not options.ensemble:
        raise ConfigError("the waic score needs an ensemble: pass `ensemble=[checkpoint, ...]`")
    if options.ensemble and "waic" not in requested:
        requested.append("waic")
    for name in requested:
        if name not in SCORE_NAMES:
            make_score(name, flow)  # raises with the closest valid name
    scores = ["likelihood"] + [s for s in dict.fromkeys(requested) if s != "likelihood"]
    root = options.data_root or loaded.train_config.get("data_root")
    head, detectors = plan_detectors(sets[0], options.detectors)
    return EvaluationPlan(loaded, sets, scores, root, options, detectors, head)


def _benchmark_sets(loaded: LoadedFlow, options: EvaluateOptions, ind_name: str | None, ood: list[str]
                    ) -> tuple[str | None, list[str]]:
    """A pixel flow gets the benchmark's in-distribution test list (unless `dataset` is given) and every OOD set
    added; a flow on features keeps its sets (embed the benchmark's sets first), which are then grouped."""
    bench = load_benchmark(options.benchmark)
    shape = loaded.flow.input_shape
    if shape is not None and len(shape) == 1:
        return ind_name, ood
    ind = options.dataset or bench.dataset(bench.in_distribution)
    return ind, list(dict.fromkeys([*ood, *bench.ood_datasets]))


def benchmark_summary(benchmark: str, ood: dict[str, OODSet], scores: list[str]) -> Benchmark:
    """Every score's metrics averaged over the benchmark's near-OOD and far-OOD sets, as OpenOOD reports them.

    Sets are matched by the images behind them (:attr:`OODSet.dataset`), so embeddings of the benchmark's sets count
    too.

    Raises:
        DataError: none of the OOD sets belongs to the benchmark.
    """
    bench = load_benchmark(benchmark)
    groups: dict[str, list[str]] = {"near": [], "far": []}
    for name, entry in ood.items():
        group = bench.group(entry.dataset)
        if group is not None:
            groups[group].append(name)
    if not groups["near"] and not groups["far"]:
        raise DataError(f"none of the OOD sets belongs to the OpenOOD {bench.name} benchmark (its sets are "
                        f"{', '.join(bench.ood_datasets)}); embed or score those sets")
    means = {score: {group: GroupMean(**{m: float(np.mean([getattr(ood[n].scores[score], m) for n in names]))
                                         for m in ("auroc", "aupr_in", "aupr_out", "fpr95")})
                     for group, names in groups.items() if names}
             for score in scores}
    return Benchmark(name=bench.name, title=bench.title, source=bench.source, near=groups["near"], far=groups["far"],
                     scores=means, leaderboard=Leaderboard.from_dict(bench.leaderboard, f"the {bench.name} benchmark"))


def _feature_file(dataset: str) -> tuple[bool, bool]:
    """Whether ``dataset`` is an ``npz:`` file of feature vectors (``embeddings``), and whether it has labels."""
    parsed = parse_name(dataset)
    path = parsed.path if parsed.prefix == "npz" else None
    if path is None or not path.is_file():
        return False, False
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
    return bool(keys & {"embeddings", "embeddings_train"}), bool(keys & {"labels", "labels_train"})


def plan_detectors(ind: str, requested: list[str] | None) -> tuple[ClassifierHead | None, list[str]]:
    """The classifier head and the classifier-based detectors to compute for in-distribution set ``ind``.

    They apply to features in an ``npz:`` file of ``embeddings`` (``flowood embed`` writes the classifier's last layer
    into it).
    By default every detector those features allow is computed; ``["none"]`` computes none.

    Raises:
        ConfigError: unknown names, or detectors asked for on data that are not classifier features.
    """
    if requested is not None and [r.lower() for r in requested] == ["none"]:
        return None, []
    if requested is not None:
        check_detector_names(requested)
    is_features, has_labels = _feature_file(ind)
    head = head_from_embeddings(ind) if is_features else None
    allowed = available_detectors(head is not None, has_labels) if is_features else []
    if requested is None:
        return head, allowed
    missing = [d for d in requested if d not in allowed]
    if missing:
        why = ("the in-distribution set is not an embeddings file (npz:PATH from `flowood embed`)" if not is_features
               else "these features come without " + ("the classifier's last layer" if head is None else "labels"))
        raise ConfigError(f"cannot compute {', '.join(missing)}: {why}")
    return head, list(dict.fromkeys(requested))


def check_backend(options: EvaluateOptions, flow: Any) -> None:
    """Refuse what an engine backend cannot do, before anything is written.

    Raises:
        ConfigError: an unknown backend; an engine with a GPU device, with ``compile``, with fp16, or with a model
            that is not a flowood flow.
    """
    if options.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {options.backend!r}; choose from {', '.join(BACKENDS)}")
    if options.backend == "torch":
        if capabilities(flow).exported:
            raise ConfigError(f"this model is an exported flow on {flow.backend}; pass backend='{flow.backend}'")
        return
    options.device = engine_device(options.backend, options.device)
    if options.compile:
        raise ConfigError("compile applies to the torch backend; an engine compiles the exported graph itself")
    if options.precision not in ("fp32", "bf16") or (options.precision == "bf16" and options.backend != "openvino"):
        raise ConfigError(f"the {options.backend} backend scores in fp32" +
                          (" or bf16" if options.backend == "openvino" else "") + f", not {options.precision}")
    if not (capabilities(flow).traceable or capabilities(flow).exported):
        raise ConfigError(f"only flowood flows can be scored on {options.backend} (they are exported first); this "
                          f"model is a {type(flow).__name__}")


def _on_engine(plan: EvaluationPlan) -> tuple[list[Any], Any]:
    """Export the flow (and ensemble and given background flows) and load them on the engine; a background the
    likelihood ratio trains is trained and scored in PyTorch."""
    o = plan.options
    plan.loaded = dataclasses.replace(plan.loaded, flow=engine_flow(plan.loaded.flow, o.backend,
                                                                    precision=o.precision))
    ensemble = [engine_flow(load_flow(p).flow, o.backend, precision=o.precision) for p in (o.ensemble or [])]
    background = engine_flow(load_flow(o.background).flow, o.backend, precision=o.precision) if o.background else None
    return ensemble, background


def prepare_models(plan: EvaluationPlan) -> tuple[torch.device, list[FlowModel], FlowModel | None]:
    """Put the flow (and ensemble and background flows) on the device, at the requested precision, or export them
    to the requested engine.

    Returns:
        ``(device, ensemble flows, background flow or None)``.
    """
    o = plan.options
    device = resolve_device(o.device)
    if o.backend != "torch":
        return (device, *_on_engine(plan))
    st_dtype = parse_precision(o.precision)
    if capabilities(plan.loaded.flow).traceable:
        plan.loaded.flow.to(device).optimize(compile=o.compile).mixed_precision(st_dtype)  # same numbers, faster
    else:
        plan.loaded.flow.to(device)
    ensemble = [load_flow(p).flow.to(device).optimize().mixed_precision(st_dtype) for p in (o.ensemble or [])]
    background = (load_flow(o.background).flow.to(device).optimize().mixed_precision(st_dtype)
                  if o.background else None)
    return device, ensemble, background


def load_sets(plan: EvaluationPlan) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """The test split of every set (a seeded subset of ``max_samples``), in the model's input shape."""
    flow = plan.loaded.flow
    if flow.input_shape is None:  # a density of unknown shape takes the in-distribution set's
        flow.input_shape = load_dataset(plan.sets[0], "test", plan.root).sample_shape
    shape = flow.input_shape
    data, info = {}, {}
    for name in plan.sets:
        ds = load_dataset(name, "test", plan.root, shape=shape).take(plan.options.max_samples, seed=plan.options.seed)
        data[name] = fit_to_shape(ds, shape)
        info[name] = {"n": len(ds), "source": ds.source, "original_shape": list(ds.sample_shape),
                      "dataset": embeddings_meta(name).get("dataset", name)}  # the images behind embeddings
    return data, info


def compute_scores(plan: EvaluationPlan, data: dict[str, torch.Tensor], info: dict[str, dict[str, Any]],
                   ensemble: list[FlowModel], background: FlowModel | None, progress: bool = True) -> ScoredSets:
    """Every score of every set; scores that fit see ``fit_samples`` in-distribution training samples."""
    o, flow = plan.options, plan.loaded.flow
    values: dict[str, dict[str, np.ndarray]] = {}
    cache: dict = {}  # likelihoods shared by the scores that need them
    train_data = None
    for score_name in tqdm(plan.scores, desc="scores", unit="score", disable=not progress):
        scorer = make_score(score_name, flow, o.score_options, ensemble=ensemble, background=background, cache=cache,
                            progress=progress, batch_size=o.batch_size, seed=o.seed)
        if scorer.needs_fit and not scorer.fitted:
            if train_data is None:
                train_set = load_dataset(plan.sets[0], "train", plan.root, shape=flow.input_shape)
                train_data = fit_to_shape(train_set.take(o.fit_samples, seed=o.seed), flow.input_shape)
            scorer.fit(train_data)
        values[scorer.name] = {name: scorer.score(x) for name, x in data.items()}
    fitted = len(train_data) if train_data is not None else 0
    if plan.detectors:
        train_set = load_dataset(plan.sets[0], "train", plan.root).take(o.fit_samples, seed=o.seed)
        values.update(classifier_scores(plan.detectors, train_set.data, train_set.labels, plan.head, data))
        fitted = max(fitted, len(train_set))
    return ScoredSets(data, info, values, fitted, _classifier_summary(plan))


def _classifier_summary(plan: EvaluationPlan) -> Classifier | None:
    """The classifier's accuracy on the in-distribution test features (the same subset the scores saw)."""
    if plan.head is None:
        return None
    test = load_dataset(plan.sets[0], "test", plan.root).take(plan.options.max_samples, seed=plan.options.seed)
    accuracy = classifier_accuracy(plan.head, test.data, test.labels) if test.labels is not None else None
    return Classifier(head=plan.head.source, num_classes=plan.head.num_classes, test_accuracy=accuracy,
                      test_samples=len(test))


def detector_table(scores: list[str], ood: dict[str, OODSet]) -> list[RankedDetector]:
    """Every score and detector ranked by mean AUROC over the OOD sets (best first), with what each needs."""
    rows = []
    for name in scores:
        aurocs = [entry.scores[name].auroc for entry in ood.values() if name in entry.scores]
        info = CLASSIFIER_DETECTORS.get(name)
        rows.append(RankedDetector(detector=name, family="classifier" if info else "flow",
                                   needs=info.needs if info else "the flow only (no labels, no classifier)",
                                   mean_auroc=float(np.mean(aurocs)) if aurocs else float("nan")))
    return sorted(rows, key=lambda r: -r.mean_auroc)


def _as_loaded(model: str | Path | LoadedFlow | nn.Module, options: EvaluateOptions) -> LoadedFlow:
    """A checkpoint or an export folder loaded, or a model in memory described as one (no file, no hash, no training
    config)."""
    if isinstance(model, LoadedFlow):
        return model
    if isinstance(model, nn.Module):
        return LoadedFlow(as_density(model), {}, None, None, "in memory")
    if Path(model).is_dir() and (Path(model) / EXPORT_MANIFEST).is_file():
        if options.backend == "torch":
            raise ConfigError(f"{model} is an export folder: score it on an engine with backend='onnxruntime' or "
                              "'openvino' (or evaluate its checkpoint with backend='torch')")
        flow = EngineFlow(model, options.backend, check_precision(options.precision))
        m = flow.engine.manifest
        return LoadedFlow(flow, m.get("train_config") or {}, Path(model), m.get("checkpoint_sha256"),
                          m.get("flowood_version", "unknown"))
    return load_flow(model)


def _provenance(plan: EvaluationPlan, device: torch.device, scored: ScoredSets) -> Provenance:
    o, loaded = plan.options, plan.loaded
    return Provenance(
        checkpoint=str(loaded.path) if loaded.path else "a model in memory", checkpoint_sha256=loaded.sha256,
        flow=loaded.flow.config.get("flow"),
        flow_config=loaded.flow.config, trained_by_flowood=loaded.version, flowood_version=__version__,
        torch_version=torch.__version__, numpy_version=np.__version__, python=sys.version.split()[0],
        platform=platform.platform(), device=str(device), precision=o.precision, seed=o.seed,
        backend=o.backend, engine_parity=getattr(loaded.flow, "parity", None),
        max_samples=o.max_samples, dequantization="uniform noise from a generator seeded with `seed`",
        data_root=str(plan.root) if plan.root else None, typicality_batch=o.score_options.typicality_batch,
        fit_samples=o.fit_samples if scored.fit_samples else 0, ensemble=[str(p) for p in o.ensemble or []],
        background=str(o.background) if o.background else None,
        background_steps=(o.score_options.background_steps if "likelihood_ratio" in scored.values
                          and not o.background else None),
        options=to_mapping(o),
    )


def _ood_set(plan: EvaluationPlan, scored: ScoredSets, name: str) -> OODSet:
    """One OOD set's bits/dim and every score's metrics; its top-level metrics are the likelihood's."""
    ind, values, o = plan.sets[0], scored.values, plan.options
    computed = {s: ood_metrics(v[ind], v[name], bootstrap=o.bootstrap, seed=o.seed) for s, v in values.items()}
    like = values["likelihood"]
    return OODSet(**scored.info[name], **computed["likelihood"], bpd_mean=float(like[name].mean()),
                  bpd_std=float(like[name].std()), aupr=computed["likelihood"]["aupr_out"],
                  share_more_likely_than_median_in_dist=float(np.mean(like[name] < np.median(like[ind]))),
                  scores={s: ScoreDetection(**m, mean=float(values[s][name].mean())) for s, m in computed.items()})


def summarize(plan: EvaluationPlan, scored: ScoredSets, device: torch.device) -> Metrics:
    """The metrics.json of an evaluation: per set, bits/dim and every score's AUROC, AUPR, FPR95 (and intervals)."""
    ind, values, o = plan.sets[0], scored.values, plan.options
    like = values["likelihood"]
    in_distribution = InDistribution(name=ind, split="test", **scored.info[ind], bpd_mean=float(like[ind].mean()),
                                     bpd_std=float(like[ind].std()),
                                     scores={s: ScoreMean(mean=float(v[ind].mean())) for s, v in values.items()})
    ood = {name: _ood_set(plan, scored, name) for name in plan.sets[1:]}
    scores = list(values)
    return Metrics(in_distribution=in_distribution, ood=ood,
                   score="bits/dim (negative log-likelihood); higher means more OOD; OOD is the positive class",
                   scores_computed=scores, classifier=scored.classifier, ranking=detector_table(scores, ood),
                   benchmark=benchmark_summary(o.benchmark, ood, scores) if o.benchmark is not None else None,
                   provenance=_provenance(plan, device, scored))


def write_outputs(out: Path, metrics: Metrics, scored: ScoredSets, num_dims: int) -> None:
    """metrics.json, scores.npz, the figures and report.html, each written atomically."""
    names = metrics.set_names
    write_text_atomic(out / METRICS_FILE, metrics.to_json())
    arrays = {f"set{i}": scored.values["likelihood"][n] for i, n in enumerate(names)}
    for score, per_set in scored.values.items():
        arrays.update({f"{score}__set{i}": per_set[n] for i, n in enumerate(names)})
    with atomic_write(out / "scores.npz") as tmp:
        np.savez(tmp, names=np.array(names), scores=np.array(list(scored.values)), **arrays)
    figures = evaluation_figures(metrics, scored.values, scored.data, num_dims, out)
    write_report(metrics, figures, out / "report.html")


def evaluate(checkpoint: str | Path | LoadedFlow | nn.Module, ood: list[str], out: str | Path | None = None,
             options: EvaluateOptions | None = None, *, progress: bool = True, overwrite: bool = False,
             **option_values: Any) -> EvaluationResult:
    """Score the in-distribution test set and each OOD set with every requested score; compute metrics.

    Args:
        checkpoint: a checkpoint path, an already loaded flow, or any density model (a flowood flow, or a module
            with ``log_prob`` as :mod:`flowood.ood.density` describes; then pass ``dataset``).
        ood: OOD data set names; images are adapted to the model's shape.
        out: folder for metrics.json, scores.npz, figures and report.html (None: write nothing). Checked,
            created and locked before any data are loaded (see :func:`flowood.outputs.open_output_folder`).
        options: an :class:`EvaluateOptions` (its fields are listed there).
        progress: show progress bars.
        overwrite: replace an earlier evaluation in ``out`` (only the files it wrote are removed).
        **option_values: any field of :class:`EvaluateOptions`, e.g. ``max_samples=500, scores=["likelihood"]``.

    Example:
        >>> result = evaluate("runs/demo/train/checkpoints/last.ckpt", ["mnist"], max_samples=500)  # doctest: +SKIP
        >>> auroc = result.metrics.ood["mnist"].auroc  # doctest: +SKIP

    Raises:
        OutputError: ``out`` is unsafe, not writable, or holds an earlier evaluation without ``overwrite``.
        DataError, ConfigError, CheckpointError: bad sets, options or checkpoint, named in the message.
    """
    options = merge_options(EvaluateOptions, options, option_values)
    loaded = _as_loaded(checkpoint, options)
    plan = plan_evaluation(loaded, list(ood), options)
    folder = (open_output_folder(out, "evaluate", plan.inputs, overwrite=overwrite) if out is not None
              else contextlib.nullcontext())
    with folder:
        device, ensemble, background = prepare_models(plan)
        data, info = load_sets(plan)
        scored = compute_scores(plan, data, info, ensemble, background, progress)
        metrics = summarize(plan, scored, device)
        if out is not None:
            write_outputs(folder.path, metrics, scored, loaded.flow.num_dims)
    return EvaluationResult(metrics, scored.values["likelihood"], scored.values,
                            folder.path if out is not None else None)
