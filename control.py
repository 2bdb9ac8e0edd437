"""SPPO on classic control in RLVR mode: outcome-only reward, one scalar critic on the first observation.

    python control.py --env CartPole-v1 --algo sppo --seed 1    # trains into runs/CartPole-v1_sppo_1
    python control.py --eval DIR                               # re-evaluates the policy saved in DIR
    python control.py --resume DIR [--total-steps N]           # continues the run in DIR

The "prompt" is the first observation after env.reset(seed=s), the "action sequence" every action until the
episode ends; the learner sees ONE outcome R in [0, 1] of the finished episode. sppo: A = R - sigmoid(V(s_0))
on every step, critic BCE(V(s_0), R); ppo: critic V(s_t), R on the last step, GAE; grpo: group_size episodes
per seed, A = (R - group mean) / group std. All use sppo.py's PPO clipped loss. The file, top to bottom:
  Config, Batch, State   every flag; what rollout returns and update reads; what a checkpoint holds
  the method             train (the loop), rollout, score, advantages (sppo | grpo | ppo), update, evaluate
  models and envs        Agent (actor, critic, observation norm, sample), make_envs, start_episodes, step_busy
  speed                  numpy_sampler: Agent.sample in numpy, tested equal
  the tasks              ENVS: each env's outcome R, success criterion and default settings
  plumbing               flags and validation, run folder, checkpoints, metrics.jsonl, signals, main
"""
import argparse
import contextlib
import dataclasses
import fcntl
import glob
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from torch.distributions import Categorical, Independent, Normal
from tqdm import tqdm

import sppo


def arg(default, help):
    """A Config field with its --help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class Config:
    env: str = arg("CartPole-v1", "gymnasium id; ENVS holds the defaults of each env")
    algo: str = arg("sppo", "sppo | ppo | grpo")
    seed: int = arg(1, "seeds torch, the episode seeds and hence the whole run")
    total_steps: int = arg(1_000_000, "env-step budget (steps of real episodes, summed)")
    num_envs: int = arg(16, "sub-envs stepped side by side")
    episodes: int = arg(32, "episodes per update (the batch); grpo: rounded down to a multiple of group_size")
    group_size: int = arg(8, "grpo: episodes per seed (a group)")
    lr: float = arg(1e-3, "actor Adam learning rate")
    critic_lr: float = arg(1e-3, "critic Adam learning rate")
    update_epochs: int = arg(8, "passes over each batch of episodes")
    num_minibatches: int = arg(4, "minibatches per pass (over all valid steps of the batch)")
    clip_eps: float = arg(0.2, "PPO clip range epsilon")
    dual_clip: float = arg(3.0, "dual-clip c on negative advantages (verl's default, the authors'); 0 = off")
    gamma: float = arg(1.0, "ppo only: GAE discount; 1 = the outcome is not discounted, as in verl's PPO")
    lam: float = arg(1.0, "ppo only: GAE lambda (at 0.95 ppo learnt nothing on CartPole, Pendulum: tuning)")
    max_grad_norm: float = arg(0.5, "gradient clipping of actor and critic")
    anneal_lr: bool = arg(False, "lower both lrs linearly to 0 over total_steps (CleanRL's --anneal-lr)")
    ent_coef: float = arg(0.0, "entropy bonus (the paper uses none)")
    hidden: int = arg(64, "width of the two hidden layers of actor and critic")
    eval_episodes: int = arg(100, "final evaluation episodes, on seeds never used in training")
    eval_every: int = arg(0, "also evaluate every this many env steps (0 = only at the end)")
    threads: int = arg(1, "torch threads: small MLPs are fastest on one")
    out: str = arg("", "run folder ('' = runs/{env}_{algo}_{seed})")
    resume: str = arg("", "continue the run saved in DIR, in DIR; with --out OTHER in OTHER, DIR untouched")
    eval: str = arg("", "re-evaluate the policy saved in DIR, print the result as JSON, write nothing")
    overwrite: bool = arg(False, "replace an earlier run in --out (and its TensorBoard event files)")
    tensorboard: str = arg("", "also log the metrics to TensorBoard event files in DIR")
    save_every_seconds: float = arg(60.0, "checkpoint every this many seconds (0: at the end, on a signal)")
    dump_values: bool = arg(False, "sppo, ppo: write OUT/values.jsonl, each update's critic values")


@dataclasses.dataclass
class Batch:
    """One update's episodes (episode j in column j, padded): rollout fills it, score and advantages add."""
    obs: torch.Tensor  # [T, E, obs_dim] observation before each action; obs[0] is the prompt s_0
    actions: torch.Tensor  # [T, E] (discrete) or [T, E, act_dim] sampled actions, before clipping to the box
    logp: torch.Tensor  # [T, E] log pi_old(a_t | s_t), float32
    mask: torch.Tensor  # [T, E] 1 on real steps (each episode's come first), 0 on padding
    ret: np.ndarray  # [E] the env's return, for the report only (the learner never sees it)
    length: np.ndarray  # [E] steps of the episode
    terminated: np.ndarray  # [E] ended by the env's terminal condition, not by its time limit
    min_x: np.ndarray  # [E] least value of the first observation coordinate (MountainCar's position)
    max_x: np.ndarray  # [E] greatest value of it
    x_start: np.ndarray  # [E] body x after the reset (info "x_position": Hopper's obs lacks it; else nan)
    x_end: np.ndarray  # [E] body x after the last step (nan where the env reports none)
    outcome: np.ndarray | None = None  # [E] R in [0, 1], float64
    success: np.ndarray | None = None  # [E] the env's success criterion, bool
    adv: torch.Tensor | None = None  # [T, E] advantage of each step
    values: torch.Tensor | None = None  # the critic before its update: sppo [E] logits V(s_0), ppo [T, E]
    returns: torch.Tensor | None = None  # [T, E] ppo only: the critic's targets G_t


