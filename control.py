"""SPPO on classic control in RLVR mode: outcome-only reward, one scalar critic on the first observation.

    python control.py --env CartPole-v1 --algo sppo --seed 1

RLVR mode (see README): the "prompt" is the first observation after env.reset(seed=s), the "action
sequence" is every action until the episode ends, and the learner sees ONE outcome in [0, 1] computed
from the finished episode; the per-step rewards of the env are only summed for reporting.
  sppo: A = R - sigmoid(V(s_0)) for every step of the episode, critic trained with BCE on R.
  ppo : token-level baseline, per-step critic V(s_t), R on the last step only, GAE.
  grpo: group_size episodes from the same seed, A = (R - group mean) / group std.
All three use the PPO clipped loss from sppo.py; this file only collects episodes and calls it.
"""
import argparse
import csv
import inspect
import json
import math
import os
import re
import shutil
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from torch.distributions import Categorical, Normal
from tqdm import tqdm

import sppo


@dataclass
class Config:
    env: str = "CartPole-v1"  # gymnasium id; ENVS (in control.py) holds the defaults of each env
    algo: str = "sppo"  # sppo | ppo | grpo
    seed: int = 1  # seeds torch, the episode seeds and hence the whole run
    total_steps: int = 1_000_000  # env-step budget (steps of real episodes, summed)
    num_envs: int = 16  # sub-envs stepped side by side
    episodes: int = 32  # episodes per update (the batch); grpo: rounded down to a multiple of group_size
    group_size: int = 8  # grpo: episodes per seed (a group)
    lr: float = 1e-3  # actor Adam learning rate
    critic_lr: float = 1e-3  # critic Adam learning rate
    update_epochs: int = 8  # passes over each batch of episodes
    num_minibatches: int = 4  # minibatches per pass (over all valid steps of the batch)
    clip_eps: float = 0.2  # PPO clip range epsilon
    dual_clip: float = 3.0  # dual-clip c on negative advantages (verl's default, the authors' too); 0 = off
    gamma: float = 0.99  # ppo only: discount of the GAE baseline
    lam: float = 0.95  # ppo only: GAE lambda
    max_grad_norm: float = 0.5  # gradient clipping of actor and critic
    anneal_lr: bool = False  # lower both lrs linearly to 0 over total_steps (CleanRL's --anneal-lr)
    ent_coef: float = 0.0  # entropy bonus (the paper uses none)
    hidden: int = 64  # width of the two hidden layers of actor and critic
    eval_episodes: int = 100  # final evaluation episodes, on seeds never used in training
    eval_every: int = 0  # also evaluate every this many env steps (0 = only at the end)
    threads: int = 1  # torch threads: small MLPs are fastest on one
    out: str = ""  # run folder; "" = runs/{env}_{algo}_{seed}


def balanced(ep, since, max_angle):
    """Pendulum: upright (|angle| <= max_angle; obs[0] is cos(angle)) at every step from step `since` on."""
    return (np.asarray(ep["obs"][since:, :, 0]) >= np.cos(max_angle)).all(0)


def forward_distance(ep):
    """Hopper: metres the torso moved forward, its final x minus its x after the reset."""
    return ep["x_end"] - ep["x_start"]


