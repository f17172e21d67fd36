"""OOD scores computed from trained flows, each with one calling convention.

``score = ScoreClass(flow, ...)``; ``score.fit(train_images)`` if it needs in-distribution
training data (a no-op otherwise); ``score.score(x)`` returns one number per input (a numpy array,
``[B]``) where **higher means more anomalous**. All scores work in bits per dimension.

* ``likelihood``, :class:`NegativeLogLikelihood`: the baseline (Nalisnick et al. 2019; Kirichenko et al. 2020).
* ``likelihood_ratio``, :class:`LikelihoodRatio`: Ren et al. 2019 (a background flow on perturbed inputs);
  Schirrmeister et al. 2020 (a general-domain flow).
* ``complexity`` / ``complexity_jp2``, :class:`ComplexityCorrected`: Serra et al. 2020 (PNG / lossless JPEG 2000).
* ``typicality``, :class:`Typicality`: Nalisnick et al. 2019 (single-sample form; batch form with ``batch_size``).
* ``latent_last_scale`` / ``latent_early_scales``, :class:`ScaleLikelihood`: Kirichenko et al. 2020 Sec. 5;
  Schirrmeister et al. 2020.
* ``waic``, :class:`WAIC`: Choi et al. 2018.

Scores are found by name in one table (:data:`SCORES`): :func:`make_score` builds any of them from one
:class:`ScoreSettings`, and the commands' choices and help derive from the table's names. A score of your own is a
subclass of :class:`OODScore` and one :func:`register_score` line; ``make_score``, ``evaluate(scores=[...])`` and
:class:`~flowood.ood.OODDetector` then know it by its name.

Example:
    >>> from flowood.flows import RealNVP
    >>> class Brightness(OODScore):  # the mean pixel value: a (poor) score of one's own
    ...     name = "brightness"
    ...     def score(self, x):
    ...         return x.float().mean(dim=(1, 2, 3)).numpy()
    >>> _ = register_score("brightness", Brightness)
    >>> flow = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4)
    >>> make_score("brightness", flow).score(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).tolist()
    [0.0, 0.0]
    >>> entry = SCORES.unregister("brightness")  # the example leaves the table as it was
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from flowood.errors import InputError, ModelError
from flowood.flows import FlowModel, build_flow
from flowood.ood.density import as_density, capabilities
from flowood.options import ConfigError, merge_options, option
from flowood.runtime import seed_option
from flowood.variants import Registry

__all__ = ["OODScore", "NegativeLogLikelihood", "LikelihoodRatio", "ComplexityCorrected", "Typicality",
           "ScaleLikelihood", "WAIC", "make_score", "register_score", "ScoreOptions", "ScoreSettings", "ScoreContext",
           "ScoreEntry", "SCORES", "score_applies", "SCORE_NAMES", "DEFAULT_SCORES", "compressed_bits_per_dim",
           "perturb_pixels", "fit_flow", "score_bits_per_dim"]


@dataclass
class ScoreOptions:
    """The flow scores' own options, each defined here once: ``flowood evaluate`` and ``flowood detector fit`` nest
    this class (:class:`~flowood.evaluation.EvaluateOptions`, :class:`~flowood.deploy.DetectorOptions`), and their
    flags are these names (``--typicality_batch``)."""

    typicality_batch: int = option(1, "group size of the typicality test (1: the single-sample form)", minimum=1)
    background_steps: int = option(1000, "training steps of likelihood_ratio's background flow (trained on perturbed "
                                   "inputs)", minimum=1)


@dataclass
class ScoreSettings(ScoreOptions):
    """Everything :func:`make_score` builds a score with: the :class:`ScoreOptions`, how likelihoods are computed
    (the commands set ``batch_size`` and ``seed`` from their own options) and how a background flow is trained."""

    batch_size: int = option(512, "samples per forward pass", minimum=1)
    seed: int = seed_option()
    noise: str = option("uniform", "dequantization of 8-bit images: uniform (noise from a generator seeded with "
                        "`seed`) or center (the middle of each bin: an input scores the same in any batch)",
                        choices=("uniform", "center"))
    perturbation_rate: float = option(0.2, "share of pixels replaced by noise in the background flow's training "
                                      "inputs (Ren et al.'s mu; 0.1-0.3 in their experiments)", minimum=0.0)
    background_lr: float = option(1e-3, "learning rate of the background flow", minimum=0.0)
    background_batch_size: int = option(64, "batch size of the background flow's training", minimum=1)


@dataclass
class ScoreContext:
    """What a score is built with besides its settings: the ensemble's other flows (``waic``), a background flow
    (``likelihood_ratio``), the likelihood cache shared by scores of one evaluation, and whether to show progress."""

    ensemble: list[Any] = field(default_factory=list)
    background: Any = None
    cache: dict | None = None
    progress: bool = True


def _batches(x: Tensor, batch_size: int) -> Iterable[Tensor]:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


def _device_of(flow: nn.Module) -> torch.device:
    return next((p.device for p in flow.parameters()), torch.device("cpu"))


@torch.inference_mode()
def score_bits_per_dim(flow: FlowModel, data: Tensor, batch_size: int = 512, seed: int = 0, noise: str = "uniform",
                       progress: bool = False, desc: str = "scoring") -> np.ndarray:
    """Bits/dim of every sample on the flow's device, in batches, with dequantization noise from a
    generator seeded with ``seed``: the same flow, data and seed give identical numbers on every run.

    Raises:
        ValueError: no samples, or the model gives non-finite likelihoods (a diverged checkpoint).
    """
    from tqdm.auto import tqdm

    if len(data) == 0:
        raise InputError(f"{desc}: no samples to score")
    flow.eval()
    flow.check_input(data[: min(len(data), 4096)])
    device = _device_of(flow)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for batch in tqdm(_batches(data, batch_size), total=math.ceil(len(data) / batch_size), desc=desc, unit="batch",
                      disable=not progress, leave=False):
        bpd = flow.bits_per_dim(batch.to(device), noise=noise, generator=generator, validate=False)
        out.append(bpd.float().cpu())
    scores = torch.cat(out).numpy().astype(np.float64)
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ModelError(f"{desc}: the model gave non-finite likelihoods for {bad} of {len(scores)} samples; "
                         "the checkpoint may be diverged (see flowood train's logs)")
    return scores


class OODScore:
    """Base class: ``fit`` on in-distribution training data if needed, then ``score`` batches.

    Attributes:
        name: the score's name in metrics.json and on the command line.
        needs_fit: whether :meth:`fit` must see in-distribution training data first.
        needs_training: whether :meth:`fit` trains a model.
        by_default: whether ``flowood evaluate`` computes it when no scores are named (not for scores that train a
            model or need more models).
    """

    name = "score"
    needs_fit = False
    needs_training = False
    by_default: ClassVar[bool] = True

    def __init__(self, flow: FlowModel, batch_size: int = 512, seed: int = 0, cache: dict | None = None,
                 noise: str = "uniform") -> None:
        self.flow = flow
        self.batch_size = batch_size
        self.seed = seed
        self.fitted = not self.needs_fit
        self.cache = cache
        self.noise = noise  # dequantization of 8-bit images: "uniform" (seeded), or "center" (the same per input)

    @classmethod
    def applies_to(cls, flow: Any, **params: Any) -> bool:
        """Whether the score makes sense for ``flow`` with the parameters its registry entry fixes (default: always);
        ``evaluate`` computes by default only the scores that apply."""
        return True

    @classmethod
    def from_settings(cls, flow: FlowModel, settings: ScoreSettings, context: ScoreContext, **params: Any
                      ) -> OODScore:
        """The score made from :func:`make_score`'s settings and context; ``params`` are those its registry entry
        fixes (e.g. ``codec="jp2"``). A subclass that takes other parameters says here which it takes."""
        return cls(flow, batch_size=settings.batch_size, seed=settings.seed, cache=context.cache, noise=settings.noise,
                   **params)

    def _bpd(self, x: Tensor, flow: FlowModel | None = None) -> np.ndarray:
        """Bits/dim of ``x`` under ``flow`` (default: the score's flow), shared through ``cache`` if one was given.

        Several scores need the same likelihoods of the same data; ``flowood evaluate`` passes them
        one cache so each is computed once. The key holds the tensor itself, so it stays valid.
        """
        flow = flow or self.flow
        if self.cache is None:
            return score_bits_per_dim(flow, x, self.batch_size, self.seed, self.noise)
        key = (id(flow), id(x), self.seed, self.noise)
        hit = self.cache.get(key)
        if hit is None or hit[0] is not x:
            hit = (x, score_bits_per_dim(flow, x, self.batch_size, self.seed, self.noise))
            self.cache[key] = hit
        return hit[1]

    def fit(self, train: Tensor) -> OODScore:
        """Learn what the score needs from in-distribution training samples."""
        self.fitted = True
        return self

    def fitted_state(self) -> dict[str, Any]:
        """What :meth:`fit` learned, as tensors and plain values (saved in detector files)."""
        return {}

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`fitted_state` returned, without fitting again."""
        self.fitted = True

    def score(self, x: Tensor) -> np.ndarray:  # pragma: no cover - abstract
        """One score per input, higher = more anomalous."""
        raise NotImplementedError

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"score {self.name!r} needs fit(in-distribution training data) before score()")


