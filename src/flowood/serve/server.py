"""``flowood serve``: a saved detector as an HTTP service on LitServe.

:func:`build_server` makes the :class:`litserve.LitServer` (one :class:`~flowood.serve.api.DetectorAPI`, its workers
and dynamic batching, the :class:`~flowood.serve.http.Gate` in front, ``GET /metadata``, the request body in the
OpenAPI schema); :func:`serve` runs it until SIGTERM or Ctrl+C, finishing the requests in flight.

Example:
    >>> from flowood.serve import serve
    >>> serve("detector.pt", port=8000, max_batch_size=32)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import litserve
import torch
from fastapi.responses import JSONResponse

from flowood import __version__
from flowood.deploy.load import load_detector
from flowood.deploy.pipeline import detector_info
from flowood.engines.common import read_manifest
from flowood.options import ConfigError, merge_options
from flowood.serve.api import DetectorAPI
from flowood.serve.http import ACCESS_LOGGER, Gate, GateSettings
from flowood.serve.options import ServeOptions
from flowood.serve.payload import JSON_SCHEMA

__all__ = ["build_server", "serve", "server_metadata"]


def server_metadata(detector_path: str | Path, options: ServeOptions) -> dict[str, Any]:
    """What ``GET /metadata`` answers: the detector (its provenance, threshold and calibration FPR), the input it
    takes, the backend (and the export of its flow it scores on, or the detector's export folder, with its
    precision), the batching and the limits.
    Loads the detector once, so a bad file fails here, before any worker starts.

    Raises:
        CheckpointError, ConfigError: the detector cannot be loaded on ``options.backend``.
    """
    detector = load_detector(detector_path, device="cpu", backend=options.backend, flow_export=options.flow_export)
    path = Path(detector_path)
    shape = list(detector.input_shape)
    about = detector_info(path) if path.is_file() else {"file": str(path), "kind": "export folder",
                                                        "precision": read_manifest(path).get("precision", "fp32"),
                                                        **(getattr(detector, "provenance_", None) or {})}
    return {
        "flowood_version": __version__,
        "detector": about,
        "threshold": float(detector.threshold()),
        "fpr": float(detector.fpr),
        "input": {"shape": shape, "takes": "uint8 images (PNG, JPEG, ...; CxHxW)" if len(shape) == 3 else
                  f"vectors of {shape[0]} features (rows of an .npz)", "mismatch": options.mismatch},
        "backend": options.backend,
        "flow_export": None if options.flow_export is None else {
            "folder": str(options.flow_export), "precision": read_manifest(Path(options.flow_export)).get("precision",
                                                                                                        "fp32")},
        "batching": {"max_batch_size": options.max_batch_size, "batch_timeout": options.batch_timeout,
                     "workers": options.workers},
        "limits": asdict(options.limits),
        "auth": "bearer token" if options.token_file else "none",
    }


def build_server(detector: str | Path, options: ServeOptions | None = None, **option_values: Any
                 ) -> litserve.LitServer:
    """The LitServer for ``detector``, ready to :meth:`~litserve.LitServer.run`.

    Args:
        detector: a detector file, or its export folder (scored on ``backend``).
        options: a :class:`~flowood.serve.options.ServeOptions`.
        **option_values: any of its fields, e.g. ``max_batch_size=32, token_file="token.txt"``.

    Raises:
        ConfigError: an unreadable or empty token file, or options that do not fit together.
        CheckpointError: the detector cannot be loaded.
    """
    o = merge_options(ServeOptions, options, option_values)
    metadata = server_metadata(detector, o)
    accelerator = _accelerator(o)
    server = litserve.LitServer(DetectorAPI(detector, o), accelerator=accelerator, devices=1 if accelerator ==
                                "cpu" else "auto", workers_per_device=o.workers, timeout=o.timeout,
                                restart_workers=True, model_metadata={"flowood": __version__})
    server.app.add_api_route("/metadata", _metadata_endpoint(metadata), methods=["GET"],
                             summary="the detector, its input, threshold, backend, batching and limits")
    _document_score(server)
    settings = GateSettings(_read_token(o.token_file), int(o.limits.max_body_mb * 1_000_000), o.timeout)
    server.app.add_middleware(Gate, settings=settings)
    return server


def serve(detector: str | Path, options: ServeOptions | None = None, **option_values: Any) -> None:
    """Serve ``detector`` until SIGTERM or Ctrl+C (see :func:`build_server` for the arguments).

    On SIGTERM the requests in flight are answered, new ones are not taken, and the workers stop: what Ctrl+C does.
    """
    o = merge_options(ServeOptions, options, option_values)
    if o.host != "127.0.0.1" and o.token_file is None:
        warnings.warn(f"serving on every interface ({o.host}) without a `token_file`: anyone who reaches this machine "
                      "can score with the detector and read its metadata", stacklevel=2)
    server = build_server(detector, o)
    _log_access_to_stderr()
    previous = signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        server.run(host=o.host, port=o.port, num_api_servers=1, generate_client_file=False, log_level="warning")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt_once(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl+C: LitServe then shuts down gracefully; a second SIGTERM during it is ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _accelerator(o: ServeOptions) -> str:
    if o.backend != "torch" or o.device == "cpu":
        return "cpu"
    if o.device in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    if o.device == "cuda":
        raise ConfigError("device='cuda' was asked for, but PyTorch sees no CUDA GPU here")
    return "cpu"


def _read_token(token_file: str | None) -> str | None:
    if token_file is None:
        return None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the token file {token_file} ({err})") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"the token file {token_file} must hold one token (no spaces), on one line")
    return token


def _metadata_endpoint(metadata: dict[str, Any]) -> Any:
    async def metadata_endpoint() -> JSONResponse:
        return JSONResponse(metadata)
    return metadata_endpoint


def _document_score(server: litserve.LitServer) -> None:
    """Describe ``POST /score``'s two body forms and its answers in the OpenAPI schema (LitServe takes the raw
    request, so FastAPI cannot infer them)."""
    multipart = {"type": "object", "properties": {"files": {"type": "array", "items": {"type": "string",
                                                                                      "format": "binary"}}}}
    row = {"type": "object", "properties": {"input": {"type": "string"}, "score": {"type": ["number", "null"]},
                                            "decision": {"enum": ["in", "ood", "error"]},
                                            "ood": {"type": ["boolean", "null"]},
                                            "percentile": {"type": ["number", "null"]},
                                            "error": {"type": "string"}, "adapted": {"type": "string"}}}
    rows = {"application/json": {"schema": {"type": "object", "properties": {"rows": {"type": "array", "items": row},
                                                                             "detail": {"type": "string"}}}}}
    detail = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}
    extra = {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": multipart},
                                                      "application/json": {"schema": JSON_SCHEMA}}},
        "responses": {"200": {"description": "every input scored", "content": rows},
                      "422": {"description": "an input could not be scored (its row says why), or a malformed "
                              "request", "content": rows},
                      **{code: {"description": why, "content": detail} for code, why in (
                          ("400", "a body that is not JSON"), ("401", "no valid bearer token"),
                          ("408", "the body did not arrive in time"),
                          ("413", "over a limit: body size, inputs per request, pixels per image"),
                          ("415", "a body that is neither multipart/form-data nor JSON"),
                          ("504", "not scored in time"))}},
    }
    for route in server.app.routes:
        if getattr(route, "path", None) == "/score":
            route.openapi_extra = extra
            route.summary = "score one or several inputs: one row each, as flowood score writes"


def _log_access_to_stderr() -> None:
    log = logging.getLogger(ACCESS_LOGGER)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

