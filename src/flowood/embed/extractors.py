"""Feature extractors a deployed detector carries: 8-bit images in, a classifier's features (and logits) out.

A detector on a classifier's features (:mod:`flowood.deploy.pipeline`) needs the classifier itself, so that it can
score raw images. Two kinds, each kept in a detector file as weights and plain data only:

* :class:`ClassifierExtractor`: a classifier ``flowood embed`` trained or loaded (a flowood classifier file, or a
  torchvision architecture by name with a ``state_dict`` from a local file), with its input transform. Features
  are the input of its last linear layer; logits its output.
* :class:`ExportedExtractor`: your own model saved with ``torch.export`` (a ``.pt2`` file). The protocol:

  - input: one float32 tensor ``[batch, C, H, W]`` of images with values ``k / 255`` in [0, 1] (normalisation,
    resizing and anything else your model needs happen inside it); the channels and size are those of the
    example you exported with, and flowood adapts images to them;
  - output: features ``[batch, D]``, or a tuple ``(features [batch, D], logits [batch, K])``;
  - a dynamic batch dimension is best (``dynamic_shapes={"x": {0: torch.export.Dim("batch")}}``); with a fixed
    batch size flowood runs it in chunks of that size.

  flowood reads the ``.pt2`` with ``torch.export.load`` once, when a detector is fitted (PyTorch warns that this
  uses pickle: fit only with files you trust). The detector file then holds the graph as JSON and the weights as
  tensors: loading it unpickles nothing, and the graph is checked before PyTorch rebuilds it (:func:`check_program`:
  only PyTorch's own tensor operators and arithmetic on sizes, size expressions of a strict form, no guard code).

Example:
    >>> import torch
    >>> from flowood.embed import SmallCNN
    >>> extractor = ClassifierExtractor(SmallCNN(1, 10, embedding_dim=8).eval(),
    ...                                 Preprocess(1, mean=(0.5,), std=(0.5,)), "smallcnn", (1, 28, 28))
    >>> features, logits = extractor(torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8))
    >>> tuple(features.shape), tuple(logits.shape)
    ((2, 8), (2, 10))
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowood.checkpoints import CheckpointError, file_sha256
from flowood.embed.backbones import Preprocess, build_backbone, feature_extractor, last_linear
from flowood.embed.run import load_classifier
from flowood.errors import DataError

__all__ = ["FeatureExtractor", "ClassifierExtractor", "ExportedExtractor", "EXTRACTORS", "load_extractor",
           "extractor_from_spec", "check_program"]


class FeatureExtractor(nn.Module):
    """Base class: uint8 images ``[N, *input_shape]`` -> ``(features [N, D], logits [N, K] or None)``.

    Attributes:
        kind: the registry name (:data:`EXTRACTORS`).
        input_shape: ``(C, H, W)`` of the images it takes (others are adapted to it first).
        source: where it came from (a file and its hash, or a description).
    """

    kind: ClassVar[str] = "extractor"
    gives_logits: bool = False

    def __init__(self, input_shape: tuple[int, ...], source: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.source = dict(source or {})

    def head(self) -> tuple[Tensor, Tensor] | None:
        """``(weight [K, D], bias [K])`` of the last linear layer, when the model's logits are known to be one."""
        return None

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild the extractor: plain data and tensors only."""
        return {"kind": self.kind, "input_shape": list(self.input_shape), "source": self.source}

    def describe(self) -> str:
        """One line for ``flowood detector info``."""
        return self.kind


class ClassifierExtractor(FeatureExtractor):
    """A classifier's features (the input of its last linear layer) and logits, after its input transform.

    Args:
        model: the classifier (in eval mode).
        preprocess: its input transform (uint8 images -> the float tensor it takes).
        backbone: ``smallcnn`` or a torchvision model name (how the model is rebuilt on loading).
        input_shape: ``(C, H, W)`` of the images it is given (the in-distribution images' shape).
        source: where it came from.
    """

    kind = "classifier"
    gives_logits = True

    def __init__(self, model: nn.Module, preprocess: Preprocess, backbone: str, input_shape: tuple[int, ...],
                 source: dict[str, Any] | None = None) -> None:
        super().__init__(input_shape, source)
        self.model = model.eval()
        self.preprocess = preprocess
        self.backbone = backbone
        self.body = feature_extractor(model)
        self.linear = last_linear(self.model)[2]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(self.preprocess(images)).flatten(1).float()
        return features, self.linear(features)

    def head(self) -> tuple[Tensor, Tensor]:
        bias = self.linear.bias if self.linear.bias is not None else torch.zeros(self.linear.out_features)
        return self.linear.weight.detach().float().cpu(), bias.detach().float().cpu()

    def spec(self) -> dict[str, Any]:
        embedding_dim = getattr(getattr(self.model, "embedding", None), "out_features", None)
        return {**super().spec(), "backbone": self.backbone, "num_classes": int(self.linear.out_features),
                "embedding_dim": embedding_dim, "preprocess": self.preprocess.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ClassifierExtractor:
        preprocess = Preprocess.from_dict(spec["preprocess"])
        model = build_backbone(spec["backbone"], spec["num_classes"], in_channels=preprocess.channels,
                               embedding_dim=spec.get("embedding_dim") or 64)
        model.load_state_dict(spec["state_dict"])
        return cls(model.eval(), preprocess, spec["backbone"], tuple(spec["input_shape"]), spec.get("source"))

    def describe(self) -> str:
        p = self.preprocess
        size = f", resized to {p.size}" + (f" and cropped to {p.crop}" if p.crop and p.crop != p.size else "") \
            if p.size else ""
        return (f"{self.backbone} classifier ({self.linear.in_features}-dim features, {self.linear.out_features} "
                f"classes; images {'x'.join(map(str, self.input_shape))}{size}, normalised)")


class ExportedExtractor(FeatureExtractor):
    """A user's model saved with ``torch.export`` (see the module docstring for the protocol).

    Args:
        program: the exported program.
        source: where it came from.
    """

    kind = "exported"

    def __init__(self, program: Any, source: dict[str, Any] | None = None) -> None:
        shape = _program_input_shape(program)
        super().__init__(shape[1:], source)
        self.program = program
        self.module_ = program.module()
        self.batch = shape[0] if isinstance(shape[0], int) else None  # a fixed batch size, or None (dynamic)
        with torch.no_grad():
            self.gives_logits = _check_outputs(self.module_(torch.zeros(self.batch or 2, *self.input_shape)))

    def train(self, mode: bool = True) -> ExportedExtractor:
        """An exported program has no training mode (it was traced as it was, normally in eval mode)."""
        self.training = mode
        return self

    def _outputs(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.module_(x)  # its form was checked once, when loaded (a check here would fix the batch size)
        if isinstance(out, Tensor):
            return out.float(), None
        return out[0].float(), (out[1].float() if self.gives_logits else None)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        x = images.float() / 255.0
        if self.batch is None or len(x) == self.batch:
            return self._outputs(x)
        parts = []
        for start in range(0, len(x), self.batch):  # a fixed batch size: chunks, the last one padded
            chunk = x[start:start + self.batch]
            padded = torch.cat([chunk, chunk[-1:].expand(self.batch - len(chunk), *chunk.shape[1:])])
            features, logits = self._outputs(padded)
            parts.append((features[:len(chunk)], logits[:len(chunk)] if logits is not None else None))
        return (torch.cat([p[0] for p in parts]),
                torch.cat([p[1] for p in parts]) if self.gives_logits else None)

    def spec(self) -> dict[str, Any]:
        from torch._export.serde.serialize import serialize

        artifact = serialize(self.program)
        check_program(json.loads(artifact.exported_program))  # what a detector file could not load back
        return {**super().spec(), "graph": torch.frombuffer(bytearray(artifact.exported_program), dtype=torch.uint8),
                "state_dict": _weights_only(artifact.state_dict), "constants": _weights_only(artifact.constants),
                "example_inputs": _weights_only(artifact.example_inputs)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ExportedExtractor:
        """Rebuild from plain data: the graph is JSON, the weights tensors (nothing is unpickled)."""
        from torch._export.serde.serialize import SerializedArtifact, deserialize

        graph = bytes(spec["graph"].numpy().tobytes())
        try:
            check_program(json.loads(graph))
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"the detector's exported feature extractor was refused: {err}") from err
        try:
            program = deserialize(SerializedArtifact(graph, spec["state_dict"], spec["constants"],
                                                     spec["example_inputs"]))
        except Exception as err:
            raise CheckpointError(f"the detector's exported feature extractor cannot be rebuilt by this PyTorch "
                                  f"{torch.__version__} ({str(err).splitlines()[0][:200]}); fit the detector again "
                                  "from the .pt2 file") from err
        return cls(program, spec.get("source"))

    def describe(self) -> str:
        outputs = "features and logits" if self.gives_logits else "features"
        batch = "dynamic batch" if self.batch is None else f"fixed batch of {self.batch}"
        return (f"a torch.export model giving {outputs} (images {'x'.join(map(str, self.input_shape))} in [0, 1], "
                f"{batch})")


#: what a rebuilt program may call: PyTorch's own tensor operators, and arithmetic on sizes.
_TARGETS = re.compile(r"^(torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+"
                      r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|pow|abs|eq|ne|lt|le|gt|ge|and_|or_"
                      r"|not_)|math\.(ceil|floor|trunc|sqrt)|torch\.(sym_(int|float|max|min|not|ite|sum)|_sym_sqrt))$")
#: the tokens of a size expression (sympy parses it by evaluating it as Python: nothing else may pass).
_TOKENS = re.compile(r"\s+|\d+\.\d+(e[+-]?\d+)?|\d+|'[a-z]{1,4}\d+'|[A-Za-z][A-Za-z0-9]*|\*\*|[-+*/%(),=<>!&|~]")
_SYMBOL = re.compile(r"^[a-z]{1,4}\d+$")
_EXPRESSION_NAMES = {"Symbol", "Integer", "Rational", "Float", "Min", "Max", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And",
                     "Or", "Not", "True", "False", "oo", "zoo", "nan", "positive", "integer", "real", "nonnegative",
                     "finite", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
                     "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
                     "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
                     "RoundDecimal", "ToFloat", "Identity"}


def _safe_expression(text: str) -> bool:
    position = 0
    while position < len(text):
        match = _TOKENS.match(text, position)
        if match is None:
            return False
        token = match.group(0)
        if token[0].isalpha() and token not in _EXPRESSION_NAMES and not _SYMBOL.match(token):
            return False
        position = match.end()
    return True


def check_program(data: Any) -> None:
    """Refuse a serialized exported program (torch's JSON form) that could do more than compute: PyTorch rebuilds
    it by looking up every node's target and by evaluating size expressions with ``sympy.sympify``, and an
    unlifted program runs its guard code. Allowed: targets of PyTorch's ``aten``/``prims`` operators and of
    arithmetic on sizes; size expressions made of numbers, size symbols and sympy's arithmetic; no guard code and
    no custom objects.

    Raises:
        ValueError: what was found, named.
    """
    if data.get("guards_code"):
        raise ValueError("the program carries guard code, which flowood does not run from a file")
    for key in data.get("range_constraints") or {}:
        if not _SYMBOL.match(str(key)):
            raise ValueError(f"a range constraint on {str(key)[:60]!r} is not a size symbol")

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "target" and isinstance(value, str) and not _TARGETS.match(value):
                    raise ValueError(f"the graph calls {value[:80]!r}, which is not one of PyTorch's tensor operators")
                if key == "expr_str" and (not isinstance(value, str) or not _safe_expression(value)):
                    raise ValueError(f"a size expression {str(value)[:80]!r} is not of the form flowood accepts")
                if key in ("as_custom_obj", "custom_obj_values") and value:
                    raise ValueError("the graph holds custom objects, which a detector file cannot keep")
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(data.get("graph_module", {}))


def _check_outputs(out: Any) -> bool:
    """Whether an exported model's outputs (for one batch) are features alone (False) or ``(features, logits)``
    (True).

    Raises:
        DataError: anything else.
    """
    if isinstance(out, Tensor):
        features, logits = out, None
    elif isinstance(out, (tuple, list)) and len(out) in (1, 2) and all(isinstance(o, Tensor) for o in out):
        features, logits = out[0], (out[1] if len(out) == 2 else None)
    else:
        raise DataError("the exported model must return features [batch, D], or (features, logits); it returned "
                        f"{type(out).__name__}")
    if features.dim() != 2 or (logits is not None and (logits.dim() != 2 or len(logits) != len(features))):
        raise DataError(f"the exported model must return features [batch, D] (and logits [batch, K]); it returned "
                        f"shapes {tuple(features.shape)}" + (f" and {tuple(logits.shape)}" if logits is not None
                                                             else ""))
    return logits is not None


def _weights_only(serialized: bytes) -> Any:
    """A tensor container ``torch.export`` serialised, read back without running code (refused if it holds any)."""
    if not serialized:
        return {}
    try:
        return torch.load(io.BytesIO(serialized), weights_only=True)
    except Exception as err:
        raise DataError("the exported model holds objects that are not plain tensors (custom classes or script "
                        "objects), which a detector file cannot keep; export a model of plain tensor operations"
                        ) from err


def _program_input_shape(program: Any) -> tuple[Any, ...]:
    """``(batch, C, H, W)`` of the exported program's one image input (batch: an int if fixed, else None)."""
    user_inputs = [n for n in program.graph.nodes if n.op == "placeholder"
                   and n.name in program.graph_signature.user_inputs]
    if len(user_inputs) != 1:
        raise DataError(f"the exported model must take one input (a batch of images), it takes {len(user_inputs)}")
    value = user_inputs[0].meta.get("val")
    shape = tuple(value.shape) if value is not None else ()
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[1] not in (1, 3):
        raise DataError(f"the exported model's input must be images [batch, C, H, W] with C = 1 or 3 and a fixed "
                        f"size, got {shape}")
    batch = shape[0] if isinstance(shape[0], int) else None
    return (batch, *(int(d) for d in shape[1:]))


#: every kind of feature extractor a detector file can hold, by its ``kind``.
EXTRACTORS: dict[str, type[FeatureExtractor]] = {cls.kind: cls for cls in (ClassifierExtractor, ExportedExtractor)}


def extractor_from_spec(spec: dict[str, Any]) -> FeatureExtractor:
    """Rebuild an extractor from :meth:`FeatureExtractor.spec`.

    Raises:
        CheckpointError: an unknown kind (a file from a newer flowood).
    """
    cls = EXTRACTORS.get(spec.get("kind"))
    if cls is None:
        raise CheckpointError(f"unknown feature extractor kind {spec.get('kind')!r}; this detector was written by "
                              "another flowood version")
    return cls.from_spec(spec)


def load_extractor(path: str | Path, input_shape: tuple[int, ...] | None, backbone: str = "auto",
                   image_size: int | None = None) -> FeatureExtractor:
    """A feature extractor from a file a user has.

    Args:
        path: a classifier ``flowood embed`` wrote (``.classifier.pt``), embeddings ``flowood embed`` wrote
            (``.npz``: the classifier behind them), a torchvision ``state_dict`` (with ``backbone``), or a
            ``torch.export`` program (``.pt2``).
        input_shape: ``(C, H, W)`` of the in-distribution images (a ``.pt2`` model says its own).
        backbone: the torchvision architecture of a plain ``state_dict`` (``auto`` for flowood's files).
        image_size: resize images to this before the backbone, overriding the classifier's own transform.

    Raises:
        CheckpointError, DataError: a file that is missing, unsafe, or none of these.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"classifier {path} does not exist")
    source = {"path": str(path.resolve()), "sha256": file_sha256(path)}
    if path.suffix == ".pt2":
        return ExportedExtractor(_load_program(path), source)
    if path.suffix == ".npz":
        return load_extractor(_classifier_behind(path), input_shape, backbone, image_size)
    if input_shape is None:
        raise DataError("the shape of the in-distribution images is needed to use this classifier")
    model, preprocess, name = load_classifier(path, backbone)
    if image_size is not None:
        preprocess.size, preprocess.crop = image_size, image_size
    return ClassifierExtractor(model.eval(), preprocess, name, input_shape, source)


def _load_program(path: Path) -> Any:
    try:
        return torch.export.load(str(path))
    except Exception as err:
        raise CheckpointError(f"cannot read {path} as a torch.export program ({str(err).splitlines()[0][:200]}); "
                              "save your model with torch.export.save(torch.export.export(model, (example,)), "
                              "'model.pt2')") from err


def _classifier_behind(npz: Path) -> Path:
    """The classifier file behind embeddings ``flowood embed`` wrote: ``<stem>.classifier.pt`` beside them, or the
    weights file their ``meta`` names."""
    import numpy as np

    beside = npz.with_name(f"{npz.stem}.classifier.pt")
    if beside.is_file():
        return beside
    try:
        with np.load(npz, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {npz} ({err})") from err
    weights = Path(str(meta.get("weights", ""))).expanduser()
    if weights.is_file():
        return weights
    raise DataError(f"{npz} does not lead to its classifier (no {beside.name} beside it, and its weights were "
                    f"{meta.get('weights', 'not recorded')!r}); pass the classifier file itself")