@dataclasses.dataclass
class State:
    """What is learnt and where the run stands; a checkpoint holds it, with torch's RNG state."""
    agent: "Agent"
    actor_opt: torch.optim.Adam
    critic_opt: torch.optim.Adam
    seed_rng: np.random.Generator  # draws the episode seeds
    env_steps: int = 0
    step: int = 0  # updates done
    lr_from: tuple = (0, 1.0)  # anneal_lr: (env steps, lr fraction) where its line starts; a resume moves it


# ---- the method: training loop and step functions ----
def train(cfg, s, run):
    """The loop: rollout, score, update, until total_steps env steps or a signal; log_step is plumbing."""
    envs, per_seed = make_envs(cfg.env, cfg.num_envs), cfg.group_size if cfg.algo == "grpo" else 1
    while s.env_steps < cfg.total_steps and run.signal is None:
        steps0, frac0 = s.lr_from  # anneal_lr: lr * (1 - progress), from s.lr_from on (a resume may move it)
        frac = frac0 * (1 - (s.env_steps - steps0) / (cfg.total_steps - steps0)) if cfg.anneal_lr else 1.0
        for opt, lr in ((s.actor_opt, cfg.lr), (s.critic_opt, cfg.critic_lr)):
            opt.param_groups[0]["lr"] = lr * frac
        seeds = np.repeat(s.seed_rng.integers(0, EVAL_SEED0, cfg.episodes // per_seed), per_seed)  # groups
        batch = rollout(envs, s.agent, seeds)
        score(cfg.env, batch)
        stats = update(cfg, s, batch)
        s.env_steps += int(batch.length.sum())
        s.step += 1
        row = dict(step=s.step, env_steps=s.env_steps, reward_mean=float(batch.outcome.mean()),
                   success_rate=float(np.mean(batch.success)), mean_return=float(batch.ret.mean()),
                   lr=cfg.lr * frac, **stats)
        log_step(run, s, batch, row)
    envs.close()


def rollout(envs, agent, seeds):
    """One episode per seed, envs.num_envs at a time, a sub-env that ends taking the next seed at once, until
    all have ended (long episodes are not under-sampled). It loops once per env step, so all in numpy."""
    n, n_env, max_t = len(seeds), envs.num_envs, envs.spec.max_episode_steps
    space = envs.single_action_space
    ep = dict(ret=np.zeros(n), length=np.zeros(n, dtype=np.int64), min_x=np.zeros(n), max_x=np.zeros(n),
              terminated=np.zeros(n, dtype=bool), x_start=np.full(n, np.nan), x_end=np.full(n, np.nan))
    buf = dict(obs=np.zeros((max_t, n, envs.single_observation_space.shape[0]), np.float32),
               actions=np.zeros((max_t, n, *space.shape), space.dtype), logp=np.zeros((max_t, n), np.float32))
    act = agent.sampler(np.random.default_rng(int(torch.randint(2**62, ()))))  # torch's seed fixes it
    slot, done, obs, next_ep = np.full(n_env, -1), np.ones(n_env, bool), None, 0  # slot: -1 for no episode
    while True:
        restart = np.flatnonzero(done)[:n - next_ep]  # free sub-envs take the next seeds
        if len(restart):
            which, j = np.isin(np.arange(n_env), restart), np.arange(next_ep, next_ep + len(restart))
            obs, x = start_episodes(envs, which, seeds[next_ep:next_ep + len(restart)], obs)
            slot[restart], next_ep = j, next_ep + len(restart)
            ep["min_x"][j] = ep["max_x"][j] = obs[which, 0]
            ep["x_start"][j] = ep["x_end"][j] = x[which]
        on = slot >= 0
        if not on.any():
            break
        j, t = slot[on], ep["length"][slot[on]]  # episode and step index of each busy sub-env
        action, logp = act(obs)  # idle rows too: the RNG draws, and so the episodes, do not depend on them
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
        slot[done] = -1
    length = int(ep["length"].max())
    buf["mask"] = (np.arange(length)[:, None] < ep["length"]).astype(np.float32)  # real steps come first
    return Batch(**{k: torch.from_numpy(v[:length]) for k, v in buf.items()}, **ep)


def score(env_id, batch):
    """The outcome R in [0, 1] and the success of each episode, from the finished episode alone (ENVS)."""
    outcome = ENVS[env_id]["outcome"](batch).astype(np.float64)
    bad = outcome[~((outcome >= 0) & (outcome <= 1))]  # NaN fails both comparisons
    if len(bad):
        raise ValueError(f"{len(bad)} outcomes outside [0, 1] or NaN in {env_id}, e.g. {bad[0]}")
    batch.outcome, batch.success = outcome, ENVS[env_id]["success"](batch)


def advantages(cfg, agent, batch, rewards):
    """batch.adv [T, E] (ppo: and .returns), the critic as before its update: where sppo, grpo, ppo differ."""
    if cfg.algo == "sppo":  # A = R - sigmoid(V(s_0)) from the critic BEFORE its update, on every step
        with torch.no_grad():
            batch.values = agent.value(batch.obs[0])  # [E]
        batch.adv = sppo.sequence_advantages(rewards, batch.values).expand_as(batch.mask)
    elif cfg.algo == "grpo":  # A = (R - group mean) / (group std + eps) on every step, no critic
        batch.adv = sppo.grpo_advantages(rewards, cfg.group_size).expand_as(batch.mask)
    else:  # ppo: V(s_t), R on the last step, GAE: A_t = delta_t + gamma lam A_{t+1}; whitened (CleanRL, verl)
        with torch.no_grad():
            batch.values = agent.value(batch.obs) * batch.mask  # [T, E]
        adv, returns = sppo.gae_advantages(rewards, batch.values.T, batch.mask.T, cfg.gamma, cfg.lam)  # [E,T]
        batch.adv, batch.returns = sppo.whiten(adv, batch.mask.T).T, returns.T


def update(cfg, s, batch):
    """One update, in the authors' order: advantages from the critic as it is, the critic, then the actor."""
    agent = s.agent
    rewards = torch.as_tensor(batch.outcome, dtype=torch.float32)  # [E]
    if cfg.algo == "sppo" and s.step == 0:  # start the critic at the first batch's success rate, else
        agent.critic[-1].bias.data.fill_(sppo.success_logit(rewards))  # every first A is R - 0.5
    advantages(cfg, agent, batch, rewards)
    stats = {"critic_loss": None}
    if cfg.algo == "sppo":  # L_critic = BCEWithLogits(V(s_0), R), one full-batch step per epoch
        for _ in range(cfg.update_epochs):
            loss = sppo.critic_loss(agent.value(batch.obs[0]), rewards)
            opt_step(s.critic_opt, loss, cfg.max_grad_norm)
        stats["critic_loss"] = loss.item()
    valid = batch.mask.bool().flatten()
    obs, actions, old_logp, adv, returns = (None if v is None else v.flatten(0, 1)[valid] for v in
                                            (batch.obs, batch.actions, batch.logp, batch.adv, batch.returns))
    n, ones = valid.sum().item(), torch.ones(1)
    for _ in range(cfg.update_epochs):
        for idx in sppo.minibatches(n, cfg.num_minibatches):
            dist = agent.dist(obs[idx])
            logp = dist.log_prob(actions[idx])
            # L = -token_mean(min(r A, clip(r, 1 - eps, 1 + eps) A)), r = exp(logp - old_logp); >= c A, A < 0
            loss, pstats = sppo.policy_loss(logp, old_logp[idx], adv[idx], ones.expand_as(logp), cfg.clip_eps,
                                            cfg.dual_clip or None)
            if cfg.ent_coef:  # the bonus needs the entropy's gradient; else it is only reported (below)
                loss = loss - cfg.ent_coef * dist.entropy().mean()
            opt_step(s.actor_opt, loss, cfg.max_grad_norm)
            if cfg.algo == "ppo":  # L_V = 0.5 (V(s_t) - G_t)^2, a step per minibatch
                vloss = sppo.value_loss(agent.value(obs[idx]), returns[idx], ones.expand_as(logp))
                opt_step(s.critic_opt, vloss, cfg.max_grad_norm)
                stats["critic_loss"] = vloss.item()
    with torch.no_grad():
        stats.update(pstats, entropy=dist.entropy().mean().item())  # of the last minibatch
    agent.update_obs_stats(obs)  # after the update, so one update sees one normalisation
    return stats


def opt_step(opt, loss, max_norm):
    """One Adam step on loss, with the gradient norm of the optimiser's parameters clipped."""
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], max_norm)
    opt.step()