# Per-environment RLVR setup. outcome(ep) -> [0, 1] and success(ep) -> bool read the finished episode
# only: ep["ret"] (the env's return, never shown to the learner), ep["length"], ep["min_x"] and ep["max_x"]
# (range of the first observation coordinate, MountainCar's position), ep["terminated"], and ep["x_start"],
# ep["x_end"] (the body's x position at the start and the end, from the env's info "x_position": Hopper's
# observation leaves x out; nan for envs that do not report it) and ep["obs"] ([T, n, obs_dim], every step's
# observation, padded past each episode's end).
# measure: (name, fn) the task measure in its own units; evaluate() reports its mean as "mean_{name}" and
# summary.json names that key in "task_measure" (for CartPole and the return-graded envs it is a key
# summary.json has anyway). degenerate: why a constant, random or standing-still policy cannot succeed
# (tests/test_control.py checks it for constant and uniformly random actions).
# "config" holds this env's defaults; a flag given on the command line overrides them.
ENVS = {
    "CartPole-v1": dict(  # graded by the steps balanced
        outcome=lambda ep: ep["length"] / 500.0,
        success=lambda ep: ep["length"] >= 500,
        measure=("length", lambda ep: ep["length"]),
        degenerate="the pole falls within ~10 steps under a constant push and ~20 under random pushes; "
                   "success needs all 500",
        # For speed (bench/control_speed.py): the update's cost is per step and epoch, Python's per loop turn,
        # so 256 episodes a batch, a 32-unit MLP, 2 epochs; the lr annealed so the policy settles at the end
        config=dict(total_steps=1_000_000, num_envs=256, episodes=256, hidden=32, update_epochs=2,
                    anneal_lr=True)),
    "MountainCar-v0": dict(  # graded by the highest point reached (height ~ sin 3x), the flag gives 1
        outcome=lambda ep: np.where(ep["terminated"], 1.0,
                                    (np.maximum(np.sin(3 * ep["min_x"]), np.sin(3 * ep["max_x"])) + 1) / 2),
        success=lambda ep: ep["terminated"],
        measure=("max_position", lambda ep: ep["max_x"]),  # the flag is at 0.5
        degenerate="the engine is too weak to climb directly: the flag needs swings timed to the velocity, "
                   "which a constant or random action never builds up in 200 steps",
        config=dict(total_steps=1_000_000, num_envs=64, episodes=64, update_epochs=4)),
    "LunarLander-v3": dict(  # graded: normalised return, 300 and above gives 1
        outcome=lambda ep: np.clip((ep["ret"] + 200.0) / 500.0, 0.0, 1.0),
        success=lambda ep: ep["ret"] >= 200,
        measure=("return", lambda ep: ep["ret"]),  # the env's reward is the task: land softly on the pad
        degenerate="200 needs a soft landing on the pad (+100 at rest, ~+140 for getting there, legs down) "
                   "with little fuel: idle or random engines crash (-100), firing one engine flies off or "
                   "spins, hovering burns fuel for 1000 steps",
        config=dict(total_steps=2_000_000)),  # 8 epochs: 0.96 on seeds 101-103, 16: 0.45 (ablation)
    "Pendulum-v1": dict(  # graded: normalised return, 0 is the best possible; success: swung up and held
        outcome=lambda ep: np.clip(1.0 + ep["ret"] / 1500.0, 0.0, 1.0),
        success=lambda ep: balanced(ep, since=100, max_angle=0.5),
        measure=("return", lambda ep: ep["ret"]),  # the env's cost is the task: upright, still, little torque
        degenerate="success is the pendulum within 0.5 rad of upright at every step of the second half "
                   "(steps 100-199; the motor holds a lean of 0.41 rad at most): "
                   "the torque is too weak to lift it directly and upright is unstable, so "
                   "a constant or random torque leaves it hanging or swinging. (Return >= -200 was dropped: "
                   "a near-optimal controller fails it from 28% of the starts, bench/pendulum_ceiling.py)",
        # 32 hidden units (was 64): the update costs less, and learning held (bench/control_ablation.py)
        config=dict(total_steps=2_000_000, num_envs=64, episodes=64, hidden=32)),
    "Hopper-v5": dict(  # graded by the forward distance (the return pays +1 a step for standing)
        outcome=lambda ep: np.clip(forward_distance(ep) / 10.0, 0.0, 1.0),
        success=lambda ep: forward_distance(ep) >= 5.0,
        measure=("forward_distance", forward_distance),  # metres
        degenerate="success is 5 m forward in 1000 steps: standing still, falling over or random torques "
                   "move the torso about 1 m at most, and the episode ends once it tilts or drops",
        config=dict(total_steps=1_000_000, lr=3e-4)),
}
EVAL_SEED0 = 10**9  # training seeds are drawn below this, evaluation seeds start here
ALGOS = ("sppo", "ppo", "grpo")
RUN_FILES = ("policy.pt", "metrics.csv", "summary.json")  # what a run writes into its --out folder
EVAL_KEYS = ("success_rate", "mean_outcome", "mean_return", "mean_length")  # evaluate(), + the task measure
CHECKPOINT_KEYS = ("config", "agent", "actor_opt", "critic_opt", "env_steps", "update")


def fail(msg):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"control.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------------
def make_envs(env_id, n):
    """n copies side by side. CartPole uses gymnasium's numpy-batched CartPoleVectorEnv (~20x faster)."""
    if env_id == "CartPole-v1":
        return gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point")
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync")


def start_episodes(envs, which, seeds, obs=None):
    """(Re)start the sub-envs where `which` is True; the k-th of them starts from env.reset(seed=seeds[k]).

    That first observation is the episode's prompt. Returns the observations of all sub-envs (obs, or zeros on
    the first start, with the restarted rows replaced) and the restarted sub-envs' body x positions (nan where
    the env reports none; Hopper's observation leaves x out).
    """
    n = envs.num_envs
    x = np.full(n, np.nan)
    if isinstance(envs.unwrapped, CartPoleVectorEnv):
        # The batched CartPole resets from one shared RNG and has no partial reset: write into each
        # chosen sub-env the start state that CartPole-v1.reset(seed=s) gives, and zero its step count.
        cp = envs.unwrapped
        if cp.state is None:
            envs.reset()
        start = np.stack([CARTPOLE.reset(seed=int(s))[0] for s in seeds])
        cp.state[:, which], cp.steps[which], cp.prev_done[which] = start.T, 0, False
        return cp.state.T.astype(np.float32), x
    # the other envs: gymnasium's sync vector env holds the sub-envs; each is reset (and stepped, step_busy)
    # on its own, as SyncVectorEnv.reset(options={"reset_mask": which}) would, without its bookkeeping
    space = envs.single_observation_space
    obs = np.zeros((n, *space.shape), space.dtype) if obs is None else obs.copy()
    for i, s in zip(np.flatnonzero(which), seeds):
        obs[i], info = envs.envs[i].reset(seed=int(s))
        x[i] = info.get("x_position", np.nan)
    return obs, x


def step_busy(envs, action, on, obs):
    """Step the sub-envs where `on` is True with their actions; the others neither step nor change.

    Returns the observations of all sub-envs, and reward, terminated, truncated and the body's x position
    (nan where the env reports none; None for CartPole) of the stepped ones. gymnasium's vector step steps
    every sub-env: near a batch's end most have no episode left, and on LunarLander and Hopper, whose episodes
    last from ~50 to 1000 steps, those idle steps took more env time than the real ones. The numpy-batched
    CartPole steps all its sub-envs at the cost of one, so it keeps envs.step (its autoreset is undone by
    start_episodes).
    """
    if isinstance(envs.unwrapped, CartPoleVectorEnv):
        return *envs.step(action)[:4], None
    n, obs = envs.num_envs, obs.copy()
    reward, terminated, truncated, x = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), np.full(n, np.nan)
    for i in np.flatnonzero(on):
        obs[i], reward[i], terminated[i], truncated[i], info = envs.envs[i].step(action[i])
        x[i] = info.get("x_position", np.nan)
    return obs, reward, terminated, truncated, x