class NegativeLogLikelihood(OODScore):
    """Bits/dim under the flow: the baseline the paper shows to fail.

    Example:
        >>> from flowood.flows import RealNVP
        >>> s = NegativeLogLikelihood(RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4))
        >>> s.score(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)).shape
        (3,)
    """

    name = "likelihood"

    def score(self, x: Tensor) -> np.ndarray:
        return self._bpd(x)


def perturb_pixels(x: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each pixel (all channels at a position) by a uniform random 8-bit value with probability ``rate``.

    The input perturbation of Ren et al. 2019, used to train a background model.
    """
    if x.dtype != torch.uint8:
        raise InputError("perturb_pixels takes uint8 images")
    b, _, h, w = x.shape
    flip = torch.rand((b, 1, h, w), generator=generator) < rate
    noise = torch.randint(0, 256, x.shape, generator=generator, dtype=torch.uint8)
    return torch.where(flip.to(x.device), noise.to(x.device), x)


def fit_flow(flow: FlowModel, data: Tensor, steps: int, batch_size: int = 64, lr: float = 1e-3,
             transform: Callable[[Tensor], Tensor] | None = None, seed: int = 0, progress: bool = True) -> FlowModel:
    """Train ``flow`` by maximum likelihood on ``data`` for ``steps`` Adam steps (a plain loop, no Lightning).

    Used for background models; full training runs belong to ``flowood train``.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    device = _device_of(flow)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    flow.train()
    bar = tqdm(range(steps), desc="training background flow", unit="step", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        batch = data[idx]
        if transform is not None:
            batch = transform(batch)
        loss = flow.bits_per_dim(batch.to(device), validate=False).mean()
        if not torch.isfinite(loss):
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 100.0)
        opt.step()
        bar.set_postfix(bpd=f"{loss.item():.3f}")
    return flow.eval()


class LikelihoodRatio(OODScore):
    """``bpd(x) - bpd_background(x)``: the flow's likelihood relative to a background model.

    With ``background=None``, :meth:`fit` trains a background flow of the same architecture on
    in-distribution images whose pixels are replaced by noise at ``perturbation_rate`` (Ren et al.
    2019): it learns the low-level statistics, so the ratio cancels them. With a ``background``
    flow given (e.g. one trained on a general domain, Schirrmeister et al. 2020) nothing is trained.

    Args:
        flow: the in-distribution flow.
        background: a trained background flow with the same input shape, or None.
        settings: a :class:`ScoreSettings`: ``background_steps``, ``perturbation_rate`` (Ren et al.'s mu),
            ``background_lr`` and ``background_batch_size`` say how the background flow is trained; ``batch_size``,
            ``seed`` and ``noise`` how likelihoods are computed.
        progress: show the background flow's training progress.
        cache: a dict of likelihoods shared with the other scores of one evaluation.
        **option_values: any field of :class:`ScoreSettings`, e.g. ``background_steps=2000``.

    References:
        Ren et al. Likelihood Ratios for Out-of-Distribution Detection. NeurIPS 2019.
        Schirrmeister et al. Understanding Anomaly Detection with Deep Invertible Networks through
        Hierarchies of Distributions and Features. NeurIPS 2020.
    """

    name = "likelihood_ratio"
    needs_fit = True
    needs_training = True

    by_default = False

    def __init__(self, flow: FlowModel, background: FlowModel | None = None, settings: ScoreSettings | None = None,
                 *, progress: bool = True, cache: dict | None = None, **option_values: Any) -> None:
        o = merge_options(ScoreSettings, settings, option_values)
        super().__init__(flow, o.batch_size, o.seed, cache, o.noise)
        self.background = background
        self.perturbation_rate = o.perturbation_rate
        self.steps, self.lr, self.train_batch_size, self.progress = (o.background_steps, o.background_lr,
                                                                     o.background_batch_size, progress)
        if background is not None:
            if background.input_shape not in (None, flow.input_shape):
                raise ModelError(f"background flow takes {background.input_shape}, the flow {flow.input_shape}")
            self.fitted = True
        elif not capabilities(flow).rebuildable:
            raise ConfigError("the likelihood ratio needs a `background` model for a density that is not a flowood "
                              "flow (flowood trains background copies of its own flows only)")

    @classmethod
    def from_settings(cls, flow: FlowModel, settings: ScoreSettings, context: ScoreContext, **params: Any
                      ) -> LikelihoodRatio:
        return cls(flow, context.background, settings, progress=context.progress, cache=context.cache, **params)

    def fit(self, train: Tensor) -> LikelihoodRatio:
        if self.background is None:
            if not self.flow.discrete:
                raise ConfigError("the perturbation background model is defined for 8-bit images; pass `background`")
            torch.manual_seed(self.seed)
            bg = build_flow(self.flow.config).to(_device_of(self.flow))
            g = torch.Generator().manual_seed(self.seed + 1)
            self.background = fit_flow(bg, train, self.steps, self.train_batch_size, self.lr,
                                       transform=lambda b: perturb_pixels(b, self.perturbation_rate, g),
                                       seed=self.seed, progress=self.progress)
        self.fitted = True
        return self

    def fitted_state(self) -> dict[str, Any]:
        self._require_fit()
        if not capabilities(self.background).traceable:
            raise ConfigError("a likelihood ratio with a given background model cannot be saved in a detector file")
        return {"background_config": self.background.config, "background_state": self.background.state_dict()}

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        background = build_flow(state["background_config"])
        background.load_state_dict(state["background_state"])
        self.background = background.to(_device_of(self.flow)).eval()
        self.fitted = True

    def score(self, x: Tensor) -> np.ndarray:
        self._require_fit()
        return self._bpd(x) - self._bpd(x, self.background)


def compressed_bits_per_dim(x: Tensor, codec: str = "png") -> np.ndarray:
    """Length in bits per dimension of each 8-bit image under a lossless compressor.

    Args:
        x: uint8 images ``[B, C, H, W]`` (C = 1 or 3) or floats ``k / 255``.
        codec: ``"png"`` (zlib, maximum compression) or ``"jp2"`` (lossless JPEG 2000).
    """
    from PIL import Image

    if x.dtype != torch.uint8:
        x = torch.round(x.float() * 255).clamp(0, 255).to(torch.uint8)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise InputError(f"compressed length needs gray or RGB images [B, C, H, W], got shape {tuple(x.shape)}")
    arrays = x.permute(0, 2, 3, 1).cpu().numpy()
    dims = arrays[0].size
    out = np.empty(len(arrays))
    for i, a in enumerate(arrays):
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        buf = io.BytesIO()
        if codec == "png":
            im.save(buf, format="PNG", optimize=True, compress_level=9)
        elif codec == "jp2":
            im.save(buf, format="JPEG2000", irreversible=False)
        else:
            raise ConfigError(f"unknown codec {codec!r}; use 'png' or 'jp2'")
        out[i] = 8 * len(buf.getvalue()) / dims
    return out


class ComplexityCorrected(OODScore):
    """``bpd(x) - L(x)``: the likelihood corrected by the input's complexity (Serra et al. 2020).

    ``L(x)`` is the image's length in bits per dimension under a lossless compressor, a stand-in
    for a universal model. Simple images (MNIST) get high likelihood from any model and compress
    well; subtracting ``L`` removes that bias. Higher = more anomalous.

    Args:
        flow: an image flow.
        codec: ``"png"`` (the ``complexity`` score) or ``"jp2"`` (``complexity_jp2``).

    References:
        Serra et al. Input Complexity and Out-of-distribution Detection with Likelihood-based
        Generative Models. ICLR 2020.
    """

    name = "complexity"

    @classmethod
    def applies_to(cls, flow: Any, **params: Any) -> bool:
        """8-bit images only: a compressor's length means nothing for vectors."""
        return bool(getattr(flow, "discrete", False)) and len(flow.input_shape) == 3

    def __init__(self, flow: FlowModel, codec: str = "png", batch_size: int = 512, seed: int = 0,
                 cache: dict | None = None, noise: str = "uniform") -> None:
        super().__init__(flow, batch_size, seed, cache, noise)
        if flow.input_shape is not None and len(flow.input_shape) != 3:
            raise ConfigError("the complexity correction is defined for images; this model takes vectors")
        self.codec = codec
        self.name = "complexity" if codec == "png" else f"complexity_{codec}"

    def score(self, x: Tensor) -> np.ndarray:
        return self._bpd(x) - compressed_bits_per_dim(x, self.codec)


class Typicality(OODScore):
    """Distance of the NLL from the model's entropy estimate (Nalisnick et al. 2019).

    :meth:`fit` estimates the entropy as the mean bits/dim of in-distribution training data. With
    ``batch_size=1`` (default) the score is the single-sample form ``|bpd(x) - H|``; with
    ``batch_size=M > 1``, :meth:`score` returns one score per consecutive group of M inputs,
    ``|mean bpd(group) - H|``, the batch test of the paper (the test statistic for "is this batch typical").

    References:
        Nalisnick, Matsukawa, Teh, Lakshminarayanan. Detecting Out-of-Distribution Inputs to Deep
        Generative Models Using Typicality. 2019.
    """

    name = "typicality"
    needs_fit = True

    def __init__(self, flow: FlowModel, batch_size: int = 1, scoring_batch_size: int = 512, seed: int = 0,
                 max_fit_samples: int = 10000, cache: dict | None = None, noise: str = "uniform") -> None:
        super().__init__(flow, scoring_batch_size, seed, cache, noise)
        if batch_size < 1:
            raise ConfigError(f"typicality batch_size must be >= 1, got {batch_size}")
        self.group = batch_size
        self.max_fit_samples = max_fit_samples
        self.entropy: float | None = None
        if batch_size > 1:
            self.name = f"typicality_batch{batch_size}"

    @classmethod
    def from_settings(cls, flow: FlowModel, settings: ScoreSettings, context: ScoreContext, **params: Any
                      ) -> Typicality:
        return cls(flow, settings.typicality_batch, scoring_batch_size=settings.batch_size, seed=settings.seed,
                   cache=context.cache, noise=settings.noise, **params)

    def fitted_state(self) -> dict[str, Any]:
        self._require_fit()
        return {"entropy": self.entropy}

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        self.entropy = float(state["entropy"])
        self.fitted = True

    def fit(self, train: Tensor) -> Typicality:
        if len(train) > self.max_fit_samples:
            idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))[: self.max_fit_samples]
            train = train[idx]
        self.entropy = float(self._bpd(train).mean())
        self.fitted = True
        return self

    def score(self, x: Tensor) -> np.ndarray:
        self._require_fit()
        bpd = self._bpd(x)
        if self.group == 1:
            return np.abs(bpd - self.entropy)
        n = len(bpd) // self.group
        if n == 0:
            raise InputError(f"need at least {self.group} inputs for the batch typicality test, got {len(bpd)}")
        return np.abs(bpd[: n * self.group].reshape(n, self.group).mean(1) - self.entropy)


