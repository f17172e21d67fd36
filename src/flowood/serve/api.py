"""The detector as a LitServe API: requests are read in the scoring worker, batched with other requests, scored
together, and answered with the rows ``flowood score`` writes.

LitServe (Lightning's server, FastAPI and uvicorn underneath) runs the workers, the dynamic batching, the queues and
the HTTP server; this module only says how one batch of requests is scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litserve
import torch
from fastapi.responses import JSONResponse

from flowood.deploy.inputs import Item
from flowood.deploy.load import load_detector
from flowood.deploy.score import ScoringOptions, score_items
from flowood.runtime import usable_cpus
from flowood.serve.options import ServeOptions
from flowood.serve.payload import Refusal, read_payload

__all__ = ["DetectorAPI", "ScoredRequest", "STATS_HEADERS"]

#: response headers that tell the metrics how a request was scored: its inputs, those flagged, and the inputs of the
#: whole batch it was scored in.
STATS_HEADERS = ("x-flowood-inputs", "x-flowood-flagged", "x-flowood-batch-inputs")


@dataclass
class ScoredRequest:
    """One request's answer: its rows (in the order of its inputs), or the refusal that stands for them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    refusal: Refusal | None = None
    batch_inputs: int = 0


class DetectorAPI(litserve.LitAPI):
    """``POST /score``: one or several inputs in, one row each out (see :mod:`flowood.serve.payload`).

    Args:
        detector: the detector file (or export folder) each worker loads with
            :func:`~flowood.deploy.load.load_detector`.
        options: the :class:`~flowood.serve.options.ServeOptions` (batching, limits, mismatch policy, backend).

    A request whose every input was scored is answered 200; one with an input that could not be scored (unreadable,
    or refused by the ``mismatch`` policy) 422, with every row, the failed ones carrying ``error``; a request over a
    limit 413, without rows.
    """

    def __init__(self, detector: str | Path, options: ServeOptions) -> None:
        super().__init__(max_batch_size=options.max_batch_size, batch_timeout=options.batch_timeout,
                         api_path="/score")
        self.detector_path = str(detector)
        self.options = options

    def setup(self, device: str) -> None:
        """Load the detector in this worker, with its share of the CPU threads."""
        torch.set_num_threads(self.options.threads or serving_threads(self.options.workers))
        on = device if str(device).startswith("cuda") else self.options.device  # the GPU LitServe gave this worker
        self.detector = load_detector(self.detector_path, device=on, backend=self.options.backend,
                                      flow_export=self.options.flow_export)

    def decode_request(self, request) -> list[Item] | Refusal:  # unannotated: LitServe then hands the raw request
        """The request's inputs, or why it is refused (returned, not raised: a refusal must not fail the other
        requests of its batch)."""
        try:
            return read_payload(request, self.options.limits)
        except Refusal as refusal:
            return refusal

    def predict(self, x: Any) -> Any:
        """Score every input of the batch's requests together; one :class:`ScoredRequest` per request."""
        requests = x if self.max_batch_size > 1 else [x]
        answers = score_requests(self.detector, requests, self.options.mismatch)
        return answers if self.max_batch_size > 1 else answers[0]

    def encode_response(self, output: ScoredRequest) -> JSONResponse:
        """The rows as JSON (status 200, or 422 when an input could not be scored), or the refusal."""
        if output.refusal is not None:
            return JSONResponse({"detail": output.refusal.detail}, status_code=output.refusal.status)
        failed = [row for row in output.rows if row["error"]]
        content: dict[str, Any] = {"rows": output.rows}
        if failed:
            content["detail"] = f"{len(failed)} of {len(output.rows)} inputs could not be scored (see each row's error)"
        flagged = sum(row["ood"] is True for row in output.rows)
        headers = dict(zip(STATS_HEADERS, map(str, (len(output.rows), flagged, output.batch_inputs)), strict=True))
        return JSONResponse(content, status_code=422 if failed else 200, headers=headers)


def serving_threads(workers: int) -> int:
    """CPU threads per scoring worker by default: the CPUs this process may use less one, which the HTTP server
    needs (on 2 cores, 1 thread scored 230 requests/s at concurrency 32 where 2 threads scored 177:
    ``benchmarks/serve_load.py``), shared among the workers."""
    cpus = usable_cpus()
    return max(1, (cpus - 1 if cpus > 1 else cpus) // workers)


def score_requests(detector: Any, requests: list[list[Item] | Refusal], mismatch: str) -> list[ScoredRequest]:
    """Score the inputs of several requests in one pass and hand each request its rows, in its inputs' order."""
    keyed = [Item(f"{r}/{i}", item.sample, item.error, item.notes)
             for r, items in enumerate(requests) if not isinstance(items, Refusal) for i, item in enumerate(items)]
    options = ScoringOptions(batch_size=max(1, len(keyed)), mismatch=mismatch)
    rows = {row["input"]: row for row in score_items(detector, keyed, options, progress=False)}
    answers = []
    for r, items in enumerate(requests):
        if isinstance(items, Refusal):
            answers.append(ScoredRequest(refusal=items))
            continue
        answers.append(ScoredRequest([{**rows[f"{r}/{i}"], "input": item.name} for i, item in enumerate(items)],
                                     batch_inputs=len(keyed)))
    return answers