CARTPOLE = gym.make("CartPole-v1").unwrapped  # computes the seeded start states of the batched CartPole


def rollout(envs, agent, seeds):
    """Play one episode per seed, envs.num_envs at a time; a sub-env that ends starts the next seed.

    Returns the steps as tensors [T, n, ...] (episode j in column j, padded, mask 1 on real steps) and
    per-episode stats for the outcome. The env's per-step reward is only summed into ep["ret"] for
    reporting. A batch ends when all its episodes have ended, so long episodes are not under-sampled;
    sub-envs left without an episode near the end wait, unstepped (step_busy). A finished sub-env restarts
    at once with the next seed (start_episodes), so every step belongs to the episode of that sub-env's slot.
    The loop runs once per env step, so it stays in numpy: the policy too (Agent.sampler), and the steps go
    into preallocated arrays, turned into tensors once at the end.
    """
    n, n_env, max_t = len(seeds), envs.num_envs, envs.spec.max_episode_steps
    space = envs.single_action_space
    ep = dict(ret=np.zeros(n), length=np.zeros(n, dtype=np.int64), min_x=np.zeros(n), max_x=np.zeros(n),
              terminated=np.zeros(n, dtype=bool), x_start=np.full(n, np.nan), x_end=np.full(n, np.nan))
    buf = dict(obs=np.zeros((max_t, n, envs.single_observation_space.shape[0]), np.float32),
               actions=np.zeros((max_t, n, *space.shape), space.dtype), logp=np.zeros((max_t, n), np.float32))
    act = agent.sampler(np.random.default_rng(int(torch.randint(2**62, ()))))  # torch.manual_seed fixes it
    slot = np.full(n_env, -1)  # the episode each sub-env is playing, -1 for none
    slot[:min(n, n_env)] = np.arange(min(n, n_env))
    obs, x = start_episodes(envs, slot >= 0, seeds[:n_env])
    record_start(ep, slot[slot >= 0], slot >= 0, obs, x)
    next_ep = min(n, n_env)
    while (slot >= 0).any():
        on = slot >= 0
        j, t = slot[on], ep["length"][slot[on]]  # episode and step index of each busy sub-env
        action, logp = act(obs)  # idle rows too: the RNG draws, and so the episodes, stay those of before
        buf["obs"][t, j], buf["actions"][t, j], buf["logp"][t, j] = obs[on], action[on], logp[on]
        if agent.continuous:  # the Gaussian is unbounded; the env gets the action clipped to its box
            action = np.clip(action, space.low, space.high)
        obs, reward, terminated, truncated, x = step_busy(envs, action, on, obs)
        ep["ret"][j] += reward[on]
        ep["length"][j] += 1
        ep["min_x"][j] = np.minimum(ep["min_x"][j], obs[on, 0])
        ep["max_x"][j] = np.maximum(ep["max_x"][j], obs[on, 0])
        ep["terminated"][j] |= terminated[on]
        if x is not None:  # kept up to date, so after an episode's last step: where it ended
            ep["x_end"][j] = x[on]
        done = on & (terminated | truncated)
        if done.any():
            slot[done] = -1
            restart = np.flatnonzero(done)[:n - next_ep]  # sub-envs that take the next seeds
            if len(restart):
                which = np.zeros(n_env, dtype=bool)
                which[restart] = True
                obs, x = start_episodes(envs, which, seeds[next_ep:next_ep + len(restart)], obs)
                slot[restart] = np.arange(next_ep, next_ep + len(restart))
                record_start(ep, slot[restart], which, obs, x)
                next_ep += len(restart)
    length = int(ep["length"].max())
    buf["mask"] = (np.arange(length)[:, None] < ep["length"]).astype(np.float32)  # real steps come first
    ep["obs"] = buf["obs"][:length]  # [T, n, obs_dim], each step's observation before its action
    return {k: torch.from_numpy(v[:length]) for k, v in buf.items()}, ep


def record_start(ep, j, which, obs, x):
    """Start stats of episodes j, just started in the sub-envs where `which` is True: the first observation
    coordinate, and the body's x position (nan for envs that report none)."""
    ep["min_x"][j] = ep["max_x"][j] = obs[which, 0]
    ep["x_start"][j] = ep["x_end"][j] = x[which]