def evaluate(cfg, agent, episodes):
    """The sampling policy (on Hopper its mean action fell far more often) on seeds EVAL_SEED0, +1, ..."""
    envs = make_envs(cfg.env, min(episodes, cfg.num_envs))
    with torch.random.fork_rng():  # the same actions on every call, and training's RNG untouched
        torch.manual_seed(EVAL_SEED0)
        b = rollout(envs, agent, np.arange(EVAL_SEED0, EVAL_SEED0 + episodes))
    envs.close()
    spec = ENVS[cfg.env]
    means = spec["success"](b), spec["outcome"](b), b.ret, b.length, spec["measure"][1](b)
    return {k: float(np.mean(v)) for k, v in zip((*EVAL_KEYS, measure_key(cfg.env)), means)}


# ---- models and envs ----
def mlp(n_in, n_out, hidden, out_std):
    """Two tanh hidden layers, orthogonal init (as CleanRL's PPO)."""
    layers = [nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
              nn.Linear(hidden, n_out)]
    for layer, std in zip(layers[::2], (2**0.5, 2**0.5, out_std)):
        nn.init.orthogonal_(layer.weight, std)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Agent(nn.Module):
    """Actor (categorical or diagonal Gaussian) and critic (sppo: V(s_0), a logit; ppo: V(s_t)) behind a
    running observation norm (else MountainCar's velocity, ~0.01, is lost next to its position, ~0.5)."""

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
    def update_obs_stats(self, obs):  # parallel mean and variance (Chan et al.): gymnasium's RunningMeanStd
        n, mean, var = obs.shape[0], obs.mean(0), obs.var(0, unbiased=False)
        delta, total = mean - self.obs_mean, self.obs_count + n
        m2 = self.obs_var * self.obs_count + var * n + delta**2 * self.obs_count * n / total
        self.obs_mean += delta * n / total
        self.obs_var.copy_(m2 / total)
        self.obs_count.fill_(total)

    def dist(self, obs):  # validate_args=False: the checks cost more than the small MLP
        out = self.actor(self.normalise(obs))
        if self.continuous:  # Independent: log_prob and entropy sum over the action's coordinates
            return Independent(Normal(out, self.log_std.exp(), validate_args=False), 1, validate_args=False)
        return Categorical(logits=out, validate_args=False)

    @torch.no_grad()
    def sample(self, obs, noise):
        """The policy's sampling (the definition): actions from dist(obs) driven by noise, uniform [n, 1] for
        the categorical (inverse CDF), standard normal [n, act_dim] for the Gaussian; and their log-probs."""
        dist = self.dist(obs)
        if self.continuous:
            action = dist.mean + dist.stddev * noise
        else:
            action = (dist.probs.cumsum(-1) <= noise).sum(-1).clamp(max=dist.probs.shape[-1] - 1)
        return action, dist.log_prob(action)

    def sampler(self, rng):  # what rollout calls: sample's numbers in numpy (speed section)
        return numpy_sampler(self, rng)

    def value(self, obs):
        return self.critic(self.normalise(obs)).squeeze(-1)