class ScaleLikelihood(OODScore):
    """Negative log-density (bits per latent dimension) of one part of a multi-scale flow's latents.

    ``which="last"``: the latents of the last scale alone, which pass through every layer and
    hold the most global information; ``which="early"``: all earlier scales' factored-out latents,
    which the paper argues hold local pixel statistics (Kirichenko et al. 2020, Section 5).
    The prior's density only: the log-determinant is shared by all scales and not split.

    References:
        Kirichenko, Izmailov, Wilson. NeurIPS 2020; Schirrmeister et al. NeurIPS 2020.
    """

    needs_fit = False

    @classmethod
    def applies_to(cls, flow: Any, which: str = "last", **params: Any) -> bool:
        """Flows with per-scale latents; ``early`` needs more than one scale."""
        return capabilities(flow).scale_latents and (which == "last" or flow.num_scales > 1)

    def __init__(self, flow: FlowModel, which: str = "last", batch_size: int = 512, seed: int = 0,
                 noise: str = "uniform") -> None:
        super().__init__(flow, batch_size, seed, noise=noise)
        if not capabilities(flow).scale_latents:
            raise ConfigError(f"the latent_{which} score needs a multi-scale flowood flow; "
                              f"{flow.config.get('flow', 'this model')} has no per-scale latents")
        if which not in ("last", "early"):
            raise ConfigError(f"which must be 'last' or 'early', got {which!r}")
        if which == "early" and flow.num_scales < 2:
            raise ConfigError("this flow has a single scale; there are no early-scale latents")
        self.which = which
        self.name = f"latent_{which}_scale" + ("s" if which == "early" else "")

    @classmethod
    def from_settings(cls, flow: FlowModel, settings: ScoreSettings, context: ScoreContext, **params: Any
                      ) -> ScaleLikelihood:
        return cls(flow, batch_size=settings.batch_size, seed=settings.seed, noise=settings.noise, **params)

    @torch.inference_mode()
    def score(self, x: Tensor) -> np.ndarray:
        self.flow.eval()
        device = _device_of(self.flow)
        g = torch.Generator().manual_seed(self.seed)
        out = []
        parts = slice(-1, None) if self.which == "last" else slice(None, -1)
        dims = sum(self.flow.scale_dims[parts])
        for b in _batches(x, self.batch_size):
            log_prior = self.flow.log_prior_by_scale(b.to(device), noise=self.noise, generator=g)
            nll = -log_prior[:, parts].sum(1)
            out.append((nll / (dims * math.log(2))).float().cpu())
        return torch.cat(out).numpy().astype(np.float64)