# ---------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------
def mlp(n_in, n_out, hidden, out_std):
    """Two tanh hidden layers, orthogonal init (as CleanRL's PPO)."""
    layers = [nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
              nn.Linear(hidden, n_out)]
    for layer, std in zip(layers[::2], (2**0.5, 2**0.5, out_std)):
        nn.init.orthogonal_(layer.weight, std)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Agent(nn.Module):
    """Actor (categorical or diagonal Gaussian policy) and critic, behind a running observation norm.

    The critic is V(s_0) -> one logit for sppo, V(s_t) -> one value per step for ppo; grpo ignores it.
    Observations are normalised by running statistics: without it MountainCar's velocity (~0.01) is
    invisible next to its position (~0.5) and the policy never learns to swing. The statistics live
    in the model (buffers), so a saved policy carries them; they are
    refreshed between updates only, so old and new log-probs of one update see the same inputs.
    """

    def __init__(self, obs_dim, action_space, hidden):
        super().__init__()
        self.continuous = isinstance(action_space, gym.spaces.Box)
        n_out = action_space.shape[0] if self.continuous else action_space.n
        self.actor = mlp(obs_dim, n_out, hidden, out_std=0.01)
        self.critic = mlp(obs_dim, 1, hidden, out_std=0.01)  # starts flat: its bias sets the level
        self.log_std = nn.Parameter(torch.zeros(n_out)) if self.continuous else None
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.tensor(1e-4))

    def normalise(self, obs):
        return ((obs - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-10, 10)

    @torch.no_grad()
    def update_obs_stats(self, obs):
        """Parallel mean/variance update (Chan et al.), as gymnasium's RunningMeanStd."""
        n, mean, var = obs.shape[0], obs.mean(0), obs.var(0, unbiased=False)
        delta, total = mean - self.obs_mean, self.obs_count + n
        m2 = self.obs_var * self.obs_count + var * n + delta**2 * self.obs_count * n / total
        self.obs_mean += delta * n / total
        self.obs_var.copy_(m2 / total)
        self.obs_count.fill_(total)

    def dist(self, obs):  # validate_args=False: the checks cost more than the small MLP
        out = self.actor(self.normalise(obs))
        if self.continuous:
            return Normal(out, self.log_std.exp(), validate_args=False)
        return Categorical(logits=out, validate_args=False)

    @torch.no_grad()
    def sampler(self, rng):
        """The policy as a numpy function obs [n, obs_dim] -> (sampled actions, their float32 log-probs),
        the same maths as log_prob(dist(obs), action): rollout() calls it once per env step, and on a few
        dozen observations numpy runs this small MLP several times faster than torch (whose fixed cost per
        operation dominates). rng (a numpy Generator) draws the actions. The weights are read once: they do
        not change during a rollout."""
        (w1, b1), (w2, b2), (w3, b3) = [(lin.weight.numpy().T, lin.bias.numpy()) for lin in self.actor[::2]]
        mean, std = self.obs_mean.numpy(), torch.sqrt(self.obs_var + 1e-8).numpy()
        log_std = self.log_std.numpy() if self.continuous else None

        def act(obs):
            x = np.clip((obs.astype(np.float32) - mean) / std, -10, 10)
            out = np.tanh(np.tanh(x @ w1 + b1) @ w2 + b2) @ w3 + b3
            if self.continuous:  # Normal(out, exp(log_std)): a = out + std * noise
                noise = rng.standard_normal(out.shape, dtype=np.float32)
                scale = np.exp(log_std)
                action = out + scale * noise
                logp = -(action - out) ** 2 / (2 * scale**2) - log_std - math.log(math.sqrt(2 * math.pi))
                return action, logp.sum(-1)
            logits = out - out.max(-1, keepdims=True)  # Categorical(logits=out): log-softmax, inverse CDF
            logits -= np.log(np.exp(logits).sum(-1, keepdims=True))
            u = rng.random((len(out), 1), dtype=np.float32)
            action = np.minimum((np.exp(logits).cumsum(-1) <= u).sum(-1), out.shape[-1] - 1)
            return action, np.take_along_axis(logits, action[:, None], -1)[:, 0]

        return act

    def log_prob(self, dist, action):
        return dist.log_prob(action).sum(-1) if self.continuous else dist.log_prob(action)

    def entropy(self, dist):
        return dist.entropy().sum(-1) if self.continuous else dist.entropy()

    def value(self, obs):
        return self.critic(self.normalise(obs)).squeeze(-1)


# ---------------------------------------------------------------------------------------------------
# One update: advantages from sppo.py, then PPO epochs over minibatches of valid steps
# ---------------------------------------------------------------------------------------------------
def update(cfg, agent, actor_opt, critic_opt, steps, outcome, first=False):
    mask = steps["mask"]  # [T, E]
    valid = mask.bool().flatten()
    flat = {k: v.flatten(0, 1)[valid] for k, v in steps.items() if k != "mask"}  # [N, ...] valid steps
    rewards = torch.as_tensor(outcome, dtype=torch.float32)  # [E]
    stats = {"critic_loss": float("nan")}

    if cfg.algo == "sppo":
        s0 = steps["obs"][0]  # the prompt of each episode
        if first:  # start the critic at the first batch's success rate (see sppo.success_logit)
            agent.critic[-1].bias.data.fill_(sppo.success_logit(rewards))
        with torch.no_grad():  # A = R - sigmoid(V(s_0)), from the critic BEFORE this update
            seq_adv = sppo.sequence_advantages(rewards, agent.value(s0))
        for _ in range(cfg.update_epochs):  # L_critic = BCE(V(s_0), R)
            loss = sppo.critic_loss(agent.value(s0), rewards)
            step(critic_opt, loss, cfg.max_grad_norm)
        stats["critic_loss"] = loss.item()
    elif cfg.algo == "grpo":
        seq_adv = sppo.grpo_advantages(rewards, cfg.group_size)  # (R - group mean) / group std
    if cfg.algo in ("sppo", "grpo"):
        flat["adv"] = seq_adv.expand_as(mask).flatten()[valid]  # the same A for every step of an episode
    else:  # ppo: per-step critic, R on the last step, GAE; advantages whitened as in CleanRL and verl
        with torch.no_grad():
            values = agent.value(steps["obs"]) * mask  # [T, E]
        adv, returns = sppo.gae_advantages(rewards, values.T, mask.T, cfg.gamma, cfg.lam)  # [E, T]
        flat["adv"] = sppo.whiten(adv, mask.T).T.flatten()[valid]
        flat["returns"] = returns.T.flatten()[valid]

    n = valid.sum().item()
    ones = torch.ones(1)
    for _ in range(cfg.update_epochs):
        for idx in sppo.minibatches(n, cfg.num_minibatches):
            dist = agent.dist(flat["obs"][idx])
            logp = agent.log_prob(dist, flat["actions"][idx])
            loss, pstats = sppo.policy_loss(logp, flat["logp"][idx], flat["adv"][idx], ones.expand_as(logp),
                                            cfg.clip_eps, cfg.dual_clip or None)
            if cfg.ent_coef:  # the bonus needs the entropy's gradient; else it is only reported (below)
                loss = loss - cfg.ent_coef * agent.entropy(dist).mean()
            step(actor_opt, loss, cfg.max_grad_norm)
            if cfg.algo == "ppo":
                vloss = sppo.value_loss(agent.value(flat["obs"][idx]), flat["returns"][idx],
                                        ones.expand_as(logp))
                step(critic_opt, vloss, cfg.max_grad_norm)
                stats["critic_loss"] = vloss.item()
    with torch.no_grad():
        stats.update(pstats, entropy=agent.entropy(dist).mean().item())  # of the last minibatch
    agent.update_obs_stats(flat["obs"])  # after the update, so one update sees one normalisation
    return stats


def step(opt, loss, max_norm):
    """One Adam step on loss, with the gradient norm of the optimiser's parameters clipped."""
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], max_norm)
    opt.step()