def build(cfg):
    """A fresh Agent for cfg.env and its two Adam optimisers (the actor's holds log_std too)."""
    probe = make_envs(cfg.env, 1)
    agent = Agent(probe.single_observation_space.shape[0], probe.single_action_space, cfg.hidden)
    probe.close()
    actor_params = [*agent.actor.parameters()] + ([agent.log_std] if agent.continuous else [])
    actor_opt = torch.optim.Adam(actor_params, lr=cfg.lr, eps=1e-5)
    return agent, actor_opt, torch.optim.Adam(agent.critic.parameters(), lr=cfg.critic_lr, eps=1e-5)


def make_envs(env_id, n):
    """n copies side by side. CartPole uses gymnasium's numpy-batched CartPoleVectorEnv (~20x faster)."""
    mode = "vector_entry_point" if env_id == "CartPole-v1" else "sync"
    return gym.make_vec(env_id, num_envs=n, vectorization_mode=mode)


CARTPOLE = gym.make("CartPole-v1").unwrapped  # computes the seeded start states of the batched CartPole


def start_episodes(envs, which, seeds, obs=None):
    """(Re)start the sub-envs where `which` is True, the k-th from env.reset(seed=seeds[k]) (the prompt).
    Returns all observations (obs with those rows replaced) and the restarted ones' body x (else nan)."""
    n = envs.num_envs
    x = np.full(n, np.nan)
    if isinstance(envs.unwrapped, CartPoleVectorEnv):
        # The batched CartPole resets from one shared RNG and has no partial reset: write into each chosen
        # sub-env the start state that CartPole-v1.reset(seed=s) gives, and zero its step count.
        cp = envs.unwrapped
        if cp.state is None:
            envs.reset()
        start = np.stack([CARTPOLE.reset(seed=int(s))[0] for s in seeds])
        cp.state[:, which], cp.steps[which], cp.prev_done[which] = start.T, 0, False
        return cp.state.T.astype(np.float32), x
    space = envs.single_observation_space  # the others: each sub-env of the sync vector env reset on its own
    obs = np.zeros((n, *space.shape), space.dtype) if obs is None else obs.copy()
    for i, s in zip(np.flatnonzero(which), seeds):
        obs[i], info = envs.envs[i].reset(seed=int(s))
        x[i] = info.get("x_position", np.nan)
    return obs, x


def step_busy(envs, action, on, obs):
    """Step only the sub-envs where `on` is True (gymnasium steps all, and near a batch's end most are idle);
    the batched CartPole steps all at the cost of one (start_episodes undoes its autoreset)."""
    if isinstance(envs.unwrapped, CartPoleVectorEnv):
        return *envs.step(action)[:4], None
    n, obs = envs.num_envs, obs.copy()
    reward, terminated, truncated, x = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), np.full(n, np.nan)
    for i in np.flatnonzero(on):
        obs[i], reward[i], terminated[i], truncated[i], info = envs.envs[i].step(action[i])
        x[i] = info.get("x_position", np.nan)
    return obs, reward, terminated, truncated, x


# ---- speed: faster equivalents, each tested equal ----
@torch.no_grad()
def numpy_sampler(agent, rng):
    """Agent.sample in numpy with the noise drawn from rng: obs [n, obs_dim] -> (actions, float32 log-probs).
    On a few dozen rows numpy runs the small MLP several times faster than torch (fixed cost per op)."""
    (w1, b1), (w2, b2), (w3, b3) = [(lin.weight.numpy().T, lin.bias.numpy()) for lin in agent.actor[::2]]
    mean, std = agent.obs_mean.numpy(), torch.sqrt(agent.obs_var + 1e-8).numpy()
    log_std = agent.log_std.numpy() if agent.continuous else None

    def act(obs):
        x = np.clip((obs.astype(np.float32) - mean) / std, -10, 10)
        out = np.tanh(np.tanh(x @ w1 + b1) @ w2 + b2) @ w3 + b3
        if agent.continuous:  # Normal(out, exp(log_std)): a = out + std * noise
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


# ---- the tasks: outcome reward and success of each env ----
def forward_distance(b):
    """Hopper: metres the torso moved forward, its final x minus its x after the reset."""
    return b.x_end - b.x_start