class WAIC(OODScore):
    """Watanabe-Akaike criterion over an ensemble of flows (Choi et al. 2018), in bits/dim.

    ``WAIC(x) = mean_k log p_k(x) - var_k log p_k(x)``; the score is ``-WAIC`` per dimension, so
    inputs on which the ensemble disagrees count as more anomalous.

    Args:
        flows: two or more flows trained on the same data (different seeds).

    References:
        Choi, Jang, Alemi. WAIC, but Why? Generative Ensembles for Robust Anomaly Detection. 2018.
    """

    name = "waic"
    by_default = False

    def __init__(self, flows: list[FlowModel], batch_size: int = 512, seed: int = 0, cache: dict | None = None,
                 noise: str = "uniform") -> None:
        if len(flows) < 2:
            raise ConfigError(f"WAIC needs an ensemble of at least 2 flows, got {len(flows)}")
        shapes = {f.input_shape for f in flows}
        if len(shapes) > 1:
            raise ModelError(f"ensemble flows take different input shapes: {sorted(shapes)}")
        super().__init__(flows[0], batch_size, seed, cache, noise)
        self.flows = flows

    @classmethod
    def from_settings(cls, flow: FlowModel, settings: ScoreSettings, context: ScoreContext, **params: Any) -> WAIC:
        if not context.ensemble:
            raise ConfigError("the waic score needs an ensemble: pass `ensemble=[checkpoint, ...]`")
        return cls([flow, *context.ensemble], settings.batch_size, settings.seed, context.cache, settings.noise,
                   **params)

    def score(self, x: Tensor) -> np.ndarray:
        bpd = np.stack([self._bpd(x, f) for f in self.flows])
        log_p = -bpd  # log-likelihood in bits per dim, up to the shared factor D ln 2
        d = self.flow.num_dims * math.log(2)
        # the variance is taken in nats per image, then brought back to bits/dim
        waic = log_p.mean(0) - (log_p * d).var(0, ddof=1) / d
        return -waic


