"""The flow model: a sequence of invertible steps, a Gaussian prior, and the likelihood API.

A model is a flat list of named steps. Most steps are :class:`~flowood.flows.base.FlowLayer`
objects; :class:`Split` factors out half of the channels as latents of the current scale
(the multi-scale architecture of RealNVP and Glow). The latents of all scales are put back
together into one tensor ``z`` of the input's shape, so ``forward`` and ``inverse`` are plain
bijections between tensors of the same shape and every latent can be looked at as an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from flowood.errors import InputError
from flowood.flows.base import FlowLayer, LayerRecord, per_sample_sum
from flowood.flows.layers import ActNorm, Squeeze, Standardize, squeeze2d, unsqueeze2d
from flowood.flows.precision import flow_precision, parse_precision
from flowood.flows.preprocessing import DEQUANTIZATION_LOG_DET, LogitTransform, dequantize, quantize

__all__ = ["FlowModel", "Split", "StandardNormal", "FlowTrace", "LogProbParts", "check_batch"]


class Split(nn.Module):
    """Marks where a multi-scale flow factors out half of its channels as latents of the current scale.

    :meth:`factor_out` and :meth:`join` are the one definition of which half leaves, used by the model and by
    every analysis that follows tensors through the flow.
    """

    kind = "split"

    @staticmethod
    def factor_out(h: Tensor) -> tuple[Tensor, Tensor]:
        """``(factored-out latents, what the flow continues with)``: the flow keeps the first half of the
        channels and the second half leaves, as the original's ``keepChannels``."""
        c = h.shape[1] // 2
        return h[:, c:], h[:, :c]

    @staticmethod
    def join(factored: Tensor, h: Tensor) -> Tensor:
        """Inverse of :meth:`factor_out`."""
        return torch.cat((h, factored), dim=1)


