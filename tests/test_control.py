"""control.py: learning, one update of every algorithm on every env, bad input, checkpoints."""
import csv
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROL = os.path.join(ROOT, "control.py")
TINY = ["--total-steps", "1", "--num-envs", "2", "--episodes", "4", "--eval-episodes", "2"]  # one update


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_cartpole_sppo_improves_within_budget(tmp_path):
    summary = control.main(["--total-steps", "150000", "--eval-episodes", "20", "--out", str(tmp_path)])
    outcomes = [float(r["mean_outcome"]) for r in rows(tmp_path)]
    assert np.mean(outcomes[-3:]) > np.mean(outcomes[:3]) + 0.2, outcomes
    assert summary["mean_return"] > 100  # a random policy balances ~22 steps


def test_anneal_lr_lowers_both_lrs_linearly_with_the_env_steps(tmp_path):
    control.main(["--total-steps", "3000", "--num-envs", "8", "--episodes", "16", "--eval-episodes", "2",
                  "--anneal-lr", "1", "--lr", "0.002", "--critic-lr", "0.001", "--out", str(tmp_path)])
    steps = [0] + [int(r["env_steps"]) for r in rows(tmp_path)]
    ckpt = torch.load(tmp_path / "policy.pt", weights_only=True)
    left = 1 - steps[-2] / 3000  # the last update ran with the lr set from the env steps before it
    assert len(steps) > 3 and 0 < left < 1
    assert ckpt["actor_opt"]["param_groups"][0]["lr"] == pytest.approx(0.002 * left, rel=1e-12)
    assert ckpt["critic_opt"]["param_groups"][0]["lr"] == pytest.approx(0.001 * left, rel=1e-12)


@pytest.mark.parametrize("algo", ["sppo", "ppo", "grpo"])
@pytest.mark.parametrize("env", list(control.ENVS))
def test_one_update_each_algo_each_env(tmp_path, env, algo):
    args = ["--env", env, "--algo", algo, "--total-steps", "1", "--num-envs", "2", "--episodes", "4",
            "--group-size", "2", "--eval-episodes", "2", "--out", str(tmp_path)]
    summary = control.main(args)
    (row,) = rows(tmp_path)
    assert int(row["env_steps"]) == summary["env_steps"] > 0
    assert 0.0 <= float(row["mean_outcome"]) <= 1.0
    for key in ("clip_frac", "approx_kl", "entropy"):
        assert np.isfinite(float(row[key])), key
    assert (algo == "grpo") == (row["critic_loss"] == "nan")  # grpo has no critic
    saved = json.load(open(tmp_path / "summary.json"))
    for key in ("env", "algo", "seed", "env_steps", "wall_seconds", "success_rate", "mean_outcome",
                "mean_return"):
        assert key in saved
    assert saved["task_measure"] == control.measure_key(env) and np.isfinite(saved[saved["task_measure"]])
    assert saved["env"] == env and saved["algo"] == algo
    # the update changed the actor (a first minibatch has ratio 1, so a nonzero advantage moves it)
    fresh, _, _ = control.build(control.Config(**saved["config"]))
    trained = torch.load(tmp_path / "policy.pt", weights_only=True)["agent"]
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.state_dict().items() if k.startswith("actor"))


def test_grpo_groups_start_from_the_same_prompt():
    for env_id in ("CartPole-v1", "Hopper-v5"):
        envs = control.make_envs(env_id, 4)
        obs, _ = control.start_episodes(envs, np.ones(4, dtype=bool), [7, 7, 8, 8])
        assert np.allclose(obs[0], obs[1]) and np.allclose(obs[2], obs[3]) and not np.allclose(obs[0], obs[2])
        single = control.gym.make(env_id).reset(seed=7)[0]
        assert np.allclose(obs[0], single)  # the prompt is exactly env.reset(seed=s)
        obs = control.step_busy(envs, envs.action_space.sample(), np.ones(4, dtype=bool), obs)[0]
        again, _ = control.start_episodes(envs, np.array([False, False, True, False]), [7], obs)
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
    assert result["mean_return"] == summary["mean_return"]
    assert result["success_rate"] == summary["success_rate"]