@dataclass(frozen=True)
class ScoreEntry:
    """A score in the table :data:`SCORES`: its class, and the parameters its name fixes (``complexity_jp2`` is
    :class:`ComplexityCorrected` with ``codec="jp2"``)."""

    cls: type[OODScore]
    params: dict[str, Any] = field(default_factory=dict)

    def build(self, flow: FlowModel, settings: ScoreSettings, context: ScoreContext) -> OODScore:
        """The score, made as its class says (:meth:`OODScore.from_settings`)."""
        return self.cls.from_settings(flow, settings, context, **self.params)


    def applies_to(self, flow: Any) -> bool:
        """Whether the score makes sense for ``flow`` (see :meth:`OODScore.applies_to`)."""
        return self.cls.applies_to(flow, **self.params)


#: every score by name: :func:`make_score`, the commands' choices and help, and the docs derive from it.
SCORES: Registry[ScoreEntry] = Registry("score", "score")


def register_score(name: str, cls: type[OODScore], *, replace: bool = False, **params: Any) -> type[OODScore]:
    """Make the score ``cls`` known by ``name`` (to :func:`make_score`, ``evaluate(scores=[...])``, detectors).

    Args:
        name: its name.
        cls: a subclass of :class:`OODScore` (its :meth:`~OODScore.from_settings` says what it takes).
        replace: replace a score already known by ``name`` (otherwise refused).
        **params: parameters of ``cls`` that this name fixes, e.g. ``codec="jp2"``.

    Returns:
        ``cls``.
    """
    if not (isinstance(cls, type) and issubclass(cls, OODScore)):
        raise ConfigError(f"a score is a subclass of OODScore, got {cls!r}")
    SCORES.register(name, ScoreEntry(cls, dict(params)), replace=replace)
    return cls