class StandardNormal(nn.Module):
    """The standard Gaussian prior ``N(0, I)`` over latents of any shape."""

    def log_prob(self, z: Tensor) -> Tensor:
        """Per-sample log-density, shape ``[B]``."""
        return per_sample_sum(-0.5 * z * z) - 0.5 * math.log(2 * math.pi) * z[0].numel()

    def sample(self, shape: tuple[int, ...], temperature: float = 1.0, device: Any = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw from ``N(0, temperature^2 I)``."""
        return torch.randn(shape, device=device, generator=generator) * temperature


@dataclass
class FlowTrace:
    """Everything a forward pass computed, for inspection.

    Attributes:
        records: one :class:`LayerRecord` per step, in order.
        latents: the latents of each scale, ``{"scale0": ..., "scale1": ...}``: factored-out
            parts in the shapes they had when factored out; the last scale's is what remains.
        z: all latents put together in the input's shape.
        log_det: total per-sample log-determinant (preprocessing included).
        log_prob: per-sample log-likelihood, as :meth:`FlowModel.log_prob` defines it.
        inputs: the continuous (dequantized) inputs the flow saw.
    """

    records: list[LayerRecord]
    latents: dict[str, Tensor]
    z: Tensor
    log_det: Tensor
    log_prob: Tensor
    inputs: Tensor | None = None


class LogProbParts(NamedTuple):
    """The log-likelihood of a batch of continuous inputs and the terms it is the sum of (see
    :meth:`FlowModel.log_prob_parts`).

    Attributes:
        log_prob: ``[B]``, the log-likelihood in nats, as :meth:`FlowModel.log_prob` gives it for these continuous
            inputs: ``scale_log_prior.sum(1) + log_det``, and for image models the 1/256 bin width of every dimension.
        log_det: ``[B]``, the flow's log-determinant (preprocessing included).
        scale_log_prior: ``[B, scales]``, the prior's log-density of each scale's latents, earliest first.
    """

    log_prob: Tensor
    log_det: Tensor
    scale_log_prior: Tensor


def check_batch(x: Tensor, input_shape: tuple[int, ...], discrete: bool, dtype: torch.dtype | None = None,
                image_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """Refuse, with a message that names the fix, a batch a flow of ``input_shape`` cannot score: not a tensor, the
    wrong shape, float inputs of another ``dtype`` than the model's (None: any), NaN/Inf, or for image flows
    (``discrete``) float values outside ``image_range``. uint8 images of the right shape always pass.

    Raises:
        TypeError: not a tensor. InputError: any other of the above.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor batch, got {type(x).__name__}")
    if tuple(x.shape[1:]) != input_shape:
        hint = " (use flowood.data.adapt_images to convert gray/RGB and resize)" if len(input_shape) == 3 else ""
        raise InputError(f"this model takes inputs of shape {input_shape} per sample, got batch of shape "
                         f"{tuple(x.shape)}{hint}")
    if x.dtype == torch.uint8:
        return
    if dtype is not None and x.dtype != dtype:
        raise InputError(f"expected {dtype} inputs (the model's dtype) or uint8 images, got {x.dtype}; convert "
                         f"them with x.to({dtype}) (or the model with model.to({x.dtype}))")
    if not bool(torch.isfinite(x).all()):
        raise InputError("inputs contain NaN or Inf values")
    if discrete and image_range is not None:
        lo, hi = float(x.min()), float(x.max())
        if lo < image_range[0] - 1e-6 or hi > image_range[1] + 1e-6:
            raise InputError(f"image inputs must lie in [0, 1] (uint8 / 255), got values in [{lo:.3g}, {hi:.3g}]; "
                             "undo any normalisation before scoring")


class FlowModel(nn.Module):
    """A normalizing flow with a standard Gaussian prior.

    Args:
        input_shape: one sample's shape, ``(C, H, W)`` or ``(D,)``.
        steps: ``(name, step)`` pairs: flow layers and :class:`Split` markers.
        logit_alpha: if not None, inputs are 8-bit images and the RealNVP logit transform with
            this alpha is the first step; ``log_prob`` then dequantizes and reports nats of the
            8-bit image. If None, inputs are continuous vectors or images, modelled as they are.
        config: the configuration the model was built from (kept for checkpoints).

    Calling convention:
        ``forward(x) -> (z, log_det)`` and ``inverse(z) -> x`` are the bijection on continuous
        inputs (for image models: dequantized images in (0, 1)). ``log_prob(x)``,
        ``bits_per_dim(x)`` and ``sample(n)`` work on data as users have it (for image models:
        8-bit images as uint8 or as floats ``k / 255``). ``dequantize(x)`` turns such data into the
        continuous inputs of the bijection, and ``log_prob_parts(y)`` gives the log-likelihood of continuous
        inputs with the terms it sums (log-determinant, each scale's prior log-density).
    """

    # capability flags of the density protocol (see flowood.flows.capabilities): flowood's own flow in PyTorch
    flowood_api = traceable = rebuildable = scale_latents = True
    exported = False

    def __init__(self, input_shape: tuple[int, ...], steps: list[tuple[str, nn.Module]],
                 logit_alpha: float | None = 0.05, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.step_names = [name for name, _ in steps]
        self.steps = nn.ModuleList(step for _, step in steps)
        self.logit = LogitTransform(logit_alpha) if logit_alpha is not None else None
        self.prior = StandardNormal()
        self.config = dict(config or {})
        self._compiled_density: Any = None
        self._lazy_layers: list[ActNorm | Standardize] = []  # layers that initialise themselves from their first batch
        self.st_dtype: torch.dtype | None = None  # mixed precision of the st-networks; None: fp32

    def mixed_precision(self, precision: str | torch.dtype | None = "bf16") -> "FlowModel":
        """Run the st-networks in bf16 or fp16 (autocast), everything else in fp32.

        The coupling arithmetic, 1x1 convolutions, ActNorm and every log-determinant stay in fp32 and the inverse
        stays exact (see :mod:`flowood.flows.precision`). Meant for GPUs with fast bf16/fp16 units; log-likelihoods
        change by the st-networks' rounding (typically well under 1% of bits/dim). An enclosing ``torch.autocast``
        is narrowed to the st-networks in the same way, even without this call.

        Args:
            precision: ``"bf16"``, ``"fp16"``, or ``"fp32"``/None to switch it off.

        Returns:
            the model itself.
        """
        self.st_dtype = parse_precision(precision)
        return self

    def optimize(self, channels_last: bool | None = None, compile: bool = False) -> "FlowModel":
        """Speed-ups that leave the numbers unchanged (log-likelihoods equal to 1e-4 relative, tested).

        Args:
            channels_last: keep convolution weights (and so activations) in channels-last memory
                format, which oneDNN (CPU) and cuDNN convolutions run faster; None: on for image flows.
            compile: run the density pass (``forward`` and the prior) through ``torch.compile``, which
                fuses the many element-wise operations of couplings into few kernels. The first call compiles
                (tens of seconds on a CPU), so it pays off when scoring or training on many inputs. Passes
                that still initialise a layer from data (ActNorm's first batch) run eagerly, so the compiled
                graph has no data-dependent branch and no graph break.

        Returns:
            the model itself.
        """
        if channels_last is None:
            channels_last = len(self.input_shape) == 3
        if channels_last and len(self.input_shape) == 3:
            self.to(memory_format=torch.channels_last)
        return self.compile_density(compile)

    def compile_density(self, enabled: bool = True) -> "FlowModel":
        """Switch the compiled density pass on (``torch.compile`` of ``forward`` and the prior, what
        :meth:`log_prob` runs) or, with ``enabled=False``, off again: the eager pass, e.g. before exporting or
        copying the flow into another graph. :meth:`optimize` calls this for its ``compile`` argument.

        Passes that still initialise a layer from data (ActNorm's first batch) run eagerly either way.

        Returns:
            the model itself.

        Example:
            >>> from flowood.flows import RealNVP
            >>> flow = RealNVP((1, 4, 4), num_blocks=1, num_mid_channels=4).compile_density()
            >>> flow.density_compiled, flow.compile_density(False).density_compiled
            (True, False)
        """
        self._compiled_density = torch.compile(self._density) if enabled else None
        self._lazy_layers = [m for m in self.modules() if isinstance(m, (ActNorm, Standardize))]
        return self

    @property
    def density_compiled(self) -> bool:
        """True while :meth:`log_prob` runs the compiled density pass (see :meth:`compile_density`)."""
        return self._compiled_density is not None

    def _ready_to_compile(self) -> bool:
        """True once no layer has a data-dependent initialisation left (read from a host flag, no sync)."""
        return not any(m.initialization_pending for m in self._lazy_layers)

    # -- properties ------------------------------------------------------------------------
    @property
    def discrete(self) -> bool:
        """True when the model expects 8-bit images (and dequantizes them)."""
        return self.logit is not None

    @property
    def num_scales(self) -> int:
        """Scales of the multi-scale architecture (factor-outs + 1)."""
        return sum(isinstance(s, Split) for s in self.steps) + 1

    @property
    def num_dims(self) -> int:
        """Dimensions of one sample, D."""
        return math.prod(self.input_shape)

    @property
    def scale_dims(self) -> list[int]:
        """Dimensions of each scale's latents, earliest first (they sum to :attr:`num_dims`)."""
        shape, dims = list(self.input_shape), []
        for step in self.steps:
            if isinstance(step, Squeeze):
                shape = [shape[0] * 4, shape[1] // 2, shape[2] // 2]
            elif isinstance(step, Split):
                kept = shape[0] // 2
                dims.append((shape[0] - kept) * math.prod(shape[1:]))
                shape[0] = kept
        return [*dims, math.prod(shape)]

    # -- shapes ----------------------------------------------------------------------------
    def assemble(self, h: Tensor, factored: list[Tensor]) -> Tensor:
        """Put the last scale's output and the factored latents (or any tensors of their shapes, e.g. per-dimension
        likelihood terms) back into the input's shape, undoing every split and squeeze."""
        factored = list(factored)
        for step in reversed(self.steps):
            if isinstance(step, Split):
                h = Split.join(factored.pop(), h)
            elif isinstance(step, Squeeze):
                h = unsqueeze2d(h)
        return h

    def _disassemble(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Inverse of :meth:`assemble`: the deepest tensor and the factored latents."""
        factored = []
        for step in self.steps:
            if isinstance(step, Split):
                part, z = Split.factor_out(z)
                factored.append(part)
            elif isinstance(step, Squeeze):
                z = squeeze2d(z)
        return z, factored

    # -- the bijection ---------------------------------------------------------------------
    def _run(self, x: Tensor, records: list[LayerRecord] | None = None) -> tuple[Tensor, Tensor, list[Tensor]]:
        with flow_precision(x, self.st_dtype):
            return self._run_steps(x, records)

    def _run_steps(self, x: Tensor, records: list[LayerRecord] | None) -> tuple[Tensor, Tensor, list[Tensor]]:
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        h = x
        if self.logit is not None:
            h, ld = self.logit(h)
            log_det = log_det + ld
            if records is not None:
                records.append(LayerRecord("logit", "logit", h, ld))
        factored: list[Tensor] = []
        for name, step in zip(self.step_names, self.steps, strict=True):
            if isinstance(step, Split):
                part, h = Split.factor_out(h)
                factored.append(part)
                if records is not None:
                    records.append(LayerRecord(name, "split", factored[-1], torch.zeros_like(log_det)))
                continue
            if records is None:
                h, ld = step(h)
            else:
                h, ld, extras = step.trace_forward(h)
                records.append(LayerRecord(name, step.kind, h, ld, extras))
            log_det = log_det + ld
        return h, log_det, factored

    def forward(self, x: Tensor, validate: bool = True) -> tuple[Tensor, Tensor]:
        """Map continuous inputs to latents: ``(z, log |det dz/dx|)``, z of the input's shape.

        Args:
            x: continuous inputs ``[B, *input_shape]``: for image models dequantized images in (0, 1) (see
                :func:`~flowood.flows.dequantize`), else vectors.
            validate: check shape, dtype, finiteness and range first (costs one device sync).

        Raises:
            ValueError: inputs of the wrong shape or dtype, NaN/Inf, or image values outside (0, 1).
        """
        if validate:
            self._check_continuous(x)
        return self._transform(x)

    def _transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, log_det, factored = self._run(x)
        return self.assemble(h, factored), log_det

    def inverse(self, z: Tensor) -> Tensor:
        """Map latents (of the input's shape) back to continuous inputs."""
        h, factored = self._disassemble(z)
        with flow_precision(z, self.st_dtype):
            for step in reversed(self.steps):
                if isinstance(step, Split):
                    h = Split.join(factored.pop(), h)
                else:
                    h = step.inverse(h)
        if self.logit is not None:
            h = self.logit.inverse(h)
        return h

    # -- likelihood API --------------------------------------------------------------------
    def check_input(self, x: Tensor, image_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        """Raise a clear ``ValueError`` if ``x`` is not a batch this model can score (see :func:`check_batch`).

        Args:
            x: the batch.
            image_range: for image models, the closed range float inputs must lie in (None: not checked).
        """
        check_batch(x, self.input_shape, self.discrete, self._param_dtype(), image_range)

    def _param_dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if torch.is_floating_point(p)), torch.float32)

    def _check_continuous(self, x: Tensor, method: str = "forward") -> None:
        """Refuse what :meth:`forward` (or ``method``) cannot map: wrong shape or dtype, NaN/Inf, image values outside
        (0, 1)."""
        if not isinstance(x, Tensor) or x.dtype == torch.uint8:
            raise InputError(f"{method}() maps continuous inputs (float tensors); score 8-bit images with log_prob()")
        self.check_input(x, image_range=None)
        if self.discrete:
            lo, hi = float(x.min()), float(x.max())
            if lo <= 0.0 or hi >= 1.0:
                raise InputError(f"{method}() of an image model takes dequantized images in the open interval (0, 1), "
                                 f"got values in [{lo:.3g}, {hi:.3g}]; for 8-bit images use log_prob() (it "
                                 "dequantizes), or flow.dequantize(x) first")

    def dequantize(self, x: Tensor, noise: str = "uniform", generator: torch.Generator | None = None) -> Tensor:
        """The continuous inputs the flow maps for a batch as users have it: for image models 8-bit images
        dequantized with ``noise`` (see :func:`flowood.flows.dequantize`), for vector models the vectors themselves
        (uint8 vectors as floats). What :meth:`log_prob` feeds to :meth:`forward`; no checks.

        Args:
            x: batch ``[B, *input_shape]``: for image models uint8 images or floats ``k / 255``.
            noise: ``"uniform"`` (seeded by ``generator``) or ``"center"`` (deterministic).
            generator: random generator for the noise.

        Returns:
            ``[B, *input_shape]``: for image models floats in (0, 1).

        Example:
            >>> from flowood.flows import RealNVP
            >>> flow = RealNVP((1, 4, 4), num_blocks=1, num_mid_channels=4)
            >>> y = flow.dequantize(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), noise="center")
            >>> y.shape, float(y.max())  # the centre of the lowest of 256 bins
            (torch.Size([2, 1, 4, 4]), 0.001953125)
        """
        if self.discrete:
            return dequantize(x, noise=noise, generator=generator)
        return x.float() if x.dtype == torch.uint8 else x

    def log_prob(self, x: Tensor, noise: str = "uniform", generator: torch.Generator | None = None,
                 validate: bool = True) -> Tensor:
        """Per-sample log-likelihood in nats, shape ``[B]``.

        For image models ``x`` holds 8-bit images (uint8, or floats ``k / 255`` in [0, 1]); they
        are dequantized with ``noise`` and the result is the log-probability of the 8-bit image
        (the ``1 / 256`` bin width of every dimension included), so ``-log_prob / (D ln 2)`` is
        bits/dim as reported in the literature. For vector models it is the log-density of ``x``.

        Args:
            x: batch of shape ``[B, *input_shape]``.
            noise: dequantization noise, ``"uniform"`` or ``"center"`` (deterministic).
            generator: random generator for the dequantization noise.
            validate: check shape, range and finiteness first (costs one device sync).
        """
        if validate:
            self.check_input(x)
        y = self.dequantize(x, noise, generator)
        if self._compiled_density is not None and self._ready_to_compile():
            return self._compiled_density(y)
        return self._density(y)

    def log_prob_parts(self, y: Tensor, validate: bool = True) -> LogProbParts:
        """The log-likelihood of continuous inputs with the terms it sums, in one pass: the log-determinant and each
        scale's prior log-density. The per-scale latent scores read the latter, and an exported density graph
        gives both (:class:`flowood.engines.export.DensityGraph` is this method in fp32).

        Args:
            y: continuous inputs ``[B, *input_shape]``, as :meth:`forward` takes them (for image models dequantized
                images in (0, 1), see :meth:`dequantize`).
            validate: check shape, dtype, finiteness and range first, as :meth:`forward` (costs one device sync).

        Returns:
            a :class:`LogProbParts` ``(log_prob [B], log_det [B], scale_log_prior [B, scales])``.

        Example:
            >>> from flowood.flows import RealNVP
            >>> flow = RealNVP((1, 4, 4), num_blocks=1, num_mid_channels=4)
            >>> x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
            >>> parts = flow.log_prob_parts(flow.dequantize(x, noise="center"))
            >>> parts.scale_log_prior.shape == (3, flow.num_scales)
            True
            >>> torch.allclose(parts.log_prob, flow.log_prob(x, noise="center"), atol=1e-3)
            True
        """
        if validate:
            self._check_continuous(y, "log_prob_parts")
        h, log_det, factored = self._run(y)
        scale_log_prior = torch.stack([self.prior.log_prob(part) for part in (*factored, h)], dim=1)
        log_prob = scale_log_prior.sum(1) + log_det
        if self.discrete:
            log_prob = log_prob + self.num_dims * DEQUANTIZATION_LOG_DET
        return LogProbParts(log_prob, log_det, scale_log_prior)

    def _density(self, y: Tensor) -> Tensor:
        """Log-likelihood of continuous inputs: the flow, the prior and the bin width (what ``compile`` compiles)."""
        z, log_det = self._transform(y)
        return self._log_likelihood(z, log_det)

    def _log_likelihood(self, z: Tensor, log_det: Tensor) -> Tensor:
        """Prior log-density plus log-det, and for image models the 1/256 bin width of every dimension."""
        log_p = self.prior.log_prob(z) + log_det
        if self.discrete:
            log_p = log_p + self.num_dims * DEQUANTIZATION_LOG_DET
        return log_p

    def bits_per_dim(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Per-sample negative log-likelihood in bits per dimension, shape ``[B]``."""
        return -self.log_prob(x, **kwargs) / (self.num_dims * math.log(2.0))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples from the model with latents ``~ N(0, temperature^2 I)``.

        Image models return 8-bit images as floats ``k / 255``; vector models return vectors.
        """
        device = next(self.parameters()).device
        z = self.prior.sample((n,) + self.input_shape, temperature, device="cpu" if generator is not None else device,
                              generator=generator).to(device)
        x = self.inverse(z)
        if self.discrete:
            x = quantize(torch.clamp(x, 0.0, 1.0))
        return x

    def latents_by_scale(self, x: Tensor, noise: str = "uniform", generator: torch.Generator | None = None
                         ) -> list[Tensor]:
        """The latents of each scale, earliest first: factored-out parts, then what the last scale outputs."""
        h, _, factored = self._run(self.dequantize(x, noise, generator))
        return [*factored, h]

    def log_prior_by_scale(self, x: Tensor, noise: str = "uniform", generator: torch.Generator | None = None
                           ) -> Tensor:
        """The prior's log-density of each scale's latents, ``[B, scales]``, earliest first (nats; what the per-scale
        latent scores compare, and what an exported graph gives beside the log-likelihood; see
        :meth:`log_prob_parts`)."""
        return self.log_prob_parts(self.dequantize(x, noise, generator), validate=False).scale_log_prior

    def trace(self, x: Tensor, noise: str = "center", generator: torch.Generator | None = None) -> FlowTrace:
        """Run one forward pass and keep every step's output (and each coupling's s and t).

        Args:
            x: batch as for :meth:`log_prob`.
            noise: dequantization noise; ``"center"`` by default so pictures are reproducible.
        """
        self.check_input(x)
        xc = self.dequantize(x, noise, generator)
        records: list[LayerRecord] = []
        h, log_det, factored = self._run(xc, records)
        z = self.assemble(h, factored)
        latents = {f"scale{i}": f for i, f in enumerate(factored)}
        latents[f"scale{len(factored)}"] = h
        return FlowTrace(records, latents, z, log_det, self._log_likelihood(z, log_det), inputs=xc)

    def coupling_layers(self) -> list[tuple[str, FlowLayer]]:
        """``(name, layer)`` of every coupling layer, in order."""
        return [(n, s) for n, s in zip(self.step_names, self.steps, strict=True)
                if getattr(s, "kind", "") == "coupling"]

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, discrete={self.discrete}"
