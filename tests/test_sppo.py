"""The math of sppo.py against values computed by hand."""
import math

import pytest
import torch

import sppo


def test_sequence_advantages_is_reward_minus_sigmoid_and_detached():
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)], requires_grad=True)  # sigmoid: .5 .75 .25
    adv = sppo.sequence_advantages(torch.tensor([1.0, 0.0, 1.0]), logits)
    assert torch.allclose(adv, torch.tensor([0.5, -0.75, 0.75]))
    assert not adv.requires_grad


def test_critic_loss_is_mean_bce_with_soft_targets():
    logits = torch.tensor([0.0, math.log(3.0)])
    loss = sppo.critic_loss(logits, torch.tensor([0.5, 1.0]))
    assert loss.item() == pytest.approx((math.log(2.0) - math.log(0.75)) / 2)
    # the minimum over the logit of a soft target p is at sigmoid(logit) = p
    logit = torch.tensor([0.3], requires_grad=True)
    sppo.critic_loss(logit, torch.tensor([0.25])).backward()
    assert logit.grad.item() == pytest.approx(torch.sigmoid(torch.tensor(0.3)).item() - 0.25)


def test_success_logit_centres_first_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert sppo.success_logit(rewards) == pytest.approx(math.log(1 / 3))
    assert sppo.sequence_advantages(rewards, torch.full((4,), sppo.success_logit(rewards))).sum().item() == \
        pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(sppo.success_logit(torch.zeros(8)))  # all wrong: clamped, not -inf


def _ratios(ratios):
    old = torch.zeros(len(ratios))
    return torch.log(torch.tensor(ratios)).requires_grad_(), old


def test_policy_loss_clipped_values_and_stats():
    logp, old = _ratios([1.5, 0.5, 1.1, 0.7])
    mask = torch.ones(4)
    # A = +1: min(1.5, 1.2)=1.2, min(0.5, 0.8)=0.5, 1.1; A = -1: min(-0.7, -0.8) = -0.8
    loss, stats = sppo.policy_loss(logp, old, torch.tensor([1.0, 1.0, 1.0, -1.0]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1 - 0.8) / 4)
    assert stats["clip_frac"] == pytest.approx(3 / 4)  # 1.5, 0.5, 0.7 are outside [0.8, 1.2]
    r = torch.tensor([1.5, 0.5, 1.1, 0.7])
    assert stats["approx_kl"] == pytest.approx(((r - 1) - r.log()).mean().item(), rel=1e-5)


def test_policy_loss_dual_clip_caps_negative_advantages():
    logp, old = _ratios([5.0, 2.0, 5.0, 0.5])
    mask = torch.ones(4)
    adv = torch.tensor([-1.0, -1.0, 1.0, -2.0])
    # A = -1, r = 5: min(-5, -1.2) = -5, dual-clip max(-5, 3 * -1) = -3; A = -1, r = 2: -2 > -3, kept;
    # A = +1, r = 5: 1.2 (dual-clip only touches A < 0); A = -2, r = 0.5: min(-1, -1.6) = -1.6
    loss, stats = sppo.policy_loss(logp, old, adv, mask, clip_eps=0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx(-(-3.0 - 2.0 + 1.2 - 1.6) / 4)
    assert stats["dual_clip_frac"] == pytest.approx(1 / 4)
    loss.backward()
    # the capped token has no gradient; A = -1, r = 2 is beyond the clip on the side A pushes from: -r A / 4
    assert torch.allclose(logp.grad, torch.tensor([0.0, 2.0 / 4, 0.0, 0.0]))
    plain, stats = sppo.policy_loss(logp.detach(), old, adv, mask, clip_eps=0.2, dual_clip=None)
    assert plain.item() == pytest.approx(-(-5.0 - 2.0 + 1.2 - 1.6) / 4) and stats["dual_clip_frac"] == 0.0
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        sppo.policy_loss(logp, old, adv, mask, dual_clip=1.0)


def test_policy_loss_gradient_zero_where_clipped_or_masked():
    logp, old = _ratios([1.5, 0.5, 1.1, 1.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    loss, _ = sppo.policy_loss(logp, old, torch.ones(4), mask)
    loss.backward()
    # d/dlogp of -(r * A)/3 is -r/3 where the ratio is not clipped in the direction A pushes
    assert torch.allclose(logp.grad, torch.tensor([0.0, -0.5 / 3, -1.1 / 3, 0.0]))


def test_policy_loss_broadcasts_sequence_advantage_and_token_mean():
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, stats = sppo.policy_loss(logp, torch.zeros(2, 3), torch.tensor([0.5, -1.0]), mask)
    # ratio 1 everywhere: loss = -(3 * 0.5 + 1 * -1.0) / 4 valid tokens
    assert loss.item() == pytest.approx(-(1.5 - 1.0) / 4)
    assert stats["clip_frac"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.125, -0.125, -0.125], [0.25, 0.0, 0.0]]))


def test_grpo_advantages_groups():
    adv = sppo.grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), group_size=4)
    # group 1: mean .25, unbiased std .5; group 2: all equal -> zeros
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0]), atol=1e-5)
    with pytest.raises(ValueError):
        sppo.grpo_advantages(torch.zeros(6), group_size=4)


def test_outcome_on_last_step():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.equal(sppo.outcome_on_last_step(torch.tensor([0.7, 1.0]), mask),
                       torch.tensor([[0.0, 0.7, 0.0], [0.0, 0.0, 1.0]]))


def test_gae_by_hand():
    values = torch.tensor([[0.5, 0.8, 0.3]])  # the 0.3 sits on padding and must be ignored
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = sppo.gae_advantages(torch.tensor([1.0]), values, mask, gamma=1.0, lam=1.0)
    # t=1: 1 - 0.8 = 0.2; t=0: 0 + 0.8 - 0.5 + 0.2 = 0.5 (Monte Carlo: R - V)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.2, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 0.0]]))
    adv, ret = sppo.gae_advantages(torch.tensor([1.0]), values, mask, gamma=0.9, lam=0.5)
    # t=1: 0.2; t=0: delta = 0.9 * 0.8 - 0.5 = 0.22, A = 0.22 + 0.9 * 0.5 * 0.2 = 0.31
    assert torch.allclose(adv, torch.tensor([[0.31, 0.2, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.81, 1.0, 0.0]]))


def test_gae_token_rewards_equal_outcome_form():
    values, mask = torch.rand(2, 4), torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    outcome = torch.tensor([0.3, 1.0])
    a1, r1 = sppo.gae_advantages(outcome, values, mask, 0.99, 0.95)
    a2, r2 = sppo.gae_advantages(sppo.outcome_on_last_step(outcome, mask), values, mask, 0.99, 0.95)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


def test_whiten_and_value_loss():
    x, mask = torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 0.0])
    assert torch.allclose(sppo.whiten(x, mask), torch.tensor([-1.0, 1.0, 0.0]), atol=1e-4)
    v = torch.tensor([0.0, 1.0, 5.0])
    assert sppo.value_loss(v, torch.tensor([1.0, 1.0, 0.0]), mask).item() == pytest.approx(0.25)


def test_minibatches_cover_every_index_once():
    parts = sppo.minibatches(10, 3, generator=torch.Generator().manual_seed(0))
    assert len(parts) == 3 and sorted(torch.cat(parts).tolist()) == list(range(10))