def score_applies(name: str, flow: Any) -> bool:
    """Whether the registered score ``name`` makes sense for ``flow`` (``evaluate`` computes by default only
    those that do: no complexity for vectors, no early scales for a single-scale flow)."""
    return SCORES[name].applies_to(flow)


class _RegisteredNames(Sequence[str]):
    """Names in :data:`SCORES` (those ``keep`` accepts), read when used: a score registered later is in it."""

    def __init__(self, keep: Callable[[ScoreEntry], bool]) -> None:
        self.keep = keep

    def _names(self) -> tuple[str, ...]:
        return tuple(name for name, entry in SCORES.items() if self.keep(entry))

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


register_score("likelihood", NegativeLogLikelihood)
register_score("complexity", ComplexityCorrected, codec="png")
register_score("complexity_jp2", ComplexityCorrected, codec="jp2")
register_score("typicality", Typicality)
register_score("latent_last_scale", ScaleLikelihood, which="last")
register_score("latent_early_scales", ScaleLikelihood, which="early")
register_score("likelihood_ratio", LikelihoodRatio)
register_score("waic", WAIC)

#: every score's name, in the table's order.
SCORE_NAMES: Sequence[str] = _RegisteredNames(lambda entry: True)
#: the scores ``flowood evaluate`` computes when none are named: those that need no extra model.
DEFAULT_SCORES: Sequence[str] = _RegisteredNames(lambda entry: entry.cls.by_default)