def test_resume_continues_from_the_checkpoint(tmp_path):
    first = control.main(["--total-steps", "5000", "--eval-episodes", "2", "--out", str(tmp_path)])
    second = control.main(["--resume", str(tmp_path), "--total-steps", "10000", "--eval-episodes", "2"])
    assert second["env_steps"] >= 10000 > first["env_steps"]
    steps = [int(r["env_steps"]) for r in rows(tmp_path)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one metrics file, appended


# ---------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2, no traceback, nothing created or changed on disk
# ---------------------------------------------------------------------------------------------------
def snapshot(folder):
    """Every file's bytes and modification time, and every folder's modification time, under folder."""
    seen = {}
    for parent, dirs, files in os.walk(folder):
        seen[os.path.relpath(parent, folder)] = os.stat(parent).st_mtime_ns
        for name in files:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                seen[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return seen


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a finished run, a copy of it, a file, and policy.pt files that are no checkpoints."""
    world = tmp_path_factory.mktemp("world")
    control.main([*TINY, "--out", str(world / "run")])
    shutil.copytree(world / "run", world / "run2")
    (world / "FILE").write_text("")
    bad = {"garbage": b"garbage" * 10, "truncated": (world / "run" / "policy.pt").read_bytes()[:2000],
           "protocol4": pickle.dumps({"config": {}}, protocol=4)}  # torch also warns about this one
    for name, data in bad.items():
        (world / name).mkdir()
        (world / name / "policy.pt").write_bytes(data)
    (world / "nokeys").mkdir()
    torch.save({"agent": {}, "update": 3}, world / "nokeys" / "policy.pt")  # a torch file, not a checkpoint
    return world


NOT_OURS = "not a checkpoint written by control.py:"


def run_control(args, cwd, **kwargs):
    return subprocess.run([sys.executable, CONTROL, *args], cwd=cwd, capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--env", "Acrobot-v1"], "argument --env: invalid choice: 'Acrobot-v1'"),
    (["--algo", "a2c"], "argument --algo: invalid choice: 'a2c'"),
    (["--total-steps", "0"], "--total-steps must be positive, got 0"),
    (["--total-steps", "-5"], "--total-steps must be positive, got -5"),
    (["--total-steps", "many"], "invalid int value: 'many'"),
    (["--algo", "grpo", "--group-size", "1"], "--group-size must be at least 2 for grpo, got 1"),
    (["--group-size", "0"], "--group-size must be positive, got 0"),
    (["--num-envs", "0"], "--num-envs must be positive, got 0"),
    (["--episodes", "2"], "--num-minibatches must be at most the episodes per update (2)"),
    (["--seed", "-1"], "--seed must be in [0, 2**64), got -1"),
    (["--ent-coef", "nan"], "--ent-coef must be a finite number, got nan"),
    (["--ent-coef", "-0.01"], "--ent-coef must be >= 0, got -0.01"),
    (["--max-grad-norm", "0"], "--max-grad-norm must be positive, got 0.0"),
    (["--hidden", "0"], "--hidden must be positive, got 0"),
    (["--eval-every", "-1"], "--eval-every must be >= 0, got -1"),
    (["--out", "FILE/sub"], "cannot write to --out FILE/sub: "),
    (["--tensorboard", "FILE/tb"], "cannot write to --tensorboard FILE/tb: "),
    (["--out", "run"], "--out run holds an earlier run (policy.pt, metrics.csv, summary.json): "
                       "continue it with --resume run, or replace it with --overwrite"),
    (["--resume", "run", "--out", "run2"], "--out run2 holds an earlier run"),
    (["--eval", "no/such/run"], "no checkpoint at no/such/run/policy.pt"),
    (["--eval", "garbage"], f"{NOT_OURS} garbage/policy.pt (Weights only load failed)"),
    (["--resume", "garbage"], f"{NOT_OURS} garbage/policy.pt (Weights only load failed)"),
    (["--eval", "truncated"], f"{NOT_OURS} truncated/policy.pt (PytorchStreamReader"),
    (["--eval", "protocol4"], f"{NOT_OURS} protocol4/policy.pt"),
    (["--eval", "nokeys"], f"{NOT_OURS} nokeys/policy.pt (no config, actor_opt, critic_opt, env_steps in it"),
    (["--eval", "run", "--env", "LunarLander-v3"], "--env LunarLander-v3 contradicts the run in run (env C"),
    (["--eval", "run", "--algo", "ppo"], "--algo ppo contradicts the run in run (algo sppo)"),
    (["--eval", "run", "--hidden", "16"], "--hidden 16 contradicts the run in run (hidden 32)"),
    (["--anneal-lr", "maybe"], "argument --anneal-lr: expected 1 or 0 (true/false, on/off), got 'maybe'"),
    (["--resume", "run", "--env", "Pendulum-v1"], "--env Pendulum-v1 contradicts the run in run (env Cart"),
    (["--eval", "run", "--overwrite"], "--eval writes nothing"),
])
def test_bad_input_exits_2_with_one_line(world, args, message):
    before = snapshot(world)
    out = run_control(args, cwd=world)  # a default --out would land in world/runs
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("control.py: error: ") and "Traceback" not in out.stderr
    assert snapshot(world) == before  # nothing created, nothing changed


def test_tensorboard_missing_is_refused_before_training(tmp_path):
    fake = tmp_path / "fake"  # a tensorboard package that fails to import, found before the real one
    fake.mkdir()
    (fake / "tensorboard.py").write_text("raise ImportError('no tensorboard here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    out = run_control([*TINY, "--out", "run", "--tensorboard", "tb"], cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert out.stderr == ("control.py: error: --tensorboard needs the tensorboard package: "
                          "pip install tensorboard\n")
    assert os.listdir(tmp_path) == ["fake"]


# ---------------------------------------------------------------------------------------------------
# Run folders: no run is lost, --eval writes nothing, pytest leaves nothing behind
# ---------------------------------------------------------------------------------------------------
def test_overwrite_replaces_an_earlier_run(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    summary = control.main([*TINY, "--seed", "2", "--out", str(run), "--overwrite"])
    assert summary["seed"] == json.load(open(run / "summary.json"))["seed"] == 2
    assert len(rows(run)) == 1  # the new run's one update, not appended to the old metrics
    assert f"writing {run} (policy.pt, metrics.csv, summary.json)\n" in capsys.readouterr().err


def test_resume_into_another_folder_leaves_the_run_untouched(world, tmp_path, capsys):
    before = snapshot(world / "run")
    branch = tmp_path / "branch"
    summary = control.main(["--resume", str(world / "run"), "--out", str(branch), "--total-steps", "1000"])
    assert snapshot(world / "run") == before
    assert summary["env_steps"] >= 1000
    assert json.load(open(branch / "summary.json"))["env_steps"] == summary["env_steps"]
    original = rows(world / "run")
    assert rows(branch)[:len(original)] == original and len(rows(branch)) > len(original)  # appended
    err = capsys.readouterr().err
    assert f"writing {branch} (policy.pt, metrics.csv, summary.json), resuming {world / 'run'}" in err


def test_eval_writes_nothing(world):
    before = snapshot(world)
    out = run_control(["--eval", "run", "--eval-episodes", "3"], cwd=world)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["eval_episodes"] == 3
    assert snapshot(world) == before


def test_make_config_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for env in control.ENVS:
        assert control.make_config({"env": env}).out == os.path.join("runs", f"{env}_sppo_1")
    assert os.listdir(tmp_path) == []


def test_help_describes_every_flag():
    out = run_control(["--help"], cwd=ROOT)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for f in control.fields(control.Config):
        assert text.count(f"--{f.name.replace('_', '-')} ") >= 2, f.name  # in the usage and in the list
    assert "entropy bonus (the paper uses none) (default: 0.0)" in text
    assert "(default: 1000000, 2000000 for LunarLander-v3, 2000000 for Pendulum-v1)" in text
    assert "--algo {sppo,ppo,grpo}" in text and "--env {" + ",".join(control.ENVS) + "}" in text
    for extra in ("--eval DIR", "--resume DIR", "--overwrite", "--tensorboard DIR"):
        assert extra in text


# ---------------------------------------------------------------------------------------------------
# Ctrl-C, TensorBoard
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["training", "final evaluation"])
def test_ctrl_c_keeps_the_checkpoint_and_writes_a_summary(tmp_path, phase):
    # training: a budget never reached; final evaluation: one update, then thousands of evaluation episodes
    budget, eval_episodes = ("1000000000", "2") if phase == "training" else ("1", "5000")
    args = ["--total-steps", budget, "--num-envs", "2", "--episodes", "4", "--eval-episodes", eval_episodes]
    run = tmp_path / "run"
    # stderr to a file, not a pipe the progress bar could fill; SIGINT back to its default in the child, as a
    # shell that starts pytest in the background passes SIGINT on ignored (and Python then never raises it)
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, CONTROL, *args, "--out", str(run)], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        started = (lambda: len(rows(run)) >= 2) if phase == "training" else (run / "policy.pt").exists
        try:
            deadline = time.time() + 30
            while not (run / "metrics.csv").exists() or not started():
                assert proc.poll() is None and time.time() < deadline, "the run ended or never started"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 130
        finally:
            proc.kill()  # only if a check above failed: the run has ended otherwise
    stderr = (tmp_path / "stderr").read_text()
    assert f"interrupted: saved {run / 'policy.pt'} and summary.json" in stderr and "Traceback" not in stderr
    summary = json.load(open(run / "summary.json"))
    assert summary["success_rate"] is None and summary["note"].startswith("interrupted")
    assert control.load_checkpoint(str(run))[-1]["env_steps"] == summary["env_steps"] > 0


def test_tensorboard_logs_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    control.main(["--total-steps", "1000", "--num-envs", "4", "--episodes", "8", "--eval-episodes", "2",
                  "--eval-every", "500", "--out", str(tmp_path / "run"),
                  "--tensorboard", str(tmp_path / "tb")])
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    table = rows(tmp_path / "run")
    logged = events.Scalars("mean_outcome")
    assert len(table) >= 2 and [e.step for e in logged] == [int(r["env_steps"]) for r in table]
    assert np.allclose([e.value for e in logged], [float(r["mean_outcome"]) for r in table])
    assert len(events.Scalars("eval_success_rate")) == sum(r["eval_success_rate"] != "" for r in table) >= 1
    assert len(events.Scalars("final_mean_return")) == 1


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


# ---------------------------------------------------------------------------------------------------
# The success criteria measure the task: degenerate policies never succeed
# ---------------------------------------------------------------------------------------------------
class StubAgent:
    """Stands in for control.Agent in control.rollout: a constant action, or uniformly random ones."""

    def __init__(self, space, action=None):
        self.space, self.action = space, action
        self.continuous = isinstance(space, control.gym.spaces.Box)

    def sampler(self, rng):
        def act(obs):
            n = obs.shape[0]
            if self.action is not None:
                action = np.stack([self.action] * n)
            elif self.continuous:
                action = rng.uniform(self.space.low, self.space.high, (n, *self.space.shape))
                action = action.astype(np.float32)
            else:
                action = rng.integers(self.space.n, size=n)
            return action, np.zeros(n, np.float32)
        return act


def degenerate_policies(space):
    """Each constant action of a discrete space; zero and both corners of a box; then uniformly random."""
    if isinstance(space, control.gym.spaces.Discrete):
        constants = [np.int64(a) for a in range(space.n)]
    else:
        constants = [np.zeros(space.shape, np.float32), space.low, space.high]
    return [(f"constant {a}", a) for a in constants] + [("random", None)]


def play(env_id, action, episodes=20):
    """Stats of `episodes` episodes (seeds 0, 1, ...) of a StubAgent, through control.py's own rollout."""
    envs = control.make_envs(env_id, 10)
    torch.manual_seed(0)  # the random policy's actions
    _, ep = control.rollout(envs, StubAgent(envs.single_action_space, action), np.arange(episodes))
    envs.close()
    return ep


@pytest.mark.parametrize("env_id", list(control.ENVS))
def test_degenerate_policies_never_succeed(env_id):
    spec = control.ENVS[env_id]
    assert spec["degenerate"]  # the reason, in words (for the README's env table)
    space = control.make_envs(env_id, 1).single_action_space
    for name, action in degenerate_policies(space):
        ep = play(env_id, action)
        outcome = spec["outcome"](ep)
        assert np.all((0 <= outcome) & (outcome <= 1)), (name, outcome)
        assert not np.any(spec["success"](ep)), (name, ep)


def test_standing_still_hopper_scores_near_zero():
    ep = play("Hopper-v5", np.zeros(3, np.float32))
    assert np.all(np.isfinite(ep["x_start"])) and np.all(np.abs(ep["x_start"]) < 0.01)  # reset noise only
    assert np.mean(control.ENVS["Hopper-v5"]["outcome"](ep)) <= 0.05
    assert ep["ret"].max() > 100  # the env's return still pays for it: why the outcome is not the return


def test_hopper_forward_distance_is_the_torso_x_moved():
    """x_start and x_end are the torso's x (qpos[0]) at the reset and on the episode's last step."""
    envs = control.make_envs("Hopper-v5", 2)
    ep = control.rollout(envs, StubAgent(envs.single_action_space, np.ones(3, np.float32)), [3, 4, 5])[1]
    single = control.gym.make("Hopper-v5")
    for j, s in enumerate([3, 4, 5]):
        single.reset(seed=s)
        assert ep["x_start"][j] == single.unwrapped.data.qpos[0]
        for _ in range(ep["length"][j]):
            single.step(np.ones(3))
        assert ep["x_end"][j] == single.unwrapped.data.qpos[0]
    # an env without "x_position" in its info leaves them nan (also: fewer episodes than sub-envs)
    envs = control.make_envs("Pendulum-v1", 2)
    ep = control.rollout(envs, StubAgent(envs.single_action_space), [1])[1]
    assert ep["length"][0] == 200 and np.isnan(ep["x_start"][0]) and np.isnan(ep["x_end"][0])


def test_pendulum_success_is_upright_through_the_second_half():
    """Swung up by step 100 and held within 0.5 rad: success; one step out of it (or still down): none."""
    angle = np.zeros((200, 3))
    angle[:100] = np.pi  # all three hang down first
    angle[150, 1] = 0.55  # episode 1 tips out once
    angle[100:, 2] = 0.41  # episode 2 leans as far as the motor can hold it, inside the band
    ep = {"obs": np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], -1), "ret": np.zeros(3)}
    assert list(control.ENVS["Pendulum-v1"]["success"](ep)) == [True, False, True]
    angle[99, 0] = 0.0  # being upright before step 100 changes nothing
    assert control.ENVS["Pendulum-v1"]["success"](ep)[0]