# Per env: outcome(batch) -> [0, 1] and success(batch) -> bool, from the finished episodes alone; measure:
# (name, fn), the task in its own units ("mean_{name}" in evaluate()); degenerate: why a constant, random or
# idle policy cannot succeed (tested); config, algo_config: defaults per env and per algorithm (algo_config:
# the winners of bench/control_tune.py, each one change from config; bench/results/control_tune.md).
ENVS = {
    "CartPole-v1": dict(  # graded by the steps balanced
        outcome=lambda b: b.length / 500.0, success=lambda b: b.length >= 500,
        measure=("length", lambda b: b.length),
        degenerate="the pole falls within ~10 steps under a constant push, ~20 under random pushes",
        # for speed (bench/control_speed.py): 256 episodes a batch, 32 units, 2 epochs; the lr annealed
        config=dict(total_steps=1_000_000, num_envs=256, episodes=256, hidden=32, update_epochs=2,
                    anneal_lr=True), algo_config=dict(sppo=dict(episodes=512), ppo=dict(lr=3e-3))),
    "MountainCar-v0": dict(  # graded by the highest point reached (height ~ sin 3x), the flag gives 1
        outcome=lambda b: np.where(b.terminated, 1.0,
                                   (np.maximum(np.sin(3 * b.min_x), np.sin(3 * b.max_x)) + 1) / 2),
        success=lambda b: b.terminated, measure=("max_position", lambda b: b.max_x),  # the flag is at 0.5
        degenerate="the engine is too weak to climb directly: it needs swings timed to the velocity",
        config=dict(total_steps=1_000_000, num_envs=64, episodes=64, update_epochs=4), algo_config={}),
    "LunarLander-v3": dict(  # graded: normalised return, 300 and above gives 1
        outcome=lambda b: np.clip((b.ret + 200.0) / 500.0, 0.0, 1.0), success=lambda b: b.ret >= 200,
        measure=("return", lambda b: b.ret),  # the env's reward is the task: land softly on the pad
        degenerate="200 needs a soft landing on the pad with little fuel: idle or random engines crash",
        config=dict(total_steps=2_000_000),
        algo_config=dict(sppo=dict(critic_lr=3e-3), grpo=dict(lr=0.000333333), ppo=dict(update_epochs=16))),
    "Pendulum-v1": dict(  # graded: normalised return, 0 is the best possible; success: swung up and held
        outcome=lambda b: np.clip(1.0 + b.ret / 1500.0, 0.0, 1.0),
        success=lambda b: (np.asarray(b.obs[100:, :, 0]) >= np.cos(0.5)).all(0),  # obs[0] = cos(angle)
        measure=("return", lambda b: b.ret),  # the env's cost is the task: upright, still, little torque
        degenerate="upright (0.5 rad) for the whole second half: the torque is too weak to lift it directly "
                   "and upright is unstable, so it keeps hanging or swinging",
        # success by angle: return >= -200 fails a near-optimal controller on 28% of starts; 32 units: faster
        config=dict(total_steps=2_000_000, num_envs=64, episodes=64, hidden=32),
        algo_config=dict(grpo=dict(group_size=16), ppo=dict(episodes=128))),
    "Hopper-v5": dict(  # graded by the forward distance (the return pays +1 a step for standing)
        outcome=lambda b: np.clip(forward_distance(b) / 10.0, 0.0, 1.0),
        success=lambda b: forward_distance(b) >= 5.0, measure=("forward_distance", forward_distance),  # m
        degenerate="5 m forward in 1000 steps: standing still, falling or random torques move it 1 m at most",
        config=dict(total_steps=1_000_000, lr=3e-4),
        algo_config=dict(sppo=dict(critic_lr=3e-3), grpo=dict(group_size=16))),
}
EVAL_SEED0 = 10**9  # training seeds are drawn below this, evaluation seeds start here
ALGOS = ("sppo", "ppo", "grpo")


def measure_key(env_id):
    """The key of the env's task measure in evaluate()'s result, e.g. mean_forward_distance for Hopper."""
    return "mean_" + ENVS[env_id]["measure"][0]


# ======== plumbing: nothing below this line changes what is learnt ========
RUN_FILES = ("config.json", "policy.pt", "metrics.jsonl", "summary.json")  # what a run writes into --out
LOGS = ("metrics.jsonl", "values.jsonl")  # one row per update; a resume keeps those up to its checkpoint
EVAL_KEYS = ("success_rate", "mean_outcome", "mean_return", "mean_length")  # evaluate(), + the task measure
CHECKPOINT_KEYS = ("config", "agent", "actor_opt", "critic_opt", "env_steps", "update")
PLUMBING = ("out", "resume", "eval", "overwrite", "tensorboard")  # never carried over from a saved run
FIXED = ("env", "algo", "hidden", "seed")  # a resumed run keeps these: they fix the model and the episodes
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def fail(msg):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"control.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def flag(name):
    return "--" + name.replace("_", "-")


def parse_args(argv=None):
    """The flags given, as a dict of Config fields: only those given (SUPPRESS), so that defaults layer."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=(
        "Defaults, each layer over the one before: Config's; ENVS[env]['config'] per env; "
        "ENVS[env]['algo_config'][algo] per env and algorithm (the tuning's winners); on --resume the saved "
        "run's settings; then the flags given."))
    p.error = fail  # one line, exit 2, for argparse's own errors too
    layers = [(env, spec["config"]) for env, spec in ENVS.items()]
    layers += [(f"{env} {algo}", c) for env, spec in ENVS.items() for algo, c in spec["algo_config"].items()]
    for f in dataclasses.fields(Config):
        defaults = [repr(f.default)] + [f"{c[f.name]!r} for {where}" for where, c in layers
                                        if c.get(f.name, f.default) != f.default]
        kind = (dict(action=argparse.BooleanOptionalAction) if f.type is bool else
                dict(type=f.type, metavar="DIR" if f.name in PLUMBING else None))  # out, resume, eval, tb
        p.add_argument(flag(f.name), default=argparse.SUPPRESS, **kind,
                       choices={"env": ENVS, "algo": ALGOS}.get(f.name),
                       help=f"{f.metadata['help']} (default: {', '.join(defaults)})".replace("%", "%%"))
    return vars(p.parse_args(argv))


POSITIVE = ("total_steps", "num_envs", "episodes", "group_size", "lr", "critic_lr", "update_epochs",
            "num_minibatches", "max_grad_norm", "hidden", "eval_episodes", "threads")
RULES = {  # what each setting must be beyond its type (and, for a float, being finite)
    **dict.fromkeys(POSITIVE, (lambda v: v > 0, "positive")),
    **dict.fromkeys(("ent_coef", "eval_every", "save_every_seconds"), (lambda v: v >= 0, ">= 0")),
    **dict.fromkeys(("gamma", "lam"), (lambda v: 0 <= v <= 1, "in [0, 1]")),
    "env": (lambda v: v in ENVS, f"one of {', '.join(ENVS)}"),
    "algo": (lambda v: v in ALGOS, f"one of {', '.join(ALGOS)}"),
    "seed": (lambda v: 0 <= v < 2**64, "in [0, 2**64)"),  # torch.manual_seed takes no more
    "clip_eps": (lambda v: 0 < v < 1, "in (0, 1)"),
    "dual_clip": (lambda v: v == 0 or v > 1, "0 (off) or > 1"),
}


def batch_episodes(cfg):
    """Episodes per update: grpo takes whole groups of group_size episodes."""
    g = cfg.group_size
    return max(g, cfg.episodes // g * g) if cfg.algo == "grpo" else cfg.episodes


def config_error(cfg):
    """The first impossible setting of cfg, as a message for the user; None if there is none."""
    for f in dataclasses.fields(Config):
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
    if cfg.dump_values and cfg.algo == "grpo":
        return "--dump-values needs a critic: --algo sppo or ppo"
    return "--eval and --resume exclude each other" if cfg.eval and cfg.resume else None


def make_config(given):
    """Config's defaults, the env's, the env and algorithm's, the flags given; impossible ones refused."""
    spec = ENVS.get(given.get("env", Config.env), dict(config={}, algo_config={}))
    cfg = Config(**{**spec["config"], **spec["algo_config"].get(given.get("algo", Config.algo), {}), **given})
    if config_error(cfg):
        fail(config_error(cfg))
    cfg.episodes = batch_episodes(cfg)
    cfg.out = cfg.out or os.path.join("runs", f"{cfg.env}_{cfg.algo}_{cfg.seed}")
    return cfg


