"""What the HTTP side of ``flowood serve`` adds around LitServe's app, as one ASGI middleware (:class:`Gate`) in the
process that speaks HTTP: bearer-token auth, admission of ``POST /score`` bodies (content type, size counted as it
arrives, JSON that parses) before they reach a scoring worker, a deadline on every request, one JSON access-log line
per request, and Prometheus metrics at ``GET /metrics``.

Everything refused here is answered 4xx with ``{"detail": ...}``; the token never appears in a log line.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from flowood.serve.api import STATS_HEADERS

__all__ = ["Gate", "GateSettings", "ACCESS_LOGGER", "OPEN_PATHS"]

#: the logger of the access log: one JSON object per request.
ACCESS_LOGGER = "flowood.serve.access"
#: paths answered without a token (for load balancers' and orchestrators' probes).
OPEN_PATHS = frozenset({"/health"})
SCORE_PATH = "/score"
BODY_TYPES = ("multipart/form-data", "application/json")


@dataclass(frozen=True)
class GateSettings:
    """What the gate enforces: the bearer token (None: no auth), the largest body in bytes, and the seconds a request
    may take."""

    token: str | None
    max_body: int
    timeout: float


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class _Metrics:
    """Requests, latency, inputs, OOD decisions and batch sizes, in a registry of this process's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("flowood_requests", "HTTP requests answered", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram("flowood_request_seconds", "time from a request's first byte to its answer",
                                 ["path"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.inputs = Counter("flowood_inputs", "inputs scored", registry=self.registry)
        self.flagged = Counter("flowood_inputs_flagged", "inputs decided OOD", registry=self.registry)
        self.batch = Histogram("flowood_batch_inputs", "inputs scored together in the batch of a request",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))

    def observe(self, path: str, status: int, seconds: float, stats: dict[str, int]) -> None:
        known = path if path in (SCORE_PATH, "/health", "/metadata", "/metrics") else "other"
        self.requests.labels(known, str(status)).inc()
        self.latency.labels(known).observe(seconds)
        if stats:
            self.inputs.inc(stats["x-flowood-inputs"])
            self.flagged.inc(stats["x-flowood-flagged"])
            self.batch.observe(stats["x-flowood-batch-inputs"])


class Gate:
    """The ASGI middleware (see the module docstring) around LitServe's FastAPI app."""

    def __init__(self, app: Any, settings: GateSettings) -> None:
        self.app, self.settings = app, settings
        self.metrics = _Metrics()
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = {"id": uuid.uuid4().hex[:12], "method": scope["method"], "path": scope["path"],
                  "client": (scope.get("client") or ["?"])[0], "status": 0, "bytes_in": 0, "bytes_out": 0}
        start = time.perf_counter()
        answer = _Answer(send, record)
        try:
            await asyncio.wait_for(self._handle(scope, receive, answer), self.settings.timeout)
        except asyncio.TimeoutError:
            if not answer.started and answer.awaiting_body:
                await answer.json(408, "the request body did not arrive in time")
            elif not answer.started:
                await answer.json(504, "not scored in time (the scoring worker may have stopped; retry)")
        except _Refused as refused:
            if not answer.started:
                await answer.json(refused.status, refused.detail)
        finally:
            record["ms"] = round(1000 * (time.perf_counter() - start), 2)
            self.metrics.observe(scope["path"], record["status"], record["ms"] / 1000, answer.stats)
            self.log.info(json.dumps(record))

    async def _handle(self, scope: dict, receive: Any, answer: _Answer) -> None:
        if self.settings.token is not None and scope["path"] not in OPEN_PATHS:
            self._authorize(scope)
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            await answer.send_bytes(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
            return
        if scope["path"] == SCORE_PATH and scope["method"] == "POST":
            receive = await self._admit(scope, receive, answer)
        await self.app(scope, receive, answer)

    def _authorize(self, scope: dict) -> None:
        given = _header(scope, b"authorization")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.settings.token.encode()):
            raise _Refused(401, "a valid bearer token is needed (Authorization: Bearer TOKEN)")

    async def _admit(self, scope: dict, receive: Any, answer: _Answer) -> Any:
        """Read the whole body (refusing it past ``max_body``), check its type and that it parses (as JSON, or as
        the multipart form LitServe will parse again); hand it on as one message."""
        kind = _header(scope, b"content-type").split(";")[0].strip().lower()
        if kind not in BODY_TYPES:
            raise _Refused(415, f"send multipart/form-data (files) or application/json, not {kind or 'no type'}")
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.settings.max_body:
            raise _Refused(413, f"the body is over {self.settings.max_body:,} bytes")
        answer.awaiting_body = True
        body = await _read_body(receive, self.settings.max_body)
        answer.awaiting_body = False
        answer.record["bytes_in"] = len(body)
        if kind == "application/json":
            try:
                json.loads(body)
            except ValueError as err:
                raise _Refused(400, f"the body is not JSON ({err})") from None
        else:
            await _check_form(scope, _replay(body, receive))
        return _replay(body, receive)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands on the body read already, as one message."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _check_form(scope: dict, receive: Any) -> None:
    """Parse a multipart body as LitServe will, so that a malformed one is answered 400 here, not 500 there."""
    try:
        form = await Request(scope, receive).form()
        await form.close()
    except HTTPException as err:
        raise _Refused(400, f"the multipart/form-data body cannot be parsed ({err.detail})") from None
    except (MultiPartException, AssertionError, ValueError, KeyError) as err:
        raise _Refused(400, f"the multipart/form-data body cannot be parsed ({err})") from None


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "the client went away before its body arrived")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"the body is over {limit:,} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: dict, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name), "")


class _Answer:
    """``send``, watched: whether the answer started, its status, size and scoring headers; and whether the request's
    body is still awaited."""

    def __init__(self, send: Any, record: dict) -> None:
        self.send, self.record = send, record
        self.started = self.awaiting_body = False
        self.stats: dict[str, int] = {}

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.record["status"] = message["status"]
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
            self.stats = {k: int(headers[k]) for k in STATS_HEADERS if headers.get(k, "").isdigit()}
        elif message["type"] == "http.response.body":
            self.record["bytes_out"] += len(message.get("body", b""))
        await self.send(message)

    async def send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await self({"type": "http.response.start", "status": status, "headers": headers})
        await self({"type": "http.response.body", "body": body})

    async def json(self, status: int, detail: str) -> None:
        headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
        body = json.dumps({"detail": detail}).encode()
        await self({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
        await self({"type": "http.response.body", "body": body})