def make_score(name: str, flow: Any, options: ScoreOptions | None = None, *, ensemble: list[Any] | None = None,
               background: Any = None, cache: dict | None = None, progress: bool = True, **option_values: Any
               ) -> OODScore:
    """Build a score by name (see :data:`SCORES`).

    Args:
        name: a name in :data:`SCORE_NAMES`.
        flow: a flowood flow or any density (see :mod:`flowood.ood.density`).
        options: a :class:`ScoreOptions` (e.g. an evaluation's ``score_options``) or :class:`ScoreSettings`.
        ensemble: more flows trained on the same data (``waic``); densities as ``flow``.
        background: a trained background flow (``likelihood_ratio``; None: one is trained by ``fit``).
        cache: a dict shared by several scores: each likelihood is computed once.
        progress: show progress (a background flow's training).
        **option_values: any field of :class:`ScoreSettings`, e.g. ``typicality_batch=4, seed=1``.

    Raises:
        ConfigError: an unknown name (with the closest one) or option, or a score that cannot work with this model.
    """
    entry = SCORES[name]
    settings = merge_options(ScoreSettings, options, option_values)
    flow = as_density(flow)
    context = ScoreContext([as_density(f, flow.input_shape) for f in ensemble or []],
                           as_density(background, flow.input_shape) if background is not None else None,
                           cache, progress)
    return entry.build(flow, settings, context)
