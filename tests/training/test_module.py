"""The Lightning module (flowood.training.module): negative training's loss as in the paper, and that it pushes
the OOD set's likelihood down."""

from __future__ import annotations

import pytest
import torch

from flowood.training import train


def test_negative_training_loss_matches_the_paper():
    from flowood.training import negative_training_loss
    ll_in = torch.tensor([-100.0, -300.0])
    ll_ood = torch.tensor([-50.0, -20000.0, -40000.0])
    loss, share = negative_training_loss(ll_in, ll_ood, negative_val=-30000.0)
    # 0.5 * (mean NLL in = 200 + mean of the OOD log-likelihoods above -30000 = (-50 - 20000) / 2)
    assert float(loss) == pytest.approx(0.5 * (200.0 + (-50.0 - 20000.0) / 2))
    assert float(share) == pytest.approx(2 / 3)
    loss, share = negative_training_loss(ll_in, torch.tensor([-40000.0]), negative_val=-30000.0)
    assert float(loss) == pytest.approx(200.0) and float(share) == 0.0  # nothing above: in-distribution NLL alone


def test_negative_training_pushes_the_ood_likelihood_down(tmp_path, mnist_npz, train_config):
    from flowood.evaluation import evaluate
    mnist = mnist_npz
    common = dict(max_steps=40, num_blocks=1, num_mid_channels=8)
    plain = train(train_config(tmp_path / "plain" / "run", **common), progress=False)
    neg = train(train_config(tmp_path / "neg" / "run", ood_dataset=mnist, negative_val=-30000.0, **common),
                progress=False)
    bpd = {name: evaluate(r.checkpoint, [mnist], scores=["likelihood"], progress=False).metrics
           for name, r in (("plain", plain), ("neg", neg))}
    assert bpd["neg"].ood[mnist].bpd_mean > bpd["plain"].ood[mnist].bpd_mean + 1.0
    assert bpd["neg"].ood[mnist].auroc > bpd["plain"].ood[mnist].auroc
    import csv
    with open(tmp_path / "neg" / "run" / "logs" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train_ood_loglik_step") for r in rows)
    assert any(r.get("train_ood_share_above_negative_val_step") for r in rows)
