"""How ``flowood serve`` serves a detector: every field of :class:`ServeOptions` is an option (``flowood serve --help``
shows them), defined here once."""

from __future__ import annotations

from dataclasses import dataclass

from flowood.deploy.inputs import mismatch_option
from flowood.engines.backend import backend_option, flow_export_option
from flowood.options import option
from flowood.runtime import device_option

__all__ = ["ServeOptions", "Limits"]


@dataclass
class Limits:
    """What one request may hold; a request over a limit is refused with a 4xx answer before any image is decoded."""

    max_body_mb: float = option(32.0, "largest request body in MB (413 above it, counted as it arrives)", minimum=0.001)
    max_inputs: int = option(64, "most inputs (images, or rows of an .npz) in one request (413 above it)", minimum=1)
    max_pixels: int = option(25_000_000, "most pixels (width x height) in one image, read from its header before it "
                             "is decoded, so a decompression bomb is refused (413) without being expanded", minimum=1)


@dataclass
class ServeOptions:
    """How a detector is served over HTTP (:func:`~flowood.serve.serve`)."""

    host: str = option("127.0.0.1", "the address to listen on: 127.0.0.1 (this machine only), 0.0.0.0 or :: (every "
                       "interface: put it behind a proxy and give a `token_file`)",
                       choices=("127.0.0.1", "0.0.0.0", "::"))
    port: int = option(8000, "the port to listen on", minimum=1024)
    max_batch_size: int = option(16, "requests scored together in one batch by a worker (1: no batching)", minimum=1)
    batch_timeout: float = option(0.01, "seconds a request waits for others to fill its batch", minimum=0.0)
    workers: int = option(1, "scoring processes per device (each holds the detector)", minimum=1)
    timeout: float = option(60.0, "seconds a request may take, from its first byte to its answer: a slower one is "
                            "answered 408 (body still arriving) or 504 (not scored in time)", minimum=0.1)
    token_file: str | None = option(None, "a file holding a bearer token that every request but /health must send "
                                    "(Authorization: Bearer TOKEN); it is never logged", metavar="FILE")
    mismatch: str = mismatch_option()
    device: str = device_option()
    backend: str = backend_option()
    flow_export: str | None = flow_export_option()
    threads: int | None = option(None, "CPU threads of each scoring worker (default: the CPUs this process may use "
                                 "less one, which the HTTP server needs, shared among the workers)", minimum=1,
                                 metavar="N")
    limits: Limits = option(default_factory=Limits, help="what one request may hold")