def saved_config(given, run_dir, free, why):
    """(Config, checkpoint, changes) of run_dir under the flags given; refused: a changed flag not in free."""
    saved, ckpt = load_checkpoint(run_dir)
    for name in given:
        if name not in free and name not in PLUMBING and given[name] != getattr(saved, name):
            fail(f"{flag(name)} {given[name]} contradicts the run in {run_dir} "
                 f"({name} {getattr(saved, name)}); {why}")
    kept = {k: v for k, v in dataclasses.asdict(saved).items() if k not in PLUMBING}
    changes = [f"resume: {flag(k)} {kept[k]} -> {v}" for k, v in given.items() if k in kept and v != kept[k]]
    return make_config({**kept, **given, "out": given.get("out") or run_dir}), ckpt, changes


def check_run_folders(cfg):
    """Writable folders, and no earlier run in --out unless resumed in place or --overwrite says so."""
    for name, path in (("--out", cfg.out), ("--tensorboard", cfg.tensorboard)):
        parent = os.path.abspath(path) if path else None  # the nearest existing folder: where it would go
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.path.isdir(parent):
            fail(f"cannot write to {name} {path}: {parent} is a file")
        if parent and not os.access(parent, os.W_OK | os.X_OK):
            fail(f"cannot write to {name} {path}: {parent} is not writable")
    held = [name for name in RUN_FILES if os.path.exists(os.path.join(cfg.out, name))]
    if held and not in_place(cfg) and not cfg.overwrite:
        fail(f"--out {cfg.out} holds an earlier run ({', '.join(held)}): "
             f"continue it with --resume {cfg.out}, or replace it with --overwrite")
    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports the tensorboard package)
        except ImportError:
            fail("--tensorboard needs the tensorboard package: pip install tensorboard")


def in_place(cfg):
    return bool(cfg.resume) and os.path.realpath(cfg.resume) == os.path.realpath(cfg.out)


def start_run_folder(cfg, step):
    """Fill --out (locked made it). A new run or a branch replaces an earlier run there (and the TensorBoard
    events its config.json names); a resume or branch keeps the rows up to its checkpoint."""
    if not in_place(cfg):
        old = (read_jsonl(os.path.join(cfg.out, "config.json")) or [{}])[0].get("tensorboard")
        events = glob.glob(os.path.join(glob.escape(old), "events.out.tfevents.*")) if old else []
        for path in events + [os.path.join(cfg.out, name) for name in RUN_FILES + LOGS]:
            if os.path.exists(path):
                os.remove(path)
    for name in LOGS[:1 + cfg.dump_values]:
        rows = read_jsonl(os.path.join(cfg.resume, name)) if step else []
        rows = [r for r in rows if r["step"] <= step]  # a crash may have left later ones
        write_atomic(os.path.join(cfg.out, name), "".join(json.dumps(r) + "\n" for r in rows))
    write_atomic(os.path.join(cfg.out, "config.json"), json.dumps(dataclasses.asdict(cfg)) + "\n")


@contextlib.contextmanager
def locked(out):
    """OUT/.lock held (flock, dropped when the process ends) while this run writes there: a second run on
    it is refused, not mixed in. A folder made here for a run that then fails on bad input is removed."""
    made = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        f = open(os.path.join(out, ".lock"), "a")
    except OSError as e:
        fail(f"cannot write to --out {out}: {e.strerror or e}")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fail(f"--out {out} is in use by another run that is still going ({out}/.lock is held)")
        yield
    finally:
        f.close()
        if made and os.listdir(out) == [".lock"]:
            shutil.rmtree(out, ignore_errors=True)