# ---------------------------------------------------------------------------------------------------
# The fast rollout computes what a plain loop computes
# ---------------------------------------------------------------------------------------------------
def perturbed_agent(env_id, seed=0):
    """An Agent whose weights, log_std and observation statistics are far from their initial values."""
    torch.manual_seed(seed)
    agent = control.build(control.make_config({"env": env_id}))[0]
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        agent.obs_mean.normal_()
        agent.obs_var.uniform_(0.1, 3.0)
    return agent


@pytest.mark.parametrize("env_id", list(control.ENVS))
def test_sampler_log_probs_are_those_the_update_recomputes(env_id):
    agent = perturbed_agent(env_id)
    obs = np.random.default_rng(0).normal(size=(512, agent.obs_mean.shape[0])) * 2
    action, logp = agent.sampler(np.random.default_rng(1))(obs)
    assert logp.dtype == np.float32
    with torch.no_grad():  # the update's path: float32 tensors of the stored obs and actions
        again = agent.log_prob(agent.dist(torch.as_tensor(obs, dtype=torch.float32)), torch.as_tensor(action))
    assert np.abs(again.numpy() - logp).max() < 1e-5


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_sampler_draws_from_the_policy(env_id):
    """Actions drawn by the numpy sampler follow the torch distribution of Agent.dist."""
    agent = perturbed_agent(env_id, seed=3)
    obs = np.repeat(np.random.default_rng(0).normal(size=(1, agent.obs_mean.shape[0])), 40_000, axis=0)
    action, _ = agent.sampler(np.random.default_rng(2))(obs)
    with torch.no_grad():
        dist = agent.dist(torch.as_tensor(obs[:1], dtype=torch.float32))
    if agent.continuous:
        assert np.allclose(action.mean(0), dist.mean[0].numpy(), atol=0.03)
        assert np.allclose(action.std(0), dist.stddev[0].numpy(), rtol=0.03)
    else:
        freq = np.bincount(action, minlength=dist.probs.shape[-1]) / len(action)
        assert np.allclose(freq, dist.probs[0].numpy(), atol=0.01)


