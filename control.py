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
import json
import os
import sys
import time
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
    env: str = "CartPole-v1"  # gymnasium id, one of ENVS below
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
    gamma: float = 0.99  # ppo only: discount of the GAE baseline
    lam: float = 0.95  # ppo only: GAE lambda
    max_grad_norm: float = 0.5  # gradient clipping of actor and critic
    ent_coef: float = 0.0  # entropy bonus (the paper uses none)
    hidden: int = 64  # width of the two hidden layers of actor and critic
    eval_episodes: int = 100  # final evaluation episodes, on seeds never used in training
    eval_every: int = 0  # also evaluate every this many env steps (0 = only at the end)
    threads: int = 1  # torch threads: small MLPs are fastest on one
    out: str = ""  # run folder; "" = runs/{env}_{algo}_{seed}


# Per-environment RLVR setup. outcome(ep) -> [0, 1] and success(ep) -> bool read the finished episode
# only: ep["ret"] (the env's return, never shown to the learner), ep["length"], ep["min_x"] and ep["max_x"]
# (range of the first observation coordinate, MountainCar's position) and ep["terminated"].
# "config" holds this env's defaults; a flag given on the command line overrides them.
ENVS = {
    "CartPole-v1": dict(  # graded: a random policy never balances 500 steps
        outcome=lambda ep: ep["length"] / 500.0,
        success=lambda ep: ep["length"] >= 500,
        config=dict(total_steps=1_000_000, num_envs=64, episodes=64, update_epochs=4)),
    "MountainCar-v0": dict(  # graded by the highest point reached (height ~ sin 3x), the flag gives 1
        outcome=lambda ep: np.where(ep["terminated"], 1.0,
                                    (np.maximum(np.sin(3 * ep["min_x"]), np.sin(3 * ep["max_x"])) + 1) / 2),
        success=lambda ep: ep["terminated"],
        config=dict(total_steps=1_000_000, num_envs=64, episodes=64, update_epochs=4)),
    "LunarLander-v3": dict(  # graded: normalised return, 300 and above gives 1
        outcome=lambda ep: np.clip((ep["ret"] + 200.0) / 500.0, 0.0, 1.0),
        success=lambda ep: ep["ret"] >= 200,
        config=dict(total_steps=2_000_000)),
    "Pendulum-v1": dict(  # graded: normalised return, 0 is the best possible
        outcome=lambda ep: np.clip(1.0 + ep["ret"] / 1500.0, 0.0, 1.0),
        success=lambda ep: ep["ret"] >= -200,
        config=dict(total_steps=3_000_000)),
    "Hopper-v5": dict(  # graded: normalised return, 2000 and above gives 1
        outcome=lambda ep: np.clip(ep["ret"] / 2000.0, 0.0, 1.0),
        success=lambda ep: ep["ret"] >= 1000,
        config=dict(total_steps=1_000_000, lr=3e-4)),
}
EVAL_SEED0 = 10**9  # training seeds are drawn below this, evaluation seeds start here


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

    That first observation is the episode's prompt. Returns the observations of all sub-envs.
    """
    if isinstance(envs.unwrapped, CartPoleVectorEnv):
        # The batched CartPole resets from one shared RNG and has no partial reset: write into each
        # chosen sub-env the start state that CartPole-v1.reset(seed=s) gives, and zero its step count.
        cp = envs.unwrapped
        if cp.state is None:
            envs.reset()
        start = np.stack([CARTPOLE.reset(seed=int(s))[0] for s in seeds])
        cp.state[:, which], cp.steps[which], cp.prev_done[which] = start.T, 0, False
        return cp.state.T.astype(np.float32)
    if obs is None:  # first start: every sub-env
        return envs.reset(seed=[int(s) for s in seeds])[0]
    per_env = iter(seeds)
    return envs.reset(seed=[int(next(per_env)) if w else None for w in which], options={"reset_mask": which})[0]


CARTPOLE = gym.make("CartPole-v1").unwrapped  # computes the seeded start states of the batched CartPole


def rollout(envs, agent, seeds):
    """Play one episode per seed, envs.num_envs at a time; a sub-env that ends starts the next seed.

    Returns the steps as tensors [T, n, ...] (episode j in column j, padded, mask 1 on real steps) and
    per-episode stats for the outcome. The env's per-step reward is only summed into ep["ret"] for
    reporting. A batch ends when all its episodes have ended, so long episodes are not under-sampled;
    sub-envs left without an episode near the end keep stepping, masked out and not counted.
    """
    n, n_env, max_t = len(seeds), envs.num_envs, envs.spec.max_episode_steps
    ep = dict(ret=np.zeros(n), length=np.zeros(n, dtype=np.int64), min_x=np.zeros(n), max_x=np.zeros(n),
              terminated=np.zeros(n, dtype=bool))
    buf = dict(obs=torch.zeros(max_t, n, envs.single_observation_space.shape[0]), logp=torch.zeros(max_t, n),
               mask=torch.zeros(max_t, n))
    slot = np.full(n_env, -1)  # the episode each sub-env is playing, -1 for none
    slot[:min(n, n_env)] = np.arange(min(n, n_env))
    obs = start_episodes(envs, slot >= 0, seeds[:n_env])
    ep["min_x"][slot[slot >= 0]] = ep["max_x"][slot[slot >= 0]] = obs[slot >= 0, 0]
    next_ep = min(n, n_env)
    while (slot >= 0).any():
        on = slot >= 0
        j, t = slot[on], ep["length"][slot[on]]  # episode and step index of each busy sub-env
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        with torch.no_grad():
            dist = agent.dist(obs_t)
            action = dist.sample()
            logp = agent.log_prob(dist, action)
        if "actions" not in buf:
            buf["actions"] = torch.zeros((max_t, n, *action.shape[1:]), dtype=action.dtype)
        buf["obs"][t, j], buf["actions"][t, j], buf["logp"][t, j], buf["mask"][t, j] = obs_t[on], action[on], logp[on], 1
        a = action.numpy()
        if agent.continuous:  # the Gaussian is unbounded; the env gets the action clipped to its box
            a = np.clip(a, envs.single_action_space.low, envs.single_action_space.high)
        obs, reward, terminated, truncated, _ = envs.step(a)
        ep["ret"][j] += reward[on]
        ep["length"][j] += 1
        ep["min_x"][j] = np.minimum(ep["min_x"][j], obs[on, 0])
        ep["max_x"][j] = np.maximum(ep["max_x"][j], obs[on, 0])
        ep["terminated"][j] |= terminated[on]
        done = on & (terminated | truncated)
        if done.any():
            slot[done] = -1
            restart = np.flatnonzero(done)[:n - next_ep]  # sub-envs that take the next seeds
            if len(restart):
                which = np.zeros(n_env, dtype=bool)
                which[restart] = True
                obs = start_episodes(envs, which, seeds[next_ep:next_ep + len(restart)], obs)
                slot[restart] = np.arange(next_ep, next_ep + len(restart))
                ep["min_x"][slot[restart]] = ep["max_x"][slot[restart]] = obs[restart, 0]
                next_ep += len(restart)
    length = int(ep["length"].max())
    return {k: v[:length] for k, v in buf.items()}, ep


# ---------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------
def mlp(n_in, n_out, hidden, out_std):
    """Two tanh hidden layers, orthogonal init (as CleanRL's PPO)."""
    layers = [nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_out)]
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

    def dist(self, obs):
        out = self.actor(self.normalise(obs))
        return Normal(out, self.log_std.exp()) if self.continuous else Categorical(logits=out)

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
                                            cfg.clip_eps)
            entropy = agent.entropy(dist).mean()
            step(actor_opt, loss - cfg.ent_coef * entropy, cfg.max_grad_norm)
            if cfg.algo == "ppo":
                vloss = sppo.value_loss(agent.value(flat["obs"][idx]), flat["returns"][idx], ones.expand_as(logp))
                step(critic_opt, vloss, cfg.max_grad_norm)
                stats["critic_loss"] = vloss.item()
    stats.update(pstats, entropy=entropy.item())
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
    return {"success_rate": float(np.mean(spec["success"](ep))), "mean_outcome": float(np.mean(spec["outcome"](ep))),
            "mean_return": float(np.mean(ep["ret"])), "mean_length": float(np.mean(ep["length"]))}


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


