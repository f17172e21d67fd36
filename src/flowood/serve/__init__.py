"""A saved detector as an HTTP service (``flowood serve``), on LitServe: ``POST /score`` (multipart uploads or
base64 JSON, images or ``.npz`` rows) answers the rows ``flowood score`` writes; ``GET /health``, ``GET /metadata``,
``GET /metrics`` and ``/openapi.json`` beside it.

The options (:class:`ServeOptions`) import without the server; the rest needs the ``serve`` extra
(``pip install 'flowood[serve]'``) and is imported when first used.

Example:
    >>> from flowood.serve import serve
    >>> serve("detector.pt", port=8000)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from flowood.engines.common import require_module
from flowood.serve.options import Limits, ServeOptions

__all__ = ["DetectorAPI", "Limits", "Refusal", "ServeOptions", "build_server", "read_payload", "serve",
           "server_metadata"]

#: the names that need LitServe, and the module that defines each.
_NEEDS_SERVER = {"DetectorAPI": "api", "Refusal": "payload", "read_payload": "payload", "build_server": "server",
                 "serve": "server", "server_metadata": "server"}


def __getattr__(name: str) -> Any:
    if name not in _NEEDS_SERVER:
        raise AttributeError(f"module 'flowood.serve' has no attribute {name!r}")
    require_module("litserve")
    return getattr(importlib.import_module(f"flowood.serve.{_NEEDS_SERVER[name]}"), name)