RULES = {  # a fixed policy per env: a deterministic function of the observation (unclipped for boxes)
    # CartPole: push towards the pole's lean, which swings ever wider and falls in ~25-50 steps (a policy that
    # balances 500 steps lets the batched env's float rounding, which differs from the plain env's, grow)
    "CartPole-v1": lambda obs: (obs[:, 2] > 0).astype(np.int64),
    "MountainCar-v0": lambda obs: np.where(obs[:, 1] > 0, 2, 0),  # push along the velocity: reaches the flag
    "LunarLander-v3": lambda obs: np.where(obs[:, 3] < -0.3, 2, np.where(obs[:, 4] > 0, 3, 1)),
    "Pendulum-v1": lambda obs: -4.0 * obs[:, 2:3],  # beyond the box [-2, 2]: the env gets it clipped
    "Hopper-v5": lambda obs: -5.0 * obs[:, 2:5] - 0.5 * obs[:, 8:11],  # holds its joints: stands for a while
}


class RuleAgent:
    """Stands in for control.Agent in control.rollout: the fixed policy RULES[env_id]."""

    def __init__(self, env_id, space):
        self.rule, self.continuous = RULES[env_id], isinstance(space, control.gym.spaces.Box)

    def sampler(self, rng):
        return lambda obs: (self.rule(obs), np.zeros(len(obs), np.float32))