def load_checkpoint(run_dir):
    path = os.path.join(run_dir, "policy.pt")
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}")
    ckpt = torch.load(path, weights_only=True)
    cfg = Config(**ckpt["config"])
    agent, actor_opt, critic_opt = build(cfg)
    agent.load_state_dict(ckpt["agent"])
    actor_opt.load_state_dict(ckpt["actor_opt"])
    critic_opt.load_state_dict(ckpt["critic_opt"])
    return cfg, agent, actor_opt, critic_opt, ckpt


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    """Returns (given flags as a dict, the --eval / --resume folders)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.error = fail  # one line, exit 2, for argparse's own errors too
    for f in fields(Config):  # SUPPRESS: only the flags given appear, so env defaults can fill the rest
        p.add_argument("--" + f.name.replace("_", "-"), type=f.type, default=argparse.SUPPRESS)
    p.add_argument("--eval", metavar="DIR", help="re-evaluate the policy saved in DIR and exit")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (up to --total-steps)")
    given = vars(p.parse_args(argv))
    return given, {k: given.pop(k, None) for k in ("eval", "resume")}


def make_config(given):
    """Config defaults, then the env's defaults, then the flags given; refuse impossible settings."""
    env = given.get("env", Config.env)
    if env not in ENVS:
        fail(f"unknown env {env!r}; choose one of {', '.join(ENVS)}")
    cfg = Config(**{**ENVS[env]["config"], **given})
    if cfg.algo not in ("sppo", "ppo", "grpo"):
        fail(f"unknown algo {cfg.algo!r}; choose sppo, ppo or grpo")
    for name in ("total_steps", "num_envs", "episodes", "lr", "critic_lr"):
        if getattr(cfg, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.algo == "grpo":
        if cfg.group_size < 2:
            fail(f"--group-size must be at least 2 for grpo, got {cfg.group_size}")
        cfg.episodes = max(cfg.group_size, cfg.episodes // cfg.group_size * cfg.group_size)
    if cfg.update_epochs < 1 or cfg.num_minibatches < 1 or cfg.eval_episodes < 1 or cfg.threads < 1:
        fail("--update-epochs, --num-minibatches, --eval-episodes and --threads must be at least 1")
    if not (0 < cfg.clip_eps < 1 and 0 <= cfg.gamma <= 1 and 0 <= cfg.lam <= 1):
        fail("need 0 < --clip-eps < 1 and 0 <= --gamma, --lam <= 1")
    cfg.out = cfg.out or os.path.join("runs", f"{cfg.env}_{cfg.algo}_{cfg.seed}")
    try:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, ".write_test"), "w"):
            pass
        os.remove(os.path.join(cfg.out, ".write_test"))
    except OSError as e:
        fail(f"cannot write to --out {cfg.out}: {e.strerror}")
    return cfg


