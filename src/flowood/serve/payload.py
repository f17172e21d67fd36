"""A ``POST /score`` request as inputs: uploaded files (multipart) or base64 in JSON, each an image or an ``.npz`` of
rows, checked against the :class:`~flowood.serve.options.Limits` before anything is decoded.

Both forms name their inputs, as ``flowood score`` names files, so the answer's rows say which input each is:

* ``multipart/form-data``: every uploaded file is an input, named by its file name;
* ``application/json``: ``{"inputs": [{"name": "a.png", "data": "<base64>"}, ...]}`` (``name`` optional).

An ``.npz`` (recognised by its zip signature) gives one input per row of its ``images`` or ``embeddings`` array,
named ``NAME#ROW``, as in ``flowood score``.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from flowood.deploy.inputs import Item, read_image, read_npz
from flowood.serve.options import Limits

__all__ = ["Refusal", "read_payload", "JSON_SCHEMA", "ZIP_SIGNATURE"]

#: the first bytes of a zip file, hence of an ``.npz``.
ZIP_SIGNATURE = b"PK\x03\x04"

#: the JSON request body, as JSON Schema (it goes into the OpenAPI schema).
JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {"inputs": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["data"],
        "properties": {"name": {"type": "string", "description": "how the input is named in its row"},
                       "data": {"type": "string", "contentEncoding": "base64",
                                "description": "an image file (PNG, JPEG, ...) or an .npz, base64-encoded"}}}}},
}


@dataclass
class Refusal(Exception):
    """A request that is not scored at all, with the HTTP status and the reason that answer it."""

    status: int
    detail: str

    def __str__(self) -> str:
        return self.detail


def read_payload(payload: Any, limits: Limits) -> list[Item]:
    """The inputs of one request, in order (unreadable ones as failed items, scored as errors).

    Args:
        payload: what LitServe hands on: the parsed form (multipart) or the parsed JSON body.
        limits: what one request may hold.

    Raises:
        Refusal: no inputs, more than ``max_inputs``, an image over ``max_pixels``, a malformed JSON body or bad
            base64 (statuses 413 or 422).
    """
    files = _form_files(payload) if hasattr(payload, "multi_items") else _json_files(payload)
    if not files:
        raise Refusal(422, "no inputs: upload image or .npz files (multipart/form-data), or send "
                           '{"inputs": [{"name": ..., "data": BASE64}, ...]} as JSON')
    items: list[Item] = []
    for name, data in files:
        items.extend(_read_file(name, data, limits))
        if len(items) > limits.max_inputs:
            raise Refusal(413, f"more than {limits.max_inputs} inputs in one request; send them in several")
    return items


def _form_files(form: Any) -> list[tuple[str, bytes]]:
    files = []
    for field, value in form.multi_items():
        if isinstance(value, str):
            raise Refusal(422, f"form field {field!r} is not a file: upload each input as a file")
        files.append((value.filename or field, value.file.read()))
    return files


def _json_files(body: Any) -> list[tuple[str, bytes]]:
    entries = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise Refusal(422, 'the JSON body must be {"inputs": [{"name": ..., "data": BASE64}, ...]}')
    files = []
    for i, entry in enumerate(entries):
        data = entry.get("data") if isinstance(entry, dict) else None
        name = entry.get("name", f"inputs[{i}]") if isinstance(entry, dict) else None
        if not isinstance(data, str) or not isinstance(name, str):
            raise Refusal(422, f"inputs[{i}] must be an object with a base64 string `data` (and a string `name`)")
        try:
            files.append((name, base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError) as err:
            raise Refusal(422, f"inputs[{i}] ({name}): `data` is not base64 ({err})") from None
    return files


def _read_file(name: str, data: bytes, limits: Limits) -> list[Item]:
    if data.startswith(ZIP_SIGNATURE):
        return list(read_npz(name, io.BytesIO(data)))
    _check_pixels(name, data, limits.max_pixels)
    return [read_image(name, io.BytesIO(data))]


def _check_pixels(name: str, data: bytes, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels``; nothing is decoded (an unreadable header is
    left for the decoder to report)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError as err:
        raise Refusal(413, f"{name}: {err}") from None
    except (OSError, SyntaxError, ValueError):
        return
    if width * height > max_pixels:
        raise Refusal(413, f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} per image")
