"""control.py: learning, one update of every algorithm on every env, bad input, checkpoints."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_cartpole_sppo_improves_within_budget(tmp_path):
    summary = control.main(["--total-steps", "150000", "--eval-episodes", "20", "--out", str(tmp_path)])
    outcomes = [float(r["mean_outcome"]) for r in rows(tmp_path)]
    assert np.mean(outcomes[-3:]) > np.mean(outcomes[:3]) + 0.2, outcomes
    assert summary["mean_return"] > 100  # a random policy balances ~22 steps


@pytest.mark.parametrize("algo", ["sppo", "ppo", "grpo"])
@pytest.mark.parametrize("env", list(control.ENVS))
def test_one_update_each_algo_each_env(tmp_path, env, algo):
    args = ["--env", env, "--algo", algo, "--total-steps", "1", "--num-envs", "2", "--episodes", "4", "--group-size", "2",
            "--eval-episodes", "2", "--out", str(tmp_path)]
    summary = control.main(args)
    (row,) = rows(tmp_path)
    assert int(row["env_steps"]) == summary["env_steps"] > 0
    assert 0.0 <= float(row["mean_outcome"]) <= 1.0
    for key in ("clip_frac", "approx_kl", "entropy"):
        assert np.isfinite(float(row[key])), key
    assert (algo == "grpo") == (row["critic_loss"] == "nan")  # grpo has no critic
    saved = json.load(open(tmp_path / "summary.json"))
    for key in ("env", "algo", "seed", "env_steps", "wall_seconds", "success_rate", "mean_outcome", "mean_return"):
        assert key in saved
    assert saved["env"] == env and saved["algo"] == algo
    # the update changed the actor (a first minibatch has ratio 1, so a nonzero advantage moves it)
    fresh, _, _ = control.build(control.Config(**saved["config"]))
    trained = torch.load(tmp_path / "policy.pt", weights_only=True)["agent"]
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.state_dict().items() if k.startswith("actor"))


def test_grpo_groups_start_from_the_same_prompt():
    for env_id in ("CartPole-v1", "Hopper-v5"):
        envs = control.make_envs(env_id, 4)
        obs = control.start_episodes(envs, np.ones(4, dtype=bool), [7, 7, 8, 8])
        assert np.allclose(obs[0], obs[1]) and np.allclose(obs[2], obs[3]) and not np.allclose(obs[0], obs[2])
        single = control.gym.make(env_id).reset(seed=7)[0]
        assert np.allclose(obs[0], single)  # the prompt is exactly env.reset(seed=s)
        envs.step(envs.action_space.sample())
        again = control.start_episodes(envs, np.array([False, False, True, False]), [7], obs)
        assert np.allclose(again[2], single) and not np.allclose(again[0], single)  # a partial restart


def test_saved_policy_reloads_and_acts_identically(tmp_path):
    summary = control.main(["--total-steps", "20000", "--eval-episodes", "10", "--out", str(tmp_path)])
    cfg, agent, *_ = control.load_checkpoint(str(tmp_path))
    obs = torch.randn(32, 4)
    again = control.load_checkpoint(str(tmp_path))[1]
    assert torch.equal(agent.dist(obs).logits, again.dist(obs).logits)
    out = subprocess.run([sys.executable, "control.py", "--eval", str(tmp_path), "--eval-episodes", "10"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mean_return"] == summary["mean_return"] and result["success_rate"] == summary["success_rate"]


def test_resume_continues_from_the_checkpoint(tmp_path):
    first = control.main(["--total-steps", "5000", "--eval-episodes", "2", "--out", str(tmp_path)])
    second = control.main(["--resume", str(tmp_path), "--total-steps", "10000", "--eval-episodes", "2"])
    assert second["env_steps"] >= 10000 > first["env_steps"]
    steps = [int(r["env_steps"]) for r in rows(tmp_path)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one metrics file, appended


@pytest.mark.parametrize("args,message", [
    (["--env", "Acrobot-v1"], "unknown env 'Acrobot-v1'"),
    (["--algo", "a2c"], "unknown algo 'a2c'"),
    (["--total-steps", "0"], "--total-steps must be positive"),
    (["--total-steps", "-5"], "--total-steps must be positive"),
    (["--algo", "grpo", "--group-size", "1"], "--group-size must be at least 2"),
    (["--total-steps", "many"], "invalid int value"),
    (["--out", "FILE/sub"], "cannot write to --out"),
    (["--eval", "no/such/run"], "no checkpoint at"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    (tmp_path / "FILE").write_text("")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    out = subprocess.run([sys.executable, "control.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("env_id", ["CartPole-v1", "LunarLander-v3"])
def test_rollout_streams_seeded_episodes_through_fewer_envs(env_id):
    envs = control.make_envs(env_id, 3)
    agent = control.build(control.make_config({"env": env_id}))[0]
    seeds = [5, 6, 7, 8, 9, 5, 6]  # 7 episodes through 3 sub-envs
    steps, ep = control.rollout(envs, agent, seeds)
    single = control.gym.make(env_id)
    for j, s in enumerate(seeds):  # column j holds episode j, starting from reset(seed=seeds[j])
        assert np.allclose(steps["obs"][0, j].numpy(), single.reset(seed=s)[0], atol=1e-6)
    assert torch.equal(steps["mask"].sum(0).long(), torch.as_tensor(ep["length"]))
    assert torch.all(steps["mask"][:-1] >= steps["mask"][1:])  # valid steps first, then padding
    # a sampled action's stored log-prob is the policy's log-prob of it (ratio 1 on the first minibatch)
    with torch.no_grad():
        logp = agent.log_prob(agent.dist(steps["obs"]), steps["actions"])
    assert torch.allclose(logp * steps["mask"], steps["logp"] * steps["mask"], atol=1e-6)