def train(cfg, resume=None):
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    if resume:
        _, agent, actor_opt, critic_opt, ckpt = load_checkpoint(resume)
        env_steps, update_idx = ckpt["env_steps"], ckpt["update"]
    else:
        agent, actor_opt, critic_opt = build(cfg)
        env_steps, update_idx = 0, 0
    seed_rng = np.random.default_rng([cfg.seed, update_idx])  # episode seeds, all below EVAL_SEED0
    envs = make_envs(cfg.env, cfg.num_envs)
    spec = ENVS[cfg.env]
    ckpt_path = os.path.join(cfg.out, "policy.pt")
    metrics_path = os.path.join(cfg.out, "metrics.csv")
    columns = ["update", "env_steps", "wall_seconds", "mean_outcome", "success_rate", "mean_return", "critic_loss",
               "clip_frac", "approx_kl", "entropy", "eval_success_rate", "eval_mean_return"]
    write_header = not (resume and os.path.exists(metrics_path))
    metrics_file = open(metrics_path, "a" if resume else "w", newline="")
    writer = csv.DictWriter(metrics_file, fieldnames=columns)
    if write_header:
        writer.writeheader()
    start, next_eval = time.time(), cfg.eval_every
    bar = tqdm(total=cfg.total_steps, initial=min(env_steps, cfg.total_steps), desc=f"{cfg.env} {cfg.algo}",
               unit="step", dynamic_ncols=True)
    try:
        while env_steps < cfg.total_steps:
            if cfg.algo == "grpo":  # group_size episodes per seed, consecutive
                seeds = np.repeat(seed_rng.integers(0, EVAL_SEED0, cfg.episodes // cfg.group_size), cfg.group_size)
            else:
                seeds = seed_rng.integers(0, EVAL_SEED0, cfg.episodes)
            steps, ep = rollout(envs, agent, seeds)
            outcome = spec["outcome"](ep).astype(np.float64)
            if not np.all(np.isfinite(outcome)) or outcome.min() < 0 or outcome.max() > 1:  # keep what was learnt
                save_checkpoint(ckpt_path, cfg, agent, actor_opt, critic_opt, env_steps, update_idx)
                fail(f"outcome outside [0, 1] or NaN in {cfg.env}: {outcome}; saved {ckpt_path}")
            stats = update(cfg, agent, actor_opt, critic_opt, steps, outcome, first=update_idx == 0)
            new_steps = int(ep["length"].sum())
            env_steps += new_steps
            update_idx += 1
            row = dict(update=update_idx, env_steps=env_steps, wall_seconds=round(time.time() - start, 3),
                       mean_outcome=float(outcome.mean()), success_rate=float(np.mean(spec["success"](ep))),
                       mean_return=float(ep["ret"].mean()), critic_loss=stats["critic_loss"],
                       clip_frac=stats["clip_frac"], approx_kl=stats["approx_kl"], entropy=stats["entropy"])
            if cfg.eval_every and env_steps >= next_eval:
                result = evaluate(cfg, agent, cfg.eval_episodes)
                row.update(eval_success_rate=result["success_rate"], eval_mean_return=result["mean_return"])
                next_eval += cfg.eval_every
            writer.writerow(row)
            metrics_file.flush()
            bar.update(min(new_steps, cfg.total_steps - bar.n))
            bar.set_postfix(outcome=f"{row['mean_outcome']:.3f}", success=f"{row['success_rate']:.2f}")
    except KeyboardInterrupt:
        save_checkpoint(ckpt_path, cfg, agent, actor_opt, critic_opt, env_steps, update_idx)
        print(f"\ninterrupted: saved {ckpt_path} at {env_steps} env steps; continue with --resume {cfg.out}",
              file=sys.stderr)
        sys.exit(130)
    finally:
        bar.close()
        metrics_file.close()
        envs.close()
    train_seconds = time.time() - start
    save_checkpoint(ckpt_path, cfg, agent, actor_opt, critic_opt, env_steps, update_idx)
    result = evaluate(cfg, agent, cfg.eval_episodes)
    summary = dict(env=cfg.env, algo=cfg.algo, seed=cfg.seed, env_steps=env_steps, updates=update_idx,
                   wall_seconds=round(time.time() - start, 2), train_seconds=round(train_seconds, 2),
                   steps_per_second=round(env_steps / train_seconds, 1), eval_episodes=cfg.eval_episodes,
                   **result, config=asdict(cfg))
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv=None):
    given, extra = parse_args(argv)
    if extra["eval"]:  # the saved config, with --eval-episodes if given
        saved, agent, *_ = load_checkpoint(extra["eval"])
        cfg = make_config({**asdict(saved), "out": extra["eval"], **given})
        torch.set_num_threads(cfg.threads)
        result = evaluate(cfg, agent, cfg.eval_episodes)
        print(json.dumps(dict(env=cfg.env, algo=cfg.algo, seed=cfg.seed, eval_episodes=cfg.eval_episodes, **result)))
        return result
    if extra["resume"]:  # the saved config; flags given (such as a larger --total-steps) override it
        given = {**asdict(load_checkpoint(extra["resume"])[0]), **given, "out": extra["resume"]}
    cfg = make_config(given)
    summary = train(cfg, resume=extra["resume"])
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return summary


if __name__ == "__main__":
    main()
