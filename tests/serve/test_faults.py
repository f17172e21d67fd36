"""``flowood serve`` under faults, through real HTTP on 127.0.0.1 (one server for the module, stopped by the last
test): a scoring worker killed mid-request (the request gets a clear 504, the worker is restarted, the server keeps
serving), and SIGTERM under load (requests in flight are answered whole, new ones are not taken, exit status 0)."""

from __future__ import annotations

import concurrent.futures
import io
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from builders import fixture_arrays, png_bytes, start_server

from flowood.deploy import fit_detector

httpx = pytest.importorskip("httpx")
pytest.importorskip("litserve")
pytestmark = pytest.mark.xdist_group("serve_faults")


@pytest.fixture(scope="module")
def server(trained_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    fit_detector(trained_checkpoint, folder / "detector.pt", score="likelihood", fpr=0.05, fit_samples=300)
    served = start_server(folder / "detector.pt", folder / "server.log", "--timeout", "6", "--max_inputs", "20000",
                          "--max_body_mb", "64", "--max_batch_size", "4", "--batch_timeout", "0.02")
    yield served
    served.stop(10)


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _scoring_workers(pid: int) -> list[int]:
    return [child for child in _children(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
            and b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()]


def _big_npz() -> bytes:
    buffer = io.BytesIO()
    images = fixture_arrays("fashionmnist")[0]
    np.savez(buffer, images=np.concatenate([images] * 20))  # 12,000 images: seconds of scoring on one thread
    return buffer.getvalue()


def test_a_worker_killed_mid_request_gives_a_clear_error_and_the_server_keeps_serving(server):
    workers = _scoring_workers(server.process.pid)
    assert len(workers) == 1
    big = _big_npz()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{server.url}/score", timeout=60,
                              files=[("files", ("many.npz", big, "application/octet-stream"))])
        time.sleep(1.5)  # the worker is scoring the 12,000 images
        os.kill(workers[0], signal.SIGKILL)
        response = pending.result()
    assert response.status_code == 504 and "not scored in time" in response.json()["detail"]
    deadline = time.monotonic() + 90
    one = png_bytes(fixture_arrays("mnist", "test")[0][0, 0])
    while time.monotonic() < deadline:  # the worker is restarted, then the server answers again
        again = httpx.post(f"{server.url}/score", files=[("files", ("d.png", one, "image/png"))], timeout=30)
        if again.status_code == 200:
            break
        time.sleep(1)
    assert again.status_code == 200 and again.json()["rows"][0]["error"] == ""
    assert _scoring_workers(server.process.pid) not in ([], workers)


def test_sigterm_under_load_answers_the_requests_in_flight_whole_then_exits(server):
    one = png_bytes(fixture_arrays("mnist", "test")[0][0, 0])
    stop_sending = threading.Event()
    sigterm_at: list[float] = []
    outcomes: list[tuple[float, float, str]] = []  # (sent, answered, outcome)

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop_sending.is_set():
                sent = time.monotonic()
                try:
                    r = c.post(f"{server.url}/score", files=[("files", ("d.png", one, "image/png"))])
                    whole = r.status_code == 200 and len(r.json()["rows"]) == 1
                    outcomes.append((sent, time.monotonic(), "ok" if whole else f"status {r.status_code}"))
                except httpx.TransportError as err:  # refused, reset, or cut mid-answer
                    outcomes.append((sent, time.monotonic(), f"{type(err).__name__}: {err}"))
                    time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    sigterm_at.append(time.monotonic())
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(60)
    stop_sending.set()
    for t in threads:
        t.join(40)
    assert status == 0
    before = [o for o in outcomes if o[0] < sigterm_at[0]]
    assert before and all(o[2] == "ok" for o in before), before  # every request sent before SIGTERM answered whole
    after = {o[2] for o in outcomes if o[0] >= sigterm_at[0]}
    # afterwards: not taken (refused, or reset before any byte of an answer), never a 5xx or a half-written answer
    assert not [o for o in after if o.startswith("status") or "message body" in o or "incomplete" in o], after
    assert any(o[1] > sigterm_at[0] and o[2] == "ok" for o in outcomes)  # some were in flight at SIGTERM
