"""The measurements of ``benchmarks/compare.py`` that its tables rest on, checked on hand cases."""

from __future__ import annotations

import torch


def test_step_peak_memory_counts_what_a_step_allocates_above_its_start(compare):
    held = torch.ones(1 << 20)  # 4 MiB held before the step: not counted
    mib = 2.0 ** 20

    def step():
        a = torch.ones(1 << 20)  # 4 MiB
        b = a * 2.0  # 4 MiB more while a is alive: the peak
        del a
        return b.sum() + held[0]

    peak = compare.step_peak_memory(step, torch.device("cpu"))
    assert 8 * mib <= peak < 8.5 * mib
    assert compare.step_peak_memory(lambda: held.sum(), torch.device("cpu")) < 0.1 * mib


def test_median_row_and_best_peer(compare):
    runs = [dict(case="c", library="normflows", train_steps_s=s, score_per_s=10.0 * s, peak_mib=1.0, rss_mib=2.0,
                 test_bpd=3.0) for s in (1.0, 3.0, 2.0)]
    row = compare.median_row(runs)
    assert (row["train_steps_s"], row["train_min"], row["train_max"], row["runs"]) == (2.0, 1.0, 3.0, 3)
    ours = dict(case="c", library="flowood-cl-bf16+malloc", train_steps_s=1.0)
    bf16_peer = dict(case="c", library="normflows-bf16+malloc", train_steps_s=5.0)
    other_case = dict(case="d", library="normflows-bf16+malloc", train_steps_s=9.0)
    peers, best = compare.peer_rows([row, bf16_peer, other_case, ours], ours)
    assert peers == [bf16_peer] and best is bf16_peer