# ---------------------------------------------------------------------------------------------------
# Evaluation, checkpoints
# ---------------------------------------------------------------------------------------------------
def evaluate(cfg, agent, episodes):
    """The trained (sampling) policy on seeds EVAL_SEED0, EVAL_SEED0 + 1, ..., with its own fixed RNG.

    We sample rather than take the mean action: the policy was trained, and is judged, as a sampler;
    in a check on Hopper, its mean action alone fell over far more often than the sampling policy.
    """
    envs = make_envs(cfg.env, min(episodes, cfg.num_envs))
    with torch.random.fork_rng():  # the same actions on every call, and training's RNG untouched
        torch.manual_seed(EVAL_SEED0)
        _, ep = rollout(envs, agent, np.arange(EVAL_SEED0, EVAL_SEED0 + episodes))
    envs.close()
    spec = ENVS[cfg.env]
    return {"success_rate": float(np.mean(spec["success"](ep))),
            "mean_outcome": float(np.mean(spec["outcome"](ep))),
            "mean_return": float(np.mean(ep["ret"])), "mean_length": float(np.mean(ep["length"])),
            measure_key(cfg.env): float(np.mean(spec["measure"][1](ep)))}


def measure_key(env_id):
    """The key of the env's task measure in evaluate()'s result, e.g. mean_forward_distance for Hopper."""
    return "mean_" + ENVS[env_id]["measure"][0]


def save_checkpoint(path, cfg, agent, actor_opt, critic_opt, env_steps, update_idx):
    """Atomic: write a temporary file, then rename it over the old one."""
    tmp = path + ".tmp"
    torch.save({"config": asdict(cfg), "agent": agent.state_dict(), "actor_opt": actor_opt.state_dict(),
                "critic_opt": critic_opt.state_dict(), "env_steps": env_steps, "update": update_idx}, tmp)
    os.replace(tmp, path)


def build(cfg):
    probe = make_envs(cfg.env, 1)
    agent = Agent(probe.single_observation_space.shape[0], probe.single_action_space, cfg.hidden)
    probe.close()
    actor_params = [*agent.actor.parameters()] + ([agent.log_std] if agent.continuous else [])
    actor_opt = torch.optim.Adam(actor_params, lr=cfg.lr, eps=1e-5)
    critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=cfg.critic_lr, eps=1e-5)
    return agent, actor_opt, critic_opt


def restore(ckpt, agent, actor_opt, critic_opt):
    agent.load_state_dict(ckpt["agent"])
    actor_opt.load_state_dict(ckpt["actor_opt"])
    critic_opt.load_state_dict(ckpt["critic_opt"])


def load_checkpoint(run_dir):
    """The run saved in run_dir: (config, agent, actor_opt, critic_opt, checkpoint dict).

    A file that is not a checkpoint of this script gives one line and exit 2: torch's own messages run to
    pages (and suggest weights_only=False, which would run whatever code the file holds).
    """
    path = os.path.join(run_dir, "policy.pt")
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}")
    try:
        return read_checkpoint(path)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on a bad file
        reason = str(e).strip().split("\n")[0].split(". ")[0][:120] or type(e).__name__  # first sentence
        fail(f"not a checkpoint written by control.py: {path} ({reason})")


