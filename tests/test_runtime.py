"""CPU threads (flowood.runtime): the CPUs a process may use (affinity, cgroup quota), and their fair share among
flowood processes running at once (CoreShare, rebalanced during training by the ShareCores callback)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from flowood.options import ConfigError
from flowood.runtime import CoreShare, _cgroup_cpu_limit, active_core_share, usable_cpus
from flowood.training.callbacks import ShareCores


def test_cgroup_quota_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_limit(v2) is None
    (v2 / "cpu.max").write_text("400000 100000\n")
    assert _cgroup_cpu_limit(v2) == 4
    (v2 / "cpu.max").write_text("50000 100000\n")
    assert _cgroup_cpu_limit(v2) == 1  # half a CPU still computes on one
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_limit(tmp_path / "v1") is None
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    assert _cgroup_cpu_limit(tmp_path / "v1") == 3
    assert _cgroup_cpu_limit(tmp_path / "none") is None
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


@pytest.fixture
def other_process():
    """A live process that registers nothing itself (its pid stands for another flowood process)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_processes_share_the_cpus_and_dead_entries_are_dropped(tmp_path, other_process, monkeypatch):
    monkeypatch.setattr("flowood.runtime.usable_cpus", lambda: 4)
    monkeypatch.setattr("flowood.runtime._ACTIVE", None)  # outside the test session's own share
    before = torch.get_num_threads()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / dead).touch()
    with CoreShare(folder=tmp_path) as share:
        assert active_core_share() is share and torch.get_num_threads() == 4  # alone (the dead entry is dropped)
        assert not (tmp_path / dead).exists() and (tmp_path / str(os.getpid())).exists()
        (tmp_path / str(other_process)).touch()  # a second flowood process starts
        assert share.rebalance() == 2 and torch.get_num_threads() == 2
        with CoreShare() as inner:  # train() inside the command line's share: still one entry for this process
            assert inner.processes() == 2 and torch.get_num_threads() == 2
        assert active_core_share() is share
        (tmp_path / str(other_process)).unlink()  # it ends: the threads come back
        assert share.rebalance() == 4
    assert active_core_share() is None and torch.get_num_threads() == before
    assert not (tmp_path / str(os.getpid())).exists()


def test_fixed_threads_and_the_training_callback(tmp_path, other_process, monkeypatch):
    monkeypatch.setattr("flowood.runtime.usable_cpus", lambda: 4)
    monkeypatch.setattr("flowood.runtime._ACTIVE", None)
    with CoreShare(threads=3, folder=tmp_path):
        assert torch.get_num_threads() == 3
    with pytest.raises(ConfigError, match="at least 1"):
        CoreShare(threads=0)
    callback = ShareCores(every=10)
    module = SimpleNamespace(device=torch.device("cpu"))
    with CoreShare(folder=tmp_path):
        (tmp_path / str(other_process)).touch()
        callback.on_train_batch_start(SimpleNamespace(global_step=5), module, None, 0)
        assert torch.get_num_threads() == 4  # only every 10 steps
        callback.on_train_batch_start(SimpleNamespace(global_step=10), module, None, 0)
        assert torch.get_num_threads() == 2
