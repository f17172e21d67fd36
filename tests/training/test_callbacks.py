"""Training callbacks (flowood.training.callbacks): NaN/Inf losses and gradients and exploding steps are skipped or
rolled back with a lower learning rate, then stop the run with an error naming the checkpoints that exist;
invertibility is checked at each checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from flowood.flows import FlowModel
from flowood.training import NonFiniteLossError, train


def test_nan_losses_are_skipped_then_stop_the_run(tmp_path, train_config, monkeypatch):
    original = FlowModel.log_prob
    calls = {"n": 0}

    def flaky(self, x, **kw):
        calls["n"] += 1 if self.training else 0
        out = original(self, x, **kw)
        return out * float("nan") if self.training and calls["n"] in (2, 3) else out

    monkeypatch.setattr(FlowModel, "log_prob", flaky)
    train(train_config(tmp_path / "run", max_steps=6), progress=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["skipped_nonfinite_steps"] == 2

    monkeypatch.setattr(FlowModel, "log_prob", lambda self, x, **kw: original(self, x, **kw) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="Lower `lr`"):
        train(train_config(tmp_path / "run", nan_tolerance=3), overwrite=True, progress=False)


def test_rollback_restores_last_good_state_and_lowers_the_lr(tmp_path, train_config, monkeypatch):
    from flowood.training.module import FlowModule
    original = FlowModule._loss
    calls = {"n": 0}

    def sometimes_nan(self, x):
        calls["n"] += 1
        loss = original(self, x)
        return loss * float("nan") if calls["n"] in (6, 7) else loss
    monkeypatch.setattr(FlowModule, "_loss", sometimes_nan)
    result = train(train_config(tmp_path / "run", nan_policy="rollback", nan_lr_factor=0.25, rollback_every=2,
                                max_steps=10, lr=1e-3), progress=False)
    summary = json.loads((result.out / "train_summary.json").read_text())
    assert summary["rollbacks"] == 2 and summary["skipped_nonfinite_steps"] == 2
    ckpt = torch.load(result.checkpoint, weights_only=True)
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * 0.25 ** 2)


def test_nonfinite_gradients_are_caught_at_the_step(tmp_path, train_config, monkeypatch):
    from flowood.training.module import FlowModule

    def poison(self):  # right after backward, before the guard looks at the gradients
        for p in self.flow.parameters():
            if p.grad is not None:
                p.grad.fill_(float("inf"))
    monkeypatch.setattr(FlowModule, "on_after_backward", poison)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a NaN/Inf gradient"):
        train(train_config(tmp_path / "run", nan_tolerance=3), progress=False)


def test_exploding_loss_is_caught_at_the_step(tmp_path, train_config, monkeypatch):
    from flowood.training.module import FlowModule
    original = FlowModule._loss
    monkeypatch.setattr(FlowModule, "_loss", lambda self, x: original(self, x) * 1e5)  # finite but huge
    with pytest.raises(NonFiniteLossError, match="exploding log-determinant"):
        train(train_config(tmp_path / "run", nan_tolerance=2), progress=False)
    monkeypatch.setattr(FlowModule, "_loss", lambda self, x: original(self, x) * 2)
    assert train(train_config(tmp_path / "ok" / "run", explode_bpd=1e4), progress=False).steps == 12


def test_invertibility_is_checked_at_each_checkpoint(tmp_path, train_config):
    result = train(train_config(tmp_path / "run"), progress=False)
    summary = json.loads((result.out / "train_summary.json").read_text())
    assert 0.0 <= summary["invertibility_error"] < 1e-4
    assert torch.load(result.checkpoint, weights_only=True)["flowood_invertibility_error"] < 1e-4


def test_rollback_recovers_from_a_far_too_high_learning_rate(tmp_path, train_config):
    """At lr 10 every early step explodes; the rollbacks return to checked states (the start, if need be) with
    ever lower rates until training works. The kept "good" state used to be the damaged one after step 1, so
    the run never recovered and stopped."""
    result = train(train_config(tmp_path / "run", lr=10.0, nan_policy="rollback", rollback_every=5, max_steps=200,
                                num_epochs=1000), progress=False)
    summary = json.loads((result.out / "train_summary.json").read_text())
    assert summary["steps"] == 200 and summary["rollbacks"] >= 3
    assert result.test_bpd < 7.5  # the untrained model scores about 9.8 bits/dim on this data


def test_the_final_error_names_only_checkpoints_that_exist(tmp_path, train_config, monkeypatch):
    from flowood.training.module import FlowModule
    original = FlowModule._loss
    calls = {"n": 0}

    def nan_after(self, x):
        calls["n"] += 1
        loss = original(self, x)
        return loss * float("nan") if calls["n"] > 6 else loss
    monkeypatch.setattr(FlowModule, "_loss", nan_after)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written before this"):
        train(train_config(tmp_path / "a" / "run", nan_tolerance=3), progress=False)
    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match=r"resume from .*last\.ckpt"):
        train(train_config(tmp_path / "b" / "run", nan_tolerance=3, checkpoint_every_n_steps=2), progress=False)


def test_recompute_batchnorm_averages_the_final_weights_batch_statistics(tmp_path, train_config, mnist_npz,
                                                                         monkeypatch):
    """With negative training: the saved running statistics are the plain average of the batch statistics the final
    weights give on mixed batches (running_mean: mean of batch means; running_var: mean of unbiased batch
    variances), the run's random state is untouched, and BatchNorm's momentum is restored."""
    from flowood.checkpoints import load_flow
    from flowood.training import callbacks

    seen: dict[str, list] = {"mean": [], "var": [], "rng_before": [], "rng_after": []}
    original = callbacks.RecomputeBatchNorm.on_train_end

    def recording(self, trainer, pl_module):
        first = next(m for m in pl_module.modules() if isinstance(m, callbacks.BATCHNORMS))

        def hook(module, inputs, output):
            x = inputs[0].detach().float()
            seen["mean"].append(x.mean(dim=(0, 2, 3)))
            seen["var"].append(x.var(dim=(0, 2, 3), unbiased=True))
            assert x.shape[0] == 2 * 16  # in-distribution and OOD halves

        handle = first.register_forward_hook(hook)
        seen["rng_before"].append(torch.get_rng_state())
        original(self, trainer, pl_module)
        seen["rng_after"].append(torch.get_rng_state())
        handle.remove()

    monkeypatch.setattr(callbacks.RecomputeBatchNorm, "on_train_end", recording)
    cfg = train_config(tmp_path / "run", batch_size=16, max_steps=4, ood_dataset=mnist_npz, recompute_batchnorm=5)
    train(cfg, progress=False)
    assert len(seen["mean"]) == 5
    assert torch.equal(seen["rng_before"][0], seen["rng_after"][0])
    flow = load_flow(tmp_path / "run" / "checkpoints" / "last.ckpt").flow
    first = next(m for m in flow.modules() if isinstance(m, callbacks.BATCHNORMS))
    torch.testing.assert_close(first.running_mean, torch.stack(seen["mean"]).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var, torch.stack(seen["var"]).mean(0), rtol=1e-4, atol=1e-6)
    assert first.momentum == 0.1 and int(first.num_batches_tracked) == 5


def test_without_recompute_batchnorm_the_running_averages_stay(tmp_path, train_config):
    from flowood.checkpoints import load_flow
    from flowood.training import callbacks

    train(train_config(tmp_path / "run", max_steps=3), progress=False)
    first = next(m for m in load_flow(tmp_path / "run" / "checkpoints" / "last.ckpt").flow.modules()
                 if isinstance(m, callbacks.BATCHNORMS))
    assert int(first.num_batches_tracked) == 3  # one update per training step, none recomputed