def read_checkpoint(path):
    with warnings.catch_warnings():  # torch warns on stderr about some pickle protocols
        warnings.simplefilter("ignore")
        ckpt = torch.load(path, weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else CHECKPOINT_KEYS
    if missing:
        raise ValueError(f"no {', '.join(missing)} in it")
    cfg = Config(**ckpt["config"])
    if config_error(cfg):
        raise ValueError(f"its config: {config_error(cfg)}")
    agent, actor_opt, critic_opt = build(cfg)
    restore(ckpt, agent, actor_opt, critic_opt)
    return cfg, agent, actor_opt, critic_opt, ckpt


# ---------------------------------------------------------------------------------------------------
# Command line: every check runs before anything is created on disk
# ---------------------------------------------------------------------------------------------------
def flag(name):
    return "--" + name.replace("_", "-")


def on_off(text):
    """A bool flag's value: 1/true/on or 0/false/off (argparse's type=bool would take "0" as True)."""
    if text.lower() not in ("1", "true", "on", "0", "false", "off"):
        raise argparse.ArgumentTypeError(f"expected 1 or 0 (true/false, on/off), got {text!r}")
    return text.lower() in ("1", "true", "on")


def flag_help(f, comment):
    """The field's comment and default, and the envs whose ENVS[env]["config"] sets another default."""
    others = [f"{spec['config'][f.name]!r} for {env}" for env, spec in ENVS.items()
              if spec["config"].get(f.name, f.default) != f.default]
    return f"{comment} (default: {', '.join([repr(f.default)] + others)})".replace("%", "%%")


def parse_args(argv=None):
    """Returns (the Config flags given, as a dict; the other flags: eval, resume, overwrite, tensorboard)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.error = fail  # one line, exit 2, for argparse's own errors too
    comments = dict(re.findall(r"^    (\w+): .*?  # (.*)$", inspect.getsource(Config), re.M))
    for f in fields(Config):  # SUPPRESS: only the flags given appear, so env defaults can fill the rest
        choices = {"env": list(ENVS), "algo": ALGOS}.get(f.name)
        p.add_argument(flag(f.name), type=on_off if f.type is bool else f.type, default=argparse.SUPPRESS,
                       choices=choices,
                       help=flag_help(f, comments[f.name]))
    either = p.add_mutually_exclusive_group()
    either.add_argument("--eval", metavar="DIR",
                        help="re-evaluate the policy saved in DIR and exit; writes nothing")
    either.add_argument("--resume", metavar="DIR",
                        help="continue the run saved in DIR up to --total-steps, in DIR; with --out OTHER, "
                        "in a copy of it in OTHER (DIR is left untouched)")
    p.add_argument("--overwrite", action="store_true",
                   help="let this run replace the run already in --out (its policy.pt, metrics.csv, "
                   "summary.json are deleted); without it such an --out is refused")
    p.add_argument("--tensorboard", metavar="DIR", help="also log the scalars of metrics.csv and the final "
                   "evaluation to TensorBoard event files in DIR (needs: pip install tensorboard)")
    given = vars(p.parse_args(argv))
    return given, {k: given.pop(k, None) for k in ("eval", "resume", "overwrite", "tensorboard")}


POSITIVE = (lambda v: v > 0, "positive")
AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
RULES = {  # what each setting must be beyond its type (and, for a float, being finite)
    "env": (lambda v: v in ENVS, f"one of {', '.join(ENVS)}"),
    "algo": (lambda v: v in ALGOS, f"one of {', '.join(ALGOS)}"),
    "seed": (lambda v: 0 <= v < 2**64, "in [0, 2**64)"),  # torch.manual_seed takes no more
    "total_steps": POSITIVE, "num_envs": POSITIVE, "episodes": POSITIVE, "group_size": POSITIVE,
    "lr": POSITIVE, "critic_lr": POSITIVE, "update_epochs": POSITIVE, "num_minibatches": POSITIVE,
    "clip_eps": (lambda v: 0 < v < 1, "in (0, 1)"),
    "dual_clip": (lambda v: v == 0 or v > 1, "0 (off) or > 1"),
    "gamma": UNIT, "lam": UNIT, "max_grad_norm": POSITIVE,
    "ent_coef": AT_LEAST_0, "hidden": POSITIVE, "eval_episodes": POSITIVE, "eval_every": AT_LEAST_0,
    "threads": POSITIVE,
}


def batch_episodes(cfg):
    """Episodes per update: grpo takes whole groups of group_size episodes."""
    if cfg.algo != "grpo":
        return cfg.episodes
    return max(cfg.group_size, cfg.episodes // cfg.group_size * cfg.group_size)


def config_error(cfg):
    """The first impossible setting of cfg, as a message for the user; None if there is none."""
    for f in fields(Config):
        value = getattr(cfg, f.name)
        if not isinstance(value, f.type) and not (f.type is float and type(value) is int):
            return f"{flag(f.name)} must be of type {f.type.__name__}, got {value!r}"
        if f.type is float and not math.isfinite(value):  # nan passes no comparison and fails nothing below
            return f"{flag(f.name)} must be a finite number, got {value}"
        test, what = RULES.get(f.name, (lambda v: True, ""))
        if not test(value):
            return f"{flag(f.name)} must be {what}, got {value}"
    if cfg.algo == "grpo" and cfg.group_size < 2:
        return f"--group-size must be at least 2 for grpo, got {cfg.group_size}"
    if cfg.num_minibatches > batch_episodes(cfg):  # every episode has a step, so no minibatch is empty
        return f"--num-minibatches must be at most the episodes per update ({batch_episodes(cfg)})"
    return None


def make_config(given):
    """Config defaults, then the env's defaults, then the flags given; refuse impossible settings.

    Creates nothing on disk: the run folder is made only once every check has passed (start_run_folder).
    """
    env = given.get("env", Config.env)
    cfg = Config(**{**(ENVS[env]["config"] if env in ENVS else {}), **given})
    if config_error(cfg):
        fail(config_error(cfg))
    cfg.episodes = batch_episodes(cfg)
    cfg.out = cfg.out or os.path.join("runs", f"{cfg.env}_{cfg.algo}_{cfg.seed}")
    return cfg


def refuse_contradictions(given, saved, run_dir, names, why):
    """A flag given with --eval or --resume that contradicts the saved run is refused, not ignored."""
    for name in names:
        if name in given and given[name] != getattr(saved, name):
            fail(f"{flag(name)} {given[name]} contradicts the run in {run_dir} "
                 f"({name} {getattr(saved, name)}); {why}")


def folder_error(path):
    """Why a folder could not be made or written at path, or None. Creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        return "it is a file"
    parent = os.path.abspath(path)
    while not os.path.exists(parent):  # the nearest existing folder is where the new ones would be made
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"


def check_run_folders(cfg, extra):
    """The folders must be writable, and a run must not land on an earlier run (its results would be lost)
    unless it continues that run in place (--resume DIR) or --overwrite says so."""
    for name, path in (("--out", cfg.out), ("--tensorboard", extra["tensorboard"])):
        if path and folder_error(path):
            fail(f"cannot write to {name} {path}: {folder_error(path)}")
    resume = extra["resume"]
    in_place = resume and os.path.realpath(resume) == os.path.realpath(cfg.out)
    held = [name for name in RUN_FILES if os.path.exists(os.path.join(cfg.out, name))]
    if held and not in_place and not extra["overwrite"]:
        fail(f"--out {cfg.out} holds an earlier run ({', '.join(held)}): "
             f"continue it with --resume {cfg.out}, or replace it with --overwrite")
    if extra["tensorboard"]:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports the tensorboard package)
        except ImportError:
            fail("--tensorboard needs the tensorboard package: pip install tensorboard")