def read_jsonl(path):
    """The rows of a JSON-lines file up to the first that does not parse (half written by a killed run)."""
    rows = []
    for line in open(path) if os.path.exists(path) else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def load_checkpoint(run_dir):
    """(Config, checkpoint) of the run in run_dir; any other file: one line, exit 2, not torch's pages."""
    path = os.path.join(run_dir, "policy.pt")
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings(action="ignore"):  # torch warns on stderr about some pickle protocols
            ckpt = torch.load(path, weights_only=True)
        missing = [k for k in CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else CHECKPOINT_KEYS
        if missing:
            raise ValueError(f"no {', '.join(missing)} in it")
        cfg = Config(**ckpt["config"])
        if config_error(cfg):
            raise ValueError(f"its config: {config_error(cfg)}")
        with torch.random.fork_rng():
            load_state(cfg, ckpt)  # the weights fit the model
        return cfg, ckpt
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on a bad file
        reason = str(e).strip().split("\n")[0].split(". ")[0][:120] or type(e).__name__  # first sentence
        fail(f"not a checkpoint written by control.py: {path} ({reason})")


def load_state(cfg, ckpt=None):
    """A new run's State (torch seeded, then the model built), or a checkpoint's, RNG states included; the
    lrs given apply after the optimisers' state; an annealed lr with a new budget goes on from its last."""
    torch.manual_seed(cfg.seed)
    s = State(*build(cfg), seed_rng=np.random.default_rng([cfg.seed, 0]))
    if ckpt is None:
        return s
    for name in ("agent", "actor_opt", "critic_opt"):
        getattr(s, name).load_state_dict(ckpt[name])
    s.env_steps, s.step, s.lr_from = ckpt["env_steps"], ckpt["update"], tuple(ckpt.get("lr_from", (0, 1.0)))
    if "torch_rng" in ckpt:
        torch.set_rng_state(ckpt["torch_rng"])
        s.seed_rng.bit_generator.state = ckpt["seed_rng"]
    for opt, lr in ((s.actor_opt, cfg.lr), (s.critic_opt, cfg.critic_lr)):
        opt.param_groups[0]["lr"] = lr
    if cfg.anneal_lr and cfg.total_steps != ckpt["config"]["total_steps"]:
        s.lr_from = (s.env_steps, ckpt["actor_opt"]["param_groups"][0]["lr"] / ckpt["config"]["lr"])
    return s


@dataclasses.dataclass
class Run:
    """One training session's files, clocks (of the whole run), progress bar and signal."""
    cfg: Config
    metrics: object  # metrics.jsonl, opened for appending, line-buffered: each row is on disk once written
    values: object  # values.jsonl (--dump-values) likewise, or None
    t0: float  # when the run would have started had it never stopped: wall seconds = now - t0
    train_seconds: float = 0.0  # of the whole run: evaluations and checkpoint writes excluded
    tb: object = None  # TensorBoard SummaryWriter, or None
    bar: object = None  # tqdm
    clock: float = 0.0  # end of the last step
    last_save: float = 0.0
    signal: int | None = None  # SIGINT or SIGTERM once received: the loop stops after the step
    evaluating: bool = False  # the final evaluation: a signal stops it at once (nothing to save)


def save_checkpoint(run, s):
    """policy.pt, atomically (temporary file, os.replace); a signal during it only sets run.signal."""
    path = os.path.join(run.cfg.out, "policy.pt")
    torch.save(dict(config=dataclasses.asdict(run.cfg), agent=s.agent.state_dict(), env_steps=s.env_steps,
                    actor_opt=s.actor_opt.state_dict(), critic_opt=s.critic_opt.state_dict(), update=s.step,
                    lr_from=s.lr_from, torch_rng=torch.get_rng_state(),
                    seed_rng=s.seed_rng.bit_generator.state, train_seconds=run.train_seconds,
                    wall_seconds=time.time() - run.t0), path + ".tmp")
    os.replace(path + ".tmp", path)
    run.last_save = time.time()


def log_step(run, s, batch, row):
    """After each update: an evaluation when due, metrics.jsonl, TensorBoard, the bar, a checkpoint if due."""
    cfg, now = run.cfg, time.time()
    run.train_seconds += now - run.clock
    before = s.env_steps - int(batch.length.sum())  # env steps before this update
    if cfg.eval_every and s.env_steps // cfg.eval_every > before // cfg.eval_every:  # passed k * eval_every
        result = evaluate(cfg, s.agent, cfg.eval_episodes)
        row.update(eval_success_rate=result["success_rate"], eval_mean_return=result["mean_return"])
    row.update(wall_seconds=round(now - run.t0, 3), train_seconds=round(run.train_seconds, 3))
    run.metrics.write(json.dumps(row) + "\n")
    if run.values:  # the critic's view of each episode, before its update: how well it tells success apart
        run.values.write(json.dumps(values_row(cfg, batch, s.step)) + "\n")
    log_scalars(run.tb, row, s.step)
    run.bar.update(min(s.env_steps, cfg.total_steps) - run.bar.n)
    run.bar.set_postfix(outcome=f"{row['reward_mean']:.3f}", success=f"{row['success_rate']:.2f}")
    if cfg.save_every_seconds and time.time() - run.last_save >= cfg.save_every_seconds:
        save_checkpoint(run, s)
    run.clock = time.time()


def values_row(cfg, b, step):
    """values.jsonl: sppo's sigmoid(V(s_0)) per episode; ppo's V(s_t) at t = floor(f T), f = 0, 0.1, ..."""
    row = dict(step=step, algo=cfg.algo, rewards=b.outcome.tolist(), success=np.asarray(b.success).tolist())
    if cfg.algo == "sppo":
        return {**row, "pred_success": torch.sigmoid(b.values).tolist()}
    at = (np.arange(10)[:, None] * b.length / 10).astype(int)  # [10, E] step index of each tenth
    values = b.values[at, np.arange(len(b.length))].T  # [E, 10]
    return {**row, "t_frac": [f / 10 for f in range(10)], "values": values.tolist()}


def log_scalars(tb, values, step):
    """TensorBoard, if on: the numbers of a metrics row (or of the final evaluation) at update step."""
    for name, value in values.items() if tb is not None else ():
        if isinstance(value, (int, float)) and name != "step":
            tb.add_scalar(name, value, step)


def write_summary(run, s, result):
    """summary.json, atomically. result None (a stopped run): the evaluation fields null, interrupted true."""
    cfg, train_seconds = run.cfg, run.train_seconds
    summary = dict(env=cfg.env, algo=cfg.algo, seed=cfg.seed, env_steps=s.env_steps, updates=s.step,
                   wall_seconds=round(time.time() - run.t0, 2), train_seconds=round(train_seconds, 2),
                   steps_per_second=round(s.env_steps / max(train_seconds, 1e-9), 1),
                   interrupted=result is None, eval_episodes=cfg.eval_episodes,
                   task_measure=measure_key(cfg.env),
                   **(result or dict.fromkeys((*EVAL_KEYS, measure_key(cfg.env)))),
                   config=dataclasses.asdict(cfg))
    write_atomic(os.path.join(cfg.out, "summary.json"), json.dumps(summary, indent=2))
    return summary


def run_training(cfg, s, ckpt):
    """Train, checkpointing at the start, when due and at the end; evaluate; summary.json. SIGINT / SIGTERM:
    stop after the step, save, say how to resume, exit 130 / 143."""
    ckpt = ckpt or {}
    logs = [open(os.path.join(cfg.out, n), "a", 1) if n == LOGS[0] or cfg.dump_values else None for n in LOGS]
    run = Run(cfg, *logs, t0=time.time() - ckpt.get("wall_seconds", 0.0),
              train_seconds=ckpt.get("train_seconds", 0.0))
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter  # optional package, checked in check_run_folders
        run.tb = SummaryWriter(cfg.tensorboard)

    def handler(signum, frame):  # only a flag: the loop stops after its step; at once in the final evaluation
        run.signal = run.signal or signum
        if run.evaluating:
            run.evaluating = False  # once: a second signal must not escape the except below
            raise KeyboardInterrupt
    previous = {sig: signal.signal(sig, handler) for sig in EXIT}
    try:
        save_checkpoint(run, s)  # from the start on, a crash leaves a run that --resume continues
        try:  # the bar is closed before any message below
            with tqdm(total=cfg.total_steps, initial=min(s.env_steps, cfg.total_steps), unit="step",
                      desc=f"{cfg.env} {cfg.algo}", dynamic_ncols=True) as run.bar:
                run.clock = time.time()
                train(cfg, s, run)
        except ValueError as e:  # a broken outcome function: keep what was learnt, then stop
            save_checkpoint(run, s)
            fail(f"{e}; saved {cfg.out}")
        save_checkpoint(run, s)
        result, run.evaluating = None, run.signal is None
        with contextlib.suppress(KeyboardInterrupt):  # a signal in the final evaluation: no result
            result = evaluate(cfg, s.agent, cfg.eval_episodes) if run.evaluating else None
        run.evaluating = False
        log_scalars(run.tb, {f"final_{k}": v for k, v in (result or {}).items()}, s.step)
        summary = write_summary(run, s, result)
    except OSError as e:  # a full disk, a folder gone: the files written before are whole (atomic)
        fail(f"cannot write to --out {cfg.out}: {e}; its last checkpoint is intact")
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for f in (run.metrics, run.values, run.tb):
            if f is not None:
                f.close()
    if run.signal:
        print(f"control.py: stopped by {signal.Signals(run.signal).name} at step {s.step}; saved {cfg.out}; "
              f"continue with --resume {cfg.out}", file=sys.stderr)
        sys.exit(EXIT[run.signal])
    return summary


def evaluate_saved(given):
    """--eval DIR: the saved policy on the evaluation seeds, printed as JSON. Writes nothing."""
    if any(given.get(k) for k in ("out", "overwrite", "tensorboard")):
        fail("--eval writes nothing: --out, --overwrite and --tensorboard are for training")
    cfg, ckpt, _ = saved_config(given, given["eval"], ("eval_episodes", "num_envs", "threads"),
                                "--eval takes only --eval-episodes, --num-envs, --threads")
    torch.set_num_threads(cfg.threads)
    with torch.random.fork_rng():
        result = evaluate(cfg, load_state(cfg, ckpt).agent, cfg.eval_episodes)
    print(json.dumps(dict(env=cfg.env, algo=cfg.algo, seed=cfg.seed, eval_episodes=cfg.eval_episodes,
                          task_measure=measure_key(cfg.env), **result)))
    return result


def main(argv=None):
    given = parse_args(argv)
    if given.get("eval") and not given.get("resume"):
        return evaluate_saved(given)
    ckpt, changes = None, []
    if given.get("resume"):  # the saved config under the flags given (such as a larger --total-steps)
        cfg, ckpt, changes = saved_config(given, given["resume"], set(given) - set(FIXED),
                                          f"a resumed run keeps its {', '.join(FIXED)}")
    else:
        cfg = make_config(given)
    check_run_folders(cfg)
    with locked(cfg.out):
        try:
            start_run_folder(cfg, ckpt and ckpt["update"])
        except OSError as e:
            fail(f"cannot write to --out {cfg.out}: {e}")
        where = f"writing {cfg.out} ({', '.join(RUN_FILES)})"
        where += f", resuming {cfg.resume} at step {ckpt['update']}" if ckpt else ""
        where += f", TensorBoard events in {cfg.tensorboard}" if cfg.tensorboard else ""
        print(*changes, where, sep="\n", file=sys.stderr)  # the changes applied, and where it writes
        torch.set_num_threads(cfg.threads)
        summary = run_training(cfg, load_state(cfg, ckpt), ckpt)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # before training started, or during --eval: nothing to save
        print("control.py: interrupted", file=sys.stderr)
        sys.exit(130)
