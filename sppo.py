"""Sequence-Level PPO (SPPO, arXiv 2604.08865) and the two baselines it is compared with.

Pure tensor functions on generic batches of (prompt, action sequence, outcome reward). Both drivers
(control.py for gymnasium, llm_train.py for language models) import their math from here.

Shapes: B sequences, T steps (tokens or env steps). `mask[b, t]` is 1 where step t of sequence b is a
real action and 0 where it is padding. Rewards are outcome rewards in [0, 1], one per sequence.

SPPO treats the whole sequence as ONE action of a contextual bandit whose context is the prompt x:

    A(x, y)  = R(x, y) - sigmoid(V(x))            sequence_advantages
    L_critic = BCEWithLogits(V(x), R(x, y))        critic_loss
    L_policy = PPO clipped surrogate, per token     policy_loss  (dual-clip c = 3 on A < 0, as verl)
"""
import torch
import torch.nn.functional as F


def sequence_advantages(rewards, value_logits):
    """SPPO advantage, one number per sequence: A = R - sigmoid(V(x)).

    rewards: [B] outcomes in [0, 1]; value_logits: [B] critic logits from the prompt alone, computed
    BEFORE this step's critic update. Returns [B] with no gradient (it is a constant in the policy loss).
    No whitening: the critic already centres the reward, and the scale of A means something (a sure
    prompt solved gives A ~ 0, a hard prompt solved gives A ~ 1).
    """
    return (rewards - torch.sigmoid(value_logits)).detach()


def critic_loss(value_logits, rewards):
    """SPPO critic: L = mean_b BCEWithLogits(V(x_b), R_b). Soft targets in [0, 1] are fine.

    sigmoid(V(x)) then estimates the probability that the current policy solves x ("solvability").
    value_logits: [B]; rewards: [B]. Returns a scalar.
    """
    return F.binary_cross_entropy_with_logits(value_logits, rewards.to(value_logits.dtype))


def success_logit(rewards, eps=1e-3):
    """logit(mean R): the value head's starting bias, set from the first batch before its advantages.

    A fresh critic says sigmoid(V) ~ 0.5. If only 5% of the first samples succeed, every advantage
    R - 0.5 is negative and the policy is pushed away from whatever it did, right or wrong. Starting
    V at the observed success rate centres the first advantages instead. Returns a float.
    """
    p = rewards.float().mean().clamp(eps, 1 - eps)
    return torch.log(p / (1 - p)).item()


def masked_mean(x, mask):
    """Mean of x over the positions where mask is 1 ("token-mean" aggregation). Scalar."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2, dual_clip=3.0):
    """PPO clipped surrogate with a per-token ratio and dual-clip, token-mean aggregation.

        r_t = exp(logp_t - old_logp_t)
        s_t = min(r_t * A_t, clip(r_t, 1 - eps, 1 + eps) * A_t)
        s_t = max(s_t, c * A_t)   where A_t < 0                   (dual-clip, c = dual_clip)
        L   = - mean_{t: mask_t = 1} s_t

    Dual-clip (Ye et al. 2020; verl's default c = 3, which the SPPO authors keep): with A < 0 the plain
    surrogate r * A is unbounded below as r grows, so one token the policy has come to like far more than
    when it was sampled could dominate the step; the loss of such a token is capped at -c * A (no gradient).
    dual_clip=None turns it off. logp, old_logp, mask: [B, T] (or any shape, all equal). advantages: [B] (one
    per sequence, broadcast to every token of it, as SPPO and GRPO do) or the shape of logp (token-level PPO).
    Returns (loss, stats) where stats holds detached floats: clip_frac (fraction of valid tokens whose
    ratio was clipped), dual_clip_frac (fraction capped by the dual clip) and approx_kl (the k3 estimator
    E[(r - 1) - log r] of KL(old || new)).
    """
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.detach()
    log_ratio = logp - old_logp.detach()
    ratio = torch.exp(log_ratio)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    capped = torch.zeros_like(surrogate, dtype=torch.bool)
    if dual_clip is not None:
        capped = (advantages < 0) & (surrogate < dual_clip * advantages)
        surrogate = torch.where(capped, dual_clip * advantages, surrogate)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps).to(logp.dtype)
        stats = {"clip_frac": masked_mean(clipped, mask).item(),
                 "dual_clip_frac": masked_mean(capped.to(logp.dtype), mask).item(),
                 "approx_kl": masked_mean((ratio - 1) - log_ratio, mask).item()}
    return loss, stats


def grpo_advantages(rewards, group_size, eps=1e-6):
    """GRPO baseline: A_i = (R_i - mean(R_group)) / (std(R_group) + eps), no critic.

    rewards: [B] with B a multiple of group_size; groups are consecutive blocks of group_size samples
    of the same prompt. std is the unbiased sample std (as in the GRPO paper and verl); a group whose
    rewards are all equal gets zeros. Returns [B].
    """
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"need group_size >= 2 dividing the batch, got {group_size} for {rewards.numel()}")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (grouped.std(dim=1, keepdim=True) + eps)).view(-1).detach()


def outcome_on_last_step(rewards, mask):
    """Token-level reward for a sequence-level outcome: R on the last valid step, 0 elsewhere.

    rewards: [B]; mask: [B, T] with each row's valid steps first. Returns [B, T].
    """
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    token_rewards = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    token_rewards[torch.arange(mask.shape[0], device=mask.device), last] = rewards
    return token_rewards * mask.to(rewards.dtype)


def gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0):
    """Token-level PPO baseline: generalised advantage estimation (GAE) with a per-step critic.

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)        (V after the last valid step counts as 0)
        A_t     = delta_t + gamma * lam * A_{t+1}
        G_t     = A_t + V(s_t)                              (the critic's regression target)

    rewards: [B, T] per-step rewards, or [B] outcomes (placed on each sequence's last valid step);
    values: [B, T] critic values; mask: [B, T] with the valid steps of each row first.
    Returns (advantages, returns), both [B, T], zero on padding, no gradient.
    """
    if rewards.dim() == 1:
        rewards = outcome_on_last_step(rewards, mask)
    mask = mask.to(values.dtype)
    values = values.detach() * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def whiten(x, mask, eps=1e-8):
    """(x - mean) / std over the valid positions: the advantage normalisation token-level PPO uses."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask.to(x.dtype)


def value_loss(values, returns, mask):
    """Token-level PPO critic: L = 0.5 * mean_{valid t} (V(s_t) - G_t)^2."""
    return 0.5 * masked_mean((values - returns.detach()) ** 2, mask)


def minibatches(n, num_minibatches, generator=None):
    """Shuffle range(n) and cut it into num_minibatches index tensors of near-equal size."""
    return torch.randperm(n, generator=generator).tensor_split(num_minibatches)
