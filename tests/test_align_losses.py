"""Each preference loss against a numpy reference written from TRL's trainers, on fixed log-probs.

The references follow TRL's `DPOTrainer.dpo_loss` (sigmoid with label
smoothing, ipo on per-token averages, hinge), `CPOTrainer.cpo_loss` (simpo;
orpo as `ORPOTrainer.odds_ratio_loss` plus its chosen NLL) and
`KTOTrainer.kto_loss`; they share no code with kgpt2.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.backend

POL = np.array([[-10.0, -16.0], [-31.0, -7.5], [-4.0, -4.0], [-20.0, -60.0], [-9.0, -9.5]])
REF = np.array([[-12.0, -15.5], [-30.25, -8.0], [-4.0, -4.0], [-50.0, -49.0], [-9.5, -9.0]])
LEN = np.array([[5, 8], [12, 3], [2, 2], [10, 30], [4, 4]], dtype=float)
LABEL = np.array([1, 0, 1, 0, 1], dtype=float)


def logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def trl_reference(kind, beta, eps=0.0, gamma=0.5):
    pc, pr, rc, rr = POL[:, 0], POL[:, 1], REF[:, 0], REF[:, 1]
    if kind in ("ipo", "simpo", "orpo"):  # TRL averages the log-probs over the completion for these
        pc, pr, rc, rr = pc / LEN[:, 0], pr / LEN[:, 1], rc / LEN[:, 0], rr / LEN[:, 1]
    logits = (pc - pr) - (rc - rr)
    if kind == "dpo":
        return -logsigmoid(beta * logits) * (1 - eps) - logsigmoid(-beta * logits) * eps
    if kind == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    if kind == "hinge":
        return np.maximum(0, 1 - beta * logits)
    if kind == "simpo":
        z = (pc - pr) - gamma / beta
        return -logsigmoid(beta * z) * (1 - eps) - logsigmoid(-beta * z) * eps
    if kind == "orpo":
        log_odds = (pc - pr) - (np.log1p(-np.exp(pc)) - np.log1p(-np.exp(pr)))
        nll = -POL[:, 0].sum() / LEN[:, 0].sum()  # cross-entropy over all chosen tokens of the batch
        return nll - beta * logsigmoid(log_odds)
    if kind == "kto":
        kl = max((pr - rr).mean(), 0.0)  # slot 1: the mismatched completions
        chosen = 1 - sigmoid(beta * ((pc - rc) - kl))
        rejected = 1 - sigmoid(beta * (kl - (pc - rc)))
        return np.where(LABEL > 0.5, chosen, rejected)
    raise AssertionError(kind)


def y_true():
    return np.concatenate([REF, LEN, LABEL[:, None]], axis=1).astype("float32")


@pytest.mark.parametrize("kind", ["dpo", "ipo", "hinge", "simpo", "orpo", "kto"])
@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_loss_matches_trl_formula(kind, beta, eps):
    import keras

    from kgpt2.training.preference_losses import PreferenceLoss

    if eps and kind not in ("dpo", "simpo"):
        eps = 0.0  # label smoothing belongs to the sigmoid losses
    want = trl_reference(kind, beta, eps)
    loss = PreferenceLoss(kind, beta=beta, label_smoothing=eps)
    got = keras.ops.convert_to_numpy(loss.call(y_true(), POL.astype("float32")))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(loss(y_true(), POL.astype("float32"))) == pytest.approx(want.mean(), rel=1e-5)


def test_kto_kl_estimate_is_clamped_at_zero():
    from kgpt2.training.preference_losses import preference_loss

    pol = np.array([[-5.0, -20.0], [-6.0, -20.0]], "float32")  # slot 1 far below its reference: KL < 0
    yt = np.array([[-5.0, -10.0, 3, 3, 1], [-6.0, -10.0, 3, 3, 0]], "float32")
    got = np.asarray(preference_loss(yt, pol, "kto", beta=0.1))
    np.testing.assert_allclose(got, [0.5, 0.5], rtol=1e-6)  # ratio 0, z = 0: 1 - sigmoid(0)


@pytest.mark.parametrize("kind", ["dpo", "ipo", "simpo", "orpo", "kto"])
def test_pair_metrics(kind):
    from kgpt2.training.preference_losses import pair_metrics

    beta = 0.2
    pc, pr, rc, rr = POL[:, 0], POL[:, 1], REF[:, 0], REF[:, 1]
    if kind in ("ipo", "simpo", "orpo"):
        pc, pr, rc, rr = pc / LEN[:, 0], pr / LEN[:, 1], rc / LEN[:, 0], rr / LEN[:, 1]
    if kind in ("simpo", "orpo"):
        rc = rr = 0 * rc
    margin = beta * ((pc - rc) - (pr - rr))
    m = pair_metrics(y_true(), POL, kind, beta)
    assert m["reward_accuracy"] == pytest.approx(np.mean(margin > 0))  # the tie (row 2) is no win
    assert m["reward_margin"] == pytest.approx(margin.mean(), rel=1e-5)
    assert m["pairs"] == 5


def test_unknown_loss_is_refused():
    from kgpt2.training.preference_losses import PreferenceLoss

    with pytest.raises(ValueError, match="unknown preference loss"):
        PreferenceLoss("ppo")


def test_kto_metrics_on_held_out_examples():
    """KTO is judged on examples: desirable vs undesirable rewards ranked, signs, per-label means."""
    from kgpt2.training.preference_losses import kto_metrics

    beta = 0.2
    r = beta * (POL[:, 0] - REF[:, 0])  # slot 0: the example; slot 1 (mismatched) plays no part here
    good = LABEL > 0.5
    m = kto_metrics(y_true(), POL, "kto", beta)
    ranked = [float(d > u) for d in r[good] for u in r[~good]]
    assert m["reward_accuracy"] == m["ranking_accuracy"] == pytest.approx(np.mean(ranked))
    assert m["sign_accuracy"] == pytest.approx(np.mean(np.where(good, r > 0, r < 0)))  # row 2's reward 0: no win
    assert m["reward_margin"] == pytest.approx(r[good].mean() - r[~good].mean(), rel=1e-5)
    assert m["chosen_reward"] == pytest.approx(r[good].mean(), rel=1e-5)
    assert m["rejected_reward"] == pytest.approx(r[~good].mean(), rel=1e-5)
    assert (m["pairs"], m["desirable"], m["undesirable"]) == (5, 3, 2)
    only_bad = y_true().copy()  # one label only (e.g. thumbs down alone): signs
    only_bad[:, 4] = 0
    m = kto_metrics(only_bad, POL, "kto", beta)
    assert m["chosen_reward"] is None and m["ranking_accuracy"] is None
    assert m["reward_accuracy"] == m["sign_accuracy"] == pytest.approx(np.mean(r < 0))
    assert m["reward_margin"] == pytest.approx(np.mean(-r), rel=1e-5)
    before = kto_metrics(y_true(), REF.astype("float32"), "kto", beta)  # the policy is the reference
    assert before["reward_accuracy"] == 0.0 and before["reward_margin"] == 0.0