@pytest.mark.parametrize("env_id", ["LunarLander-v3", "Hopper-v5"])
def test_rollout_steps_only_sub_envs_with_an_episode(env_id):
    """Every env.step call is a step of some episode: sub-envs with no episode left wait, unstepped."""
    envs = control.make_envs(env_id, 3)
    calls = np.zeros(3, dtype=int)
    for i, sub in enumerate(envs.envs):
        def counted(action, i=i, step=sub.step):
            calls[i] += 1
            return step(action)
        sub.step = counted
    ep = control.rollout(envs, StubAgent(envs.single_action_space), [3, 1, 4, 1, 5, 9, 2])[1]  # random
    assert len(set(ep["length"])) > 2  # lengths differ, so sub-envs fall idle at different times
    assert calls.sum() == ep["length"].sum()


@pytest.mark.parametrize("env_id", list(control.ENVS))
def test_rollout_matches_a_plain_loop_per_seed(env_id):
    """Each episode of rollout() (7 episodes, repeated seeds, through 3 sub-envs) is the episode of one plain
    gymnasium env reset with its seed and stepped with the same fixed policy: the same observations, actions,
    length, return, termination, x range and outcome; the mask is 1 on its steps and the padding is zero."""
    seeds = [3, 1, 4, 1, 5, 9, 2]
    envs = control.make_envs(env_id, 3)
    agent = RuleAgent(env_id, envs.single_action_space)
    steps, ep = control.rollout(envs, agent, seeds)
    envs.close()
    single, spec = control.gym.make(env_id), control.ENVS[env_id]
    T = steps["mask"].shape[0]
    assert T == ep["length"].max()
    for j, s in enumerate(seeds):
        obs, info = single.reset(seed=s)
        ret, xs, x_start, observations, actions = 0.0, [obs[0]], info.get("x_position", np.nan), [], []
        terminated = truncated = False
        while not (terminated or truncated):
            action = agent.rule(obs[None])[0]
            observations.append(obs)
            actions.append(action)
            if agent.continuous:
                action = np.clip(action, single.action_space.low, single.action_space.high)
            obs, reward, terminated, truncated, info = single.step(action)
            ret += reward
            xs.append(obs[0])
        n = len(actions)
        assert ep["length"][j] == n and ep["terminated"][j] == terminated, (j, s)
        assert np.isclose(ep["ret"][j], ret, rtol=1e-6, atol=1e-6), (j, s)
        assert np.isclose(ep["min_x"][j], min(xs)) and np.isclose(ep["max_x"][j], max(xs))
        assert np.allclose(steps["obs"][:n, j].numpy(), np.array(observations, np.float32), atol=1e-4)
        assert np.allclose(steps["actions"][:n, j].numpy(), np.array(actions), atol=1e-6)
        assert torch.equal(steps["mask"][:, j], (torch.arange(T) < n).float())
        assert not steps["obs"][n:, j].any() and not steps["logp"][n:, j].any()  # padding is zero
        if "x_position" in info:
            assert ep["x_start"][j] == x_start and ep["x_end"][j] == info["x_position"]
        else:
            assert np.isnan(ep["x_start"][j]) and np.isnan(ep["x_end"][j])
    first = [seeds.index(s) for s in seeds]  # repeated seeds: the same episode, outcome and success
    one = {k: v[:, first] if k == "obs" else v[first] for k, v in ep.items()}
    assert np.array_equal(spec["outcome"](ep), spec["outcome"](one))
    assert np.array_equal(spec["success"](ep), spec["success"](one))
    assert ep["length"].min() >= 20, ep["length"]  # the rules play real episodes, not instant failures