def start_run_folder(out, resume=None):
    """Make --out, now that every check has passed. A new run clears an earlier run there (--overwrite);
    a branch (--resume DIR --out OTHER) starts from a copy of DIR's checkpoint and metrics."""
    if resume and os.path.realpath(resume) == os.path.realpath(out):
        return  # continuing in place: the run's files are appended to and replaced as it goes
    os.makedirs(out, exist_ok=True)
    for name in RUN_FILES:
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
        # the branch starts from DIR's checkpoint and metrics; it writes its own summary when it ends
        if resume and name != "summary.json" and os.path.exists(os.path.join(resume, name)):
            shutil.copyfile(os.path.join(resume, name), os.path.join(out, name))


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------
METRICS = ["update", "env_steps", "wall_seconds", "mean_outcome", "success_rate", "mean_return",
           "critic_loss", "clip_frac", "dual_clip_frac", "approx_kl", "entropy", "eval_success_rate",
           "eval_mean_return"]


def open_metrics(path, append):
    """metrics.csv: a resumed run appends to its file (a branch to its copy), a new run starts one."""
    write_header = not (append and os.path.exists(path))
    f = open(path, "a" if append else "w", newline="")
    writer = csv.DictWriter(f, fieldnames=METRICS)
    if write_header:
        writer.writeheader()
    return f, writer


def open_tensorboard(tb_dir):
    if not tb_dir:
        return None
    from torch.utils.tensorboard import SummaryWriter  # optional package, checked in check_run_folders
    return SummaryWriter(tb_dir)


def log_scalars(tb, values, step):
    """TensorBoard, if on: each number of a metrics.csv row (or of the final evaluation) at env step step."""
    if tb is not None:
        for name, value in values.items():
            tb.add_scalar(name, value, step)


def write_summary(cfg, env_steps, update_idx, wall_seconds, train_seconds, result):
    """summary.json, written atomically. result None (an interrupted run): evaluation fields null, a note."""
    note = f"interrupted before the final evaluation; python control.py --resume {cfg.out} completes the run"
    summary = dict(env=cfg.env, algo=cfg.algo, seed=cfg.seed, env_steps=env_steps, updates=update_idx,
                   wall_seconds=round(wall_seconds, 2), train_seconds=round(train_seconds, 2),
                   steps_per_second=round(env_steps / max(train_seconds, 1e-9), 1),
                   eval_episodes=cfg.eval_episodes, task_measure=measure_key(cfg.env),
                   **(result or dict.fromkeys((*EVAL_KEYS, measure_key(cfg.env)))),
                   **({} if result else {"note": note}), config=asdict(cfg))
    path = os.path.join(cfg.out, "summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(path + ".tmp", path)
    return summary


def train(cfg, ckpt=None, tb_dir=None):
    """Train into cfg.out (from the checkpoint dict ckpt, if given): policy.pt, metrics.csv, summary.json.

    Ctrl-C during training or the final evaluation saves the checkpoint and summary.json (evaluation fields
    null, a note), then exits 130.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    agent, actor_opt, critic_opt = build(cfg)  # built even on resume: the same use of the RNG as a new run
    env_steps, update_idx = 0, 0
    if ckpt:
        restore(ckpt, agent, actor_opt, critic_opt)
        env_steps, update_idx = ckpt["env_steps"], ckpt["update"]
    seed_rng = np.random.default_rng([cfg.seed, update_idx])  # episode seeds, all below EVAL_SEED0
    envs = make_envs(cfg.env, cfg.num_envs)
    spec = ENVS[cfg.env]
    ckpt_path = os.path.join(cfg.out, "policy.pt")
    metrics_file, writer = open_metrics(os.path.join(cfg.out, "metrics.csv"), append=ckpt is not None)
    tb = open_tensorboard(tb_dir)
    start, next_eval, train_seconds = time.time(), cfg.eval_every, None
    bar = tqdm(total=cfg.total_steps, initial=min(env_steps, cfg.total_steps), desc=f"{cfg.env} {cfg.algo}",
               unit="step", dynamic_ncols=True)
    try:
        while env_steps < cfg.total_steps:
            if cfg.anneal_lr:  # lr * (1 - progress): from the step count, so a resumed run continues the line
                for opt, lr in ((actor_opt, cfg.lr), (critic_opt, cfg.critic_lr)):
                    opt.param_groups[0]["lr"] = lr * (1 - env_steps / cfg.total_steps)
            if cfg.algo == "grpo":  # group_size episodes per seed, consecutive
                groups = seed_rng.integers(0, EVAL_SEED0, cfg.episodes // cfg.group_size)
                seeds = np.repeat(groups, cfg.group_size)
            else:
                seeds = seed_rng.integers(0, EVAL_SEED0, cfg.episodes)
            steps, ep = rollout(envs, agent, seeds)
            outcome = spec["outcome"](ep).astype(np.float64)
            if not np.all(np.isfinite(outcome)) or outcome.min() < 0 or outcome.max() > 1:
                # a broken outcome function: keep what was learnt, then stop
                save_checkpoint(ckpt_path, cfg, agent, actor_opt, critic_opt, env_steps, update_idx)
                fail(f"outcome outside [0, 1] or NaN in {cfg.env}: {outcome}; saved {ckpt_path}")
            stats = update(cfg, agent, actor_opt, critic_opt, steps, outcome, first=update_idx == 0)
            new_steps = int(ep["length"].sum())
            env_steps += new_steps
            update_idx += 1
            row = dict(update=update_idx, env_steps=env_steps, wall_seconds=round(time.time() - start, 3),
                       mean_outcome=float(outcome.mean()), success_rate=float(np.mean(spec["success"](ep))),
                       mean_return=float(ep["ret"].mean()), critic_loss=stats["critic_loss"],
                       clip_frac=stats["clip_frac"], dual_clip_frac=stats["dual_clip_frac"],
                       approx_kl=stats["approx_kl"], entropy=stats["entropy"])
            if cfg.eval_every and env_steps >= next_eval:
                result = evaluate(cfg, agent, cfg.eval_episodes)
                row.update(eval_success_rate=result["success_rate"], eval_mean_return=result["mean_return"])
                next_eval += cfg.eval_every
            writer.writerow(row)
            metrics_file.flush()
            log_scalars(tb, {k: v for k, v in row.items() if k != "env_steps"}, env_steps)
            bar.update(min(new_steps, cfg.total_steps - bar.n))
            bar.set_postfix(outcome=f"{row['mean_outcome']:.3f}", success=f"{row['success_rate']:.2f}")
        bar.close()
        train_seconds = time.time() - start
        save_checkpoint(ckpt_path, cfg, agent, actor_opt, critic_opt, env_steps, update_idx)
        result = evaluate(cfg, agent, cfg.eval_episodes)
        log_scalars(tb, {f"final_{k}": v for k, v in result.items()}, env_steps)
    except KeyboardInterrupt:  # keep what was learnt, and say how to go on
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the saving short
        bar.close()
        save_checkpoint(ckpt_path, cfg, agent, actor_opt, critic_opt, env_steps, update_idx)
        wall_seconds = time.time() - start
        write_summary(cfg, env_steps, update_idx, wall_seconds, train_seconds or wall_seconds, None)
        print(f"interrupted: saved {ckpt_path} and summary.json at {env_steps} env steps; "
              f"continue with --resume {cfg.out}", file=sys.stderr)
        sys.exit(130)
    finally:
        bar.close()
        metrics_file.close()
        envs.close()
        if tb is not None:
            tb.close()
    return write_summary(cfg, env_steps, update_idx, time.time() - start, train_seconds, result)


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------
def evaluate_saved(run_dir, given, extra):
    """--eval: the saved policy on the evaluation seeds, printed as JSON. Writes nothing."""
    if extra["overwrite"] or extra["tensorboard"]:
        fail("--eval writes nothing: --overwrite and --tensorboard are for training")
    saved, agent, *_ = load_checkpoint(run_dir)
    free = ("eval_episodes", "num_envs", "threads")
    refuse_contradictions(given, saved, run_dir, [n for n in given if n not in free],
                          "--eval takes only --eval-episodes, --num-envs, --threads")
    cfg = make_config({**asdict(saved), **given})
    torch.set_num_threads(cfg.threads)
    result = evaluate(cfg, agent, cfg.eval_episodes)
    print(json.dumps(dict(env=cfg.env, algo=cfg.algo, seed=cfg.seed, eval_episodes=cfg.eval_episodes,
                          task_measure=measure_key(cfg.env), **result)))
    return result


def main(argv=None):
    given, extra = parse_args(argv)
    if extra["eval"]:
        return evaluate_saved(extra["eval"], given, extra)
    ckpt = None
    if extra["resume"]:  # the saved config; flags given (such as a larger --total-steps) override it
        saved, *_, ckpt = load_checkpoint(extra["resume"])
        refuse_contradictions(given, saved, extra["resume"], ("env", "algo", "hidden"),
                              "a resumed run keeps its env, algo and hidden")
        given = {**asdict(saved), **given, "out": given.get("out") or extra["resume"]}
    cfg = make_config(given)
    check_run_folders(cfg, extra)
    try:
        start_run_folder(cfg.out, extra["resume"])
    except OSError as e:
        fail(f"cannot write to --out {cfg.out}: {e}")
    where = f"writing {cfg.out} ({', '.join(RUN_FILES)})"
    where += f", resuming {extra['resume']} at {ckpt['env_steps']} env steps" if ckpt else ""
    where += f", TensorBoard events in {extra['tensorboard']}" if extra["tensorboard"] else ""
    print(where, file=sys.stderr)
    summary = train(cfg, ckpt, extra["tensorboard"])
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # before training started, or during --eval: nothing to save
        print("control.py: interrupted", file=sys.stderr)
        sys.exit(130)
