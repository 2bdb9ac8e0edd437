"""control.py: learning, one update per algorithm and env, bad input, run folders, signals, crashes."""
import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

import control
import sppo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROL = os.path.join(ROOT, "control.py")
TINY = ["--total-steps", "1", "--num-envs", "2", "--episodes", "4", "--eval-episodes", "2"]  # one update
CLOCKS = ("wall_seconds", "train_seconds")


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def learnt(run_dir):
    """The metrics rows without their clocks: what must be equal between an interrupted and a whole run."""
    return [{k: v for k, v in r.items() if k not in CLOCKS} for r in rows(run_dir)]


def test_cartpole_sppo_improves_within_budget(tmp_path):
    summary = control.main(["--total-steps", "300000", "--eval-episodes", "20", "--out", str(tmp_path)])
    outcomes = [r["reward_mean"] for r in rows(tmp_path)]
    assert np.mean(outcomes[-3:]) > np.mean(outcomes[:3]) + 0.2, outcomes
    assert summary["mean_return"] > 100  # a random policy balances ~22 steps


def test_metrics_rows_have_the_shared_keys(tmp_path):
    control.main([*TINY, "--total-steps", "300", "--out", str(tmp_path), "--eval-every", "1"])
    table = rows(tmp_path)
    shared = {"step", "wall_seconds", "train_seconds", "reward_mean", "success_rate", "critic_loss",
              "clip_frac", "dual_clip_frac", "approx_kl", "entropy", "lr", "env_steps", "mean_return"}
    assert len(table) >= 2 and all(shared <= set(r) for r in table)
    assert [r["step"] for r in table] == list(range(1, len(table) + 1))
    assert all(0 < r["train_seconds"] <= r["wall_seconds"] for r in table)
    assert all("eval_success_rate" in r and "eval_mean_return" in r for r in table)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["interrupted"] is False and summary["updates"] == len(table)
    spent = summary["env_steps"] / summary["steps_per_second"]
    assert spent == pytest.approx(summary["train_seconds"], abs=0.006)
    assert json.load(open(tmp_path / "config.json")) == summary["config"]


def test_anneal_lr_lowers_both_lrs_linearly_with_the_env_steps(tmp_path):
    control.main(["--total-steps", "3000", "--num-envs", "8", "--episodes", "16", "--eval-episodes", "2",
                  "--anneal-lr", "--lr", "0.002", "--critic-lr", "0.001", "--out", str(tmp_path)])
    table = rows(tmp_path)
    before = [0] + [r["env_steps"] for r in table[:-1]]  # each update's lr comes from the steps before it
    assert len(table) > 3
    assert [r["lr"] for r in table] == pytest.approx([0.002 * (1 - s / 3000) for s in before], rel=1e-12)
    ckpt = torch.load(tmp_path / "policy.pt", weights_only=True)
    assert ckpt["actor_opt"]["param_groups"][0]["lr"] == pytest.approx(table[-1]["lr"], rel=1e-12)
    assert ckpt["critic_opt"]["param_groups"][0]["lr"] == pytest.approx(table[-1]["lr"] / 2, rel=1e-12)


@pytest.mark.parametrize("algo", ["sppo", "ppo", "grpo"])
@pytest.mark.parametrize("env", list(control.ENVS))
def test_one_update_each_algo_each_env(tmp_path, env, algo):
    args = ["--env", env, "--algo", algo, "--total-steps", "1", "--num-envs", "2", "--episodes", "4",
            "--group-size", "2", "--eval-episodes", "2", "--out", str(tmp_path)]
    summary = control.main(args)
    (row,) = rows(tmp_path)
    assert row["env_steps"] == summary["env_steps"] > 0 and row["step"] == 1
    assert 0.0 <= row["reward_mean"] <= 1.0
    for key in ("clip_frac", "approx_kl", "entropy"):
        assert np.isfinite(row[key]), key
    assert (algo == "grpo") == (row["critic_loss"] is None)  # grpo has no critic
    saved = json.load(open(tmp_path / "summary.json"))
    for key in ("env", "algo", "seed", "env_steps", "wall_seconds", "train_seconds", "success_rate",
                "mean_outcome", "mean_return", "steps_per_second", "config"):
        assert key in saved
    assert saved["task_measure"] == control.measure_key(env) and np.isfinite(saved[saved["task_measure"]])
    assert saved["env"] == env and saved["algo"] == algo
    # the update changed the actor (a first minibatch has ratio 1, so a nonzero advantage moves it)
    fresh = control.build(control.Config(**saved["config"]))[0]
    trained = torch.load(tmp_path / "policy.pt", weights_only=True)["agent"]
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.state_dict().items() if k.startswith("actor"))


def test_ppo_defaults_do_not_discount_the_outcome():
    """Under ppo's defaults a longer successful episode has a larger return at step 0 than a shorter failed
    one, on every env where success takes longer (MountainCar ends sooner on success, Pendulum lasts 200).
    With gamma 0.99, the old default, it does not: gamma^T R favours ending near T = 100."""
    def episode(T, **stats):
        n = np.ones(1)
        fields = dict(ret=0 * n, length=T * n, terminated=n < 0, min_x=0 * n, max_x=0 * n, x_start=0 * n,
                      x_end=0 * n, obs=None, actions=None, logp=None, mask=None)
        return control.Batch(**{**fields, **{k: v * n for k, v in stats.items()}})
    pairs = {"CartPole-v1": (episode(500), episode(499)),  # balanced to the end; fell one step short
             "LunarLander-v3": (episode(400, ret=250), episode(100, ret=-100)),  # landed; crashed
             "Hopper-v5": (episode(1000, x_end=6), episode(200, x_end=3))}  # walked 6 m; fell after 3 m
    for env, (long_win, short_loss) in pairs.items():
        spec, cfg = control.ENVS[env], control.make_config({"env": env, "algo": "ppo"})
        assert spec["success"](long_win)[0] and not spec["success"](short_loss)[0], env

        def return0(ep, gamma):  # G_0 = sum_t gamma^t r_t, R on the last step (lambda 1: the plain return)
            T, R = int(ep.length[0]), torch.tensor(spec["outcome"](ep), dtype=torch.float32)
            return sppo.gae_advantages(R, torch.zeros(1, T), torch.ones(1, T), gamma, 1.0)[1][0, 0].item()
        assert return0(long_win, cfg.gamma) > return0(short_loss, cfg.gamma), env
        assert return0(long_win, 0.99) < return0(short_loss, 0.99), env  # why gamma had to change


def test_algo_config_layers_over_the_env_defaults(monkeypatch, capsys):
    monkeypatch.setitem(control.ENVS["Pendulum-v1"], "algo_config", {"ppo": {"lr": 5e-4, "hidden": 48}})
    assert control.make_config({"env": "Pendulum-v1", "algo": "ppo"}).lr == 5e-4
    assert control.make_config({"env": "Pendulum-v1", "algo": "ppo"}).num_envs == 64  # the env's default
    assert control.make_config({"env": "Pendulum-v1", "algo": "sppo"}).lr == 1e-3
    assert control.make_config({"env": "Pendulum-v1", "algo": "ppo", "lr": 2e-3}).lr == 2e-3  # a flag wins
    with pytest.raises(SystemExit) as e:
        control.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert "(default: 64, 32 for CartPole-v1, 32 for Pendulum-v1, 48 for Pendulum-v1 ppo)" in text
    assert "ENVS[env]['algo_config'][algo] per env and algorithm" in text


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


def test_saved_policy_reloads_and_acts_identically(tmp_path, capsys):
    summary = control.main(["--total-steps", "20000", "--eval-episodes", "10", "--out", str(tmp_path)])
    cfg, ckpt = control.load_checkpoint(str(tmp_path))
    obs = torch.randn(32, 4)
    a, b = control.load_state(cfg, ckpt).agent, control.load_state(cfg, ckpt).agent
    assert torch.equal(a.dist(obs).logits, b.dist(obs).logits)
    capsys.readouterr()
    result = control.main(["--eval", str(tmp_path), "--eval-episodes", "10"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "env": "CartPole-v1", "algo": "sppo", "seed": 1, "eval_episodes": 10, "task_measure": "mean_length",
        **result}
    for key in control.EVAL_KEYS:
        assert result[key] == summary[key], key


# ---------------------------------------------------------------------------------------------------
# Resume: exact, flags refused or applied, lr schedules and clocks continue
# ---------------------------------------------------------------------------------------------------
def test_resume_is_exact(tmp_path, capsys):
    """A run stopped at 3000 env steps and resumed to 6000 learns what one run to 6000 learns."""
    common = ["--env", "Pendulum-v1", "--num-envs", "4", "--episodes", "4", "--num-minibatches", "2",
              "--update-epochs", "2", "--eval-episodes", "2"]
    whole = control.main([*common, "--total-steps", "6000", "--out", str(tmp_path / "whole")])
    first = control.main([*common, "--total-steps", "3000", "--out", str(tmp_path / "split")])
    second = control.main(["--resume", str(tmp_path / "split"), "--total-steps", "6000"])
    assert "resume: --total-steps 3000 -> 6000" in capsys.readouterr().err
    assert learnt(tmp_path / "split") == learnt(tmp_path / "whole")
    for key in control.EVAL_KEYS:
        assert second[key] == whole[key], key
    assert second["train_seconds"] > first["train_seconds"]  # the clocks count both sessions
    spent = second["env_steps"] / second["steps_per_second"]
    assert spent == pytest.approx(second["train_seconds"], abs=0.006)
    assert rows(tmp_path / "split")[-1]["train_seconds"] > first["train_seconds"]


def test_resume_applies_and_logs_lr_and_refuses_what_cannot_change(tmp_path, capsys):
    control.main([*TINY, "--total-steps", "300", "--no-anneal-lr", "--out", str(tmp_path)])
    n = len(rows(tmp_path))
    control.main(["--resume", str(tmp_path), "--total-steps", "600", "--lr", "0.0005"])
    assert "resume: --lr 0.001 -> 0.0005\n" in capsys.readouterr().err
    assert {r["lr"] for r in rows(tmp_path)[n:]} == {0.0005}
    ckpt = torch.load(tmp_path / "policy.pt", weights_only=True)
    assert ckpt["actor_opt"]["param_groups"][0]["lr"] == 0.0005
    for flags, name in ((["--seed", "2"], "seed 1"), (["--hidden", "8"], "hidden 32"),
                        (["--algo", "ppo"], "algo")):
        with pytest.raises(SystemExit) as e:
            control.main(["--resume", str(tmp_path), *flags])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"contradicts the run in {tmp_path} ({name}" in err, err


def test_annealed_lr_continues_on_a_larger_budget(tmp_path):
    args = ["--num-envs", "8", "--episodes", "16", "--eval-episodes", "2", "--out", str(tmp_path)]
    control.main([*args, "--total-steps", "3000"])  # CartPole anneals by default
    n = len(rows(tmp_path))
    control.main(["--resume", str(tmp_path), "--total-steps", "6000"])
    table = rows(tmp_path)
    s0, frac0 = table[n - 1]["env_steps"], table[n - 1]["lr"] / 1e-3  # the line goes on from the last lr used
    before = [r["env_steps"] for r in table[n - 1:-1]]
    expected = [1e-3 * frac0 * (1 - (s - s0) / (6000 - s0)) for s in before]
    assert [r["lr"] for r in table[n:]] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert all(a >= b for a, b in zip([r["lr"] for r in table], [r["lr"] for r in table[1:]]))  # never up


def test_resume_keeps_the_rows_up_to_its_checkpoint(tmp_path):
    """Rows a crash left after the checkpoint (and half a line) are dropped: each step appears once."""
    control.main([*TINY, "--total-steps", "200", "--out", str(tmp_path)])
    n = len(rows(tmp_path))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**rows(tmp_path)[-1], "step": n + 1}) + "\n" + '{"step": ')
    control.main(["--resume", str(tmp_path), "--total-steps", "400"])
    steps = [r["step"] for r in rows(tmp_path)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > n


@pytest.mark.parametrize("algo", ["sppo", "ppo"])
def test_dump_values_records_the_critic_and_changes_nothing(tmp_path, algo):
    args = [*TINY, "--algo", algo, "--total-steps", "400", "--no-anneal-lr"]
    control.main([*args, "--out", str(tmp_path / "plain")])
    control.main([*args, "--out", str(tmp_path / "dumped"), "--dump-values"])
    assert learnt(tmp_path / "dumped") == learnt(tmp_path / "plain")  # recording changes nothing learnt
    assert not (tmp_path / "plain" / "values.jsonl").exists()
    dumped = [json.loads(line) for line in open(tmp_path / "dumped" / "values.jsonl")]
    table = rows(tmp_path / "dumped")
    assert [d["step"] for d in dumped] == [r["step"] for r in table] and {d["algo"] for d in dumped} == {algo}
    for d, r in zip(dumped, table):
        assert len(d["rewards"]) == len(d["success"]) == 4
        assert np.mean(d["rewards"]) == pytest.approx(r["reward_mean"])
        assert d["success"] == [x == 1.0 for x in d["rewards"]]  # CartPole: success is all 500 steps, R = 1
    first = dumped[0]
    if algo == "sppo":  # step 1: the critic's bias starts at logit(mean R), its weights near 0
        assert np.mean(first["pred_success"]) == pytest.approx(np.mean(first["rewards"]), abs=0.02)
        assert all(0 < p < 1 for d in dumped for p in d["pred_success"])
    else:  # a value per tenth of each episode; a fresh critic (output layer std 0.01) says about 0
        assert first["t_frac"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        assert np.array(first["values"]).shape == (4, 10) and np.abs(first["values"]).max() < 0.1
    control.main(["--resume", str(tmp_path / "dumped"), "--total-steps", "800"])  # appends after its rows
    steps = [json.loads(line)["step"] for line in open(tmp_path / "dumped" / "values.jsonl")]
    assert steps == list(range(1, len(rows(tmp_path / "dumped")) + 1)) and len(steps) > len(dumped)


def test_a_failed_write_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    control.main([*TINY, "--out", str(tmp_path)])
    before = (tmp_path / "policy.pt").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(control.torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        control.main(["--resume", str(tmp_path), "--total-steps", "500"])
    err = capsys.readouterr().err.strip().split("\n")[-1]
    assert e.value.code == 2 and err == (f"control.py: error: cannot write to --out {tmp_path}: [Errno 28] "
                                         "No space left on device; its last checkpoint is intact")
    assert (tmp_path / "policy.pt").read_bytes() == before


def test_broken_outcome_saves_and_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(control.ENVS["CartPole-v1"], "outcome", lambda b: b.length / 5.0)
    with pytest.raises(SystemExit) as e:
        control.main([*TINY, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().split("\n")[-1]  # after the progress bar's last state
    assert e.value.code == 2
    assert err.startswith("control.py: error: 4 outcomes outside [0, 1] or NaN in CartPole-v1")
    assert err.endswith(f"; saved {tmp_path}") and control.load_checkpoint(str(tmp_path))[1]["update"] == 0


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
    (["--gamma", "1.5"], "--gamma must be in [0, 1], got 1.5"),
    (["--save-every-seconds", "-1"], "--save-every-seconds must be >= 0, got -1.0"),
    (["--save-every-seconds", "inf"], "--save-every-seconds must be a finite number, got inf"),
    (["--anneal-lr=1"], "argument --anneal-lr/--no-anneal-lr: ignored explicit argument '1'"),
    (["--out", "FILE/sub"], "cannot write to --out FILE/sub: "),
    (["--tensorboard", "FILE/tb"], "cannot write to --tensorboard FILE/tb: "),
    (["--out", "run"], "--out run holds an earlier run (config.json, policy.pt, metrics.jsonl, "
                       "summary.json): continue it with --resume run, or replace it with --overwrite"),
    (["--resume", "run", "--out", "run2"], "--out run2 holds an earlier run"),
    (["--resume", "run", "--eval", "run"], "--eval and --resume exclude each other"),
    (["--eval", "no/such/run"], "no checkpoint at no/such/run/policy.pt"),
    (["--resume", "no/such/run"], "no checkpoint at no/such/run/policy.pt"),
    (["--eval", "garbage"], f"{NOT_OURS} garbage/policy.pt (Weights only load failed)"),
    (["--resume", "garbage"], f"{NOT_OURS} garbage/policy.pt (Weights only load failed)"),
    (["--eval", "truncated"], f"{NOT_OURS} truncated/policy.pt (PytorchStreamReader"),
    (["--eval", "protocol4"], f"{NOT_OURS} protocol4/policy.pt"),
    (["--eval", "nokeys"], f"{NOT_OURS} nokeys/policy.pt (no config, actor_opt, critic_opt, env_steps in it"),
    (["--eval", "run", "--env", "LunarLander-v3"], "--env LunarLander-v3 contradicts the run in run (env C"),
    (["--eval", "run", "--algo", "ppo"], "--algo ppo contradicts the run in run (algo sppo)"),
    (["--eval", "run", "--hidden", "16"], "--hidden 16 contradicts the run in run (hidden 32)"),
    (["--eval", "run", "--lr", "0.1"], "--lr 0.1 contradicts the run in run (lr 0.001); --eval takes only"),
    (["--resume", "run", "--env", "Pendulum-v1"], "--env Pendulum-v1 contradicts the run in run (env Cart"),
    (["--resume", "run", "--seed", "7"], "--seed 7 contradicts the run in run (seed 1); a resumed run keeps"),
    (["--resume", "run", "--lr", "-1"], "--lr must be positive, got -1.0"),
    (["--eval", "run", "--overwrite"], "--eval writes nothing"),
    (["--eval", "run", "--out", "x"], "--eval writes nothing"),
    (["--algo", "grpo", "--dump-values"], "--dump-values needs a critic: --algo sppo or ppo"),
])
def test_bad_input_exits_2_with_one_line(world, monkeypatch, capsys, args, message):
    monkeypatch.chdir(world)  # a default --out would land in world/runs
    before = snapshot(world)
    with pytest.raises(SystemExit) as e:
        control.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("control.py: error: ") and "Traceback" not in err
    assert snapshot(world) == before  # nothing created, nothing changed


def test_tensorboard_missing_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now raises ImportError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        control.main([*TINY, "--out", "run", "--tensorboard", "tb"])
    assert e.value.code == 2 and capsys.readouterr().err == (
        "control.py: error: --tensorboard needs the tensorboard package: pip install tensorboard\n")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# Run folders: no run is lost, --eval writes nothing, pytest leaves nothing behind
# ---------------------------------------------------------------------------------------------------
def test_overwrite_replaces_an_earlier_run_and_its_tensorboard_events(world, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run, tb = tmp_path / "run", tmp_path / "tb"
    control.main([*TINY, "--out", str(run), "--tensorboard", str(tb)])
    (tb / "notes.txt").write_text("mine")
    assert any(name.startswith("events.out.tfevents.") for name in os.listdir(tb))
    summary = control.main([*TINY, "--seed", "2", "--out", str(run), "--overwrite"])
    assert summary["seed"] == json.load(open(run / "summary.json"))["seed"] == 2
    assert len(rows(run)) == 1  # the new run's one update, not appended to the old metrics
    assert os.listdir(tb) == ["notes.txt"]  # the old run's events are gone, nothing else
    assert f"writing {run} (config.json, policy.pt, metrics.jsonl, summary.json)\n" in capsys.readouterr().err


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
    files = "config.json, policy.pt, metrics.jsonl, summary.json"
    assert f"writing {branch} ({files}), resuming {world / 'run'}" in err


def test_eval_writes_nothing(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    before = snapshot(world)
    control.main(["--eval", "run", "--eval-episodes", "3"])
    assert json.loads(capsys.readouterr().out)["eval_episodes"] == 3
    assert snapshot(world) == before


def test_make_config_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for env in control.ENVS:
        assert control.make_config({"env": env}).out == os.path.join("runs", f"{env}_sppo_1")
    assert os.listdir(tmp_path) == []


def test_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        control.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert e.value.code == 0
    for f in dataclasses.fields(control.Config):
        name = f"--{f.name.replace('_', '-')}"
        assert text.count(name + (" |" if f.type is bool else " ")) >= 1, name  # in the usage
        assert f.metadata["help"].split()[0] in text, name
    assert "entropy bonus (the paper uses none) (default: 0.0)" in text
    assert "(default: 1000000, 2000000 for LunarLander-v3, 2000000 for Pendulum-v1)" in text
    assert "--anneal-lr, --no-anneal-lr lower both lrs linearly" in text
    assert "--algo {sppo,ppo,grpo}" in text and "--env {" + ",".join(control.ENVS) + "}" in text
    for extra in ("--eval DIR", "--resume DIR", "--overwrite", "--tensorboard DIR", "--save-every-seconds"):
        assert extra in text


def test_tensorboard_logs_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    control.main(["--total-steps", "1000", "--num-envs", "4", "--episodes", "8", "--eval-episodes", "2",
                  "--eval-every", "500", "--out", str(tmp_path / "run"),
                  "--tensorboard", str(tmp_path / "tb")])
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    table = rows(tmp_path / "run")
    logged = events.Scalars("reward_mean")
    assert len(table) >= 2 and [e.step for e in logged] == [r["step"] for r in table]
    assert np.allclose([e.value for e in logged], [r["reward_mean"] for r in table])
    assert [e.value for e in events.Scalars("env_steps")] == [r["env_steps"] for r in table]
    assert len(events.Scalars("eval_success_rate")) == sum("eval_success_rate" in r for r in table) >= 1
    assert len(events.Scalars("final_mean_return")) == 1


# ---------------------------------------------------------------------------------------------------
# Signals and crashes, on a real process: SIGINT / SIGTERM save and exit 130 / 143; kill -9 loses at most
# one interval; every resume continues exactly
# ---------------------------------------------------------------------------------------------------
def start(args, run, log):
    """control.py in a subprocess. stderr to a file, not a pipe the progress bar could fill; SIGINT back to
    its default in the child, as a shell that starts pytest in the background passes SIGINT on ignored."""
    return subprocess.Popen([sys.executable, CONTROL, *args], cwd=run.parent, stdout=subprocess.DEVNULL,
                            stderr=log, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for(proc, ready, timeout=60):
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None and time.time() < deadline, "the run ended or never got there"
        time.sleep(0.001)


def n_rows(run):
    try:
        return len(open(run / "metrics.jsonl").read().splitlines())
    except OSError:
        return 0


def last_steps(run):
    try:
        return json.loads(open(run / "metrics.jsonl").read().splitlines()[-1])["env_steps"]
    except (OSError, IndexError, ValueError):
        return 0


SIGNAL_RUN = ["--total-steps", "200000", "--eval-episodes", "10"]  # CartPole's defaults (annealed lr)


@pytest.mark.slow
@pytest.mark.parametrize("sig,phase", [(signal.SIGINT, "training"), (signal.SIGTERM, "training"),
                                       (signal.SIGTERM, "final evaluation")],
                         ids=["SIGINT-training", "SIGTERM-training", "SIGTERM-final-evaluation"])
def test_signal_saves_exits_and_the_run_resumes_exactly(tmp_path, capsys, sig, phase):
    run = tmp_path / "run"
    args = SIGNAL_RUN + (["--eval-episodes", "20000"] if phase == "final evaluation" else [])  # seconds long
    with open(tmp_path / "stderr", "w") as err:
        proc = start([*args, "--out", str(run)], run, err)
        try:
            wait_for(proc, lambda: n_rows(run) >= 3 if phase == "training" else last_steps(run) >= 200000)
            time.sleep(0.5 if phase == "final evaluation" else 0)
            proc.send_signal(sig)
            proc.send_signal(sig)  # a second one while it saves changes nothing
            assert proc.wait(timeout=60) == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
        finally:
            proc.kill()  # only if a check above failed: the run has ended otherwise
    stderr = (tmp_path / "stderr").read_text()
    summary = json.load(open(run / "summary.json"))
    step = summary["updates"]
    assert stderr.strip().splitlines()[-1] == (f"control.py: stopped by {signal.Signals(sig).name} at step "
                                               f"{step}; saved {run}; continue with --resume {run}")
    assert "Traceback" not in stderr and summary["interrupted"] is True and summary["success_rate"] is None
    assert control.load_checkpoint(str(run))[1]["update"] == step == len(rows(run)) > 0
    resumed = control.main(["--resume", str(run)])
    whole = control.main([*args, "--out", str(tmp_path / "whole")])
    assert learnt(run) == learnt(tmp_path / "whole")
    assert resumed["success_rate"] == whole["success_rate"] and resumed["interrupted"] is False


@pytest.mark.slow
def test_kill_9_at_any_moment_loses_at_most_one_interval(tmp_path):
    """kill -9 mid-run, during a checkpoint write (policy.pt.tmp on disk) and just after a metrics row; after
    each, --resume works; in the end metrics.jsonl has every step once and equals an uninterrupted run's."""
    run = tmp_path / "run"
    # big hidden layers make policy.pt some MB, so its write takes long enough to be caught in the act
    args = ["--total-steps", "4000", "--num-envs", "4", "--episodes", "8", "--update-epochs", "1",
            "--num-minibatches", "2", "--hidden", "512", "--eval-episodes", "2",
            "--save-every-seconds", "0.05"]
    moments = [lambda: n_rows(run) >= 3, (run / "policy.pt.tmp").exists, lambda: n_rows(run) >= seen + 2]
    seen = 0
    with open(tmp_path / "stderr", "w") as err:
        for i, moment in enumerate(moments):
            (run / "policy.pt.tmp").unlink(missing_ok=True)  # a write cut short before: wait for a new one
            proc = start([*args, "--out", str(run)] if i == 0 else ["--resume", str(run)], run, err)
            try:
                wait_for(proc, moment)
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(timeout=30) == -signal.SIGKILL
            finally:
                proc.kill()
            if i == 1:
                assert (run / "policy.pt.tmp").exists()  # killed while writing it; policy.pt: the one before
            seen = n_rows(run)
            assert control.load_checkpoint(str(run))[1]["update"] <= seen
    # the rest in subprocesses too, all with OMP_NUM_THREADS=1: numpy's BLAS threads (which --threads does not
    # set) order the 512-unit sampler's sums, so a pytest process with other threads samples other floats
    with open(tmp_path / "stderr", "a") as err:
        assert start(["--resume", str(run)], run, err).wait(timeout=120) == 0
        assert start([*args, "--out", str(tmp_path / "whole")], run, err).wait(timeout=120) == 0
    assert [r["step"] for r in rows(run)] == list(range(1, len(rows(run)) + 1))
    assert learnt(run) == learnt(tmp_path / "whole")


# ---------------------------------------------------------------------------------------------------
# Rollouts: seeded episodes, the plain loop's numbers
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ["CartPole-v1", "LunarLander-v3"])
def test_rollout_streams_seeded_episodes_through_fewer_envs(env_id):
    envs = control.make_envs(env_id, 3)
    agent = control.build(control.make_config({"env": env_id}))[0]
    seeds = [5, 6, 7, 8, 9, 5, 6]  # 7 episodes through 3 sub-envs
    b = control.rollout(envs, agent, seeds)
    single = control.gym.make(env_id)
    for j, s in enumerate(seeds):  # column j holds episode j, starting from reset(seed=seeds[j])
        assert np.allclose(b.obs[0, j].numpy(), single.reset(seed=s)[0], atol=1e-6)
    assert torch.equal(b.mask.sum(0).long(), torch.as_tensor(b.length))
    assert torch.all(b.mask[:-1] >= b.mask[1:])  # valid steps first, then padding
    # a sampled action's stored log-prob is the policy's log-prob of it (ratio 1 on the first minibatch)
    with torch.no_grad():
        logp = agent.dist(b.obs).log_prob(b.actions)
    assert torch.allclose(logp * b.mask, b.logp * b.mask, atol=1e-6)


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
    """The Batch of `episodes` episodes (seeds 0, 1, ...) of a StubAgent, through control.py's own rollout."""
    envs = control.make_envs(env_id, 10)
    torch.manual_seed(0)  # the random policy's actions
    b = control.rollout(envs, StubAgent(envs.single_action_space, action), np.arange(episodes))
    envs.close()
    return b


@pytest.mark.parametrize("env_id", list(control.ENVS))
def test_degenerate_policies_never_succeed(env_id):
    spec = control.ENVS[env_id]
    assert spec["degenerate"]  # the reason, in words (for the README's env table)
    space = control.make_envs(env_id, 1).single_action_space
    for name, action in degenerate_policies(space):
        b = play(env_id, action)
        outcome = spec["outcome"](b)
        assert np.all((0 <= outcome) & (outcome <= 1)), (name, outcome)
        assert not np.any(spec["success"](b)), (name, b.length)


def test_standing_still_hopper_scores_near_zero():
    b = play("Hopper-v5", np.zeros(3, np.float32))
    assert np.all(np.isfinite(b.x_start)) and np.all(np.abs(b.x_start) < 0.01)  # reset noise only
    assert np.mean(control.ENVS["Hopper-v5"]["outcome"](b)) <= 0.05
    assert b.ret.max() > 100  # the env's return still pays for it: why the outcome is not the return


def test_hopper_forward_distance_is_the_torso_x_moved():
    """x_start and x_end are the torso's x (qpos[0]) at the reset and on the episode's last step."""
    envs = control.make_envs("Hopper-v5", 2)
    b = control.rollout(envs, StubAgent(envs.single_action_space, np.ones(3, np.float32)), [3, 4, 5])
    single = control.gym.make("Hopper-v5")
    for j, s in enumerate([3, 4, 5]):
        single.reset(seed=s)
        assert b.x_start[j] == single.unwrapped.data.qpos[0]
        for _ in range(b.length[j]):
            single.step(np.ones(3))
        assert b.x_end[j] == single.unwrapped.data.qpos[0]
    # an env without "x_position" in its info leaves them nan (also: fewer episodes than sub-envs)
    envs = control.make_envs("Pendulum-v1", 2)
    b = control.rollout(envs, StubAgent(envs.single_action_space), [1])
    assert b.length[0] == 200 and np.isnan(b.x_start[0]) and np.isnan(b.x_end[0])


def test_pendulum_success_is_upright_through_the_second_half():
    """Swung up by step 100 and held within 0.5 rad: success; one step out of it (or still down): none."""
    angle = np.zeros((200, 3))
    angle[:100] = np.pi  # all three hang down first
    angle[150, 1] = 0.55  # episode 1 tips out once
    angle[100:, 2] = 0.41  # episode 2 leans as far as the motor can hold it, inside the band
    b = types.SimpleNamespace(obs=np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], -1))
    assert list(control.ENVS["Pendulum-v1"]["success"](b)) == [True, False, True]
    angle[99, 0] = 0.0  # being upright before step 100 changes nothing
    assert control.ENVS["Pendulum-v1"]["success"](b)[0]


# ---------------------------------------------------------------------------------------------------
# The speed section computes what the plain definitions compute
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
def test_numpy_sampler_is_agent_sample(env_id):
    """The same noise gives the same actions and log-probs as Agent.sample, the torch definition."""
    agent = perturbed_agent(env_id)
    obs = np.random.default_rng(0).normal(size=(4096, agent.obs_mean.shape[0])) * 2
    action, logp = control.numpy_sampler(agent, np.random.default_rng(1))(obs)
    rng = np.random.default_rng(1)  # the draws numpy_sampler made: one a row (categorical) or a coordinate
    noise = rng.standard_normal(action.shape, dtype=np.float32) if agent.continuous else rng.random(
        (len(obs), 1), dtype=np.float32)
    expected, expected_logp = agent.sample(torch.as_tensor(obs, dtype=torch.float32), torch.from_numpy(noise))
    assert logp.dtype == np.float32 and np.allclose(expected_logp.numpy(), logp, rtol=1e-5, atol=1e-5)
    if agent.continuous:
        assert np.allclose(expected.numpy(), action, rtol=1e-5, atol=1e-5)
    else:
        assert np.array_equal(expected.numpy(), action)
    with torch.no_grad():  # the update's path: float32 tensors of the stored obs and actions
        again = agent.dist(torch.as_tensor(obs, dtype=torch.float32)).log_prob(torch.as_tensor(action))
    assert np.allclose(again.numpy(), logp, rtol=1e-5, atol=1e-5)


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
    b = control.rollout(envs, StubAgent(envs.single_action_space), [3, 1, 4, 1, 5, 9, 2])  # random
    assert len(set(b.length)) > 2  # lengths differ, so sub-envs fall idle at different times
    assert calls.sum() == b.length.sum()


@pytest.mark.parametrize("env_id", list(control.ENVS))
def test_rollout_matches_a_plain_loop_per_seed(env_id):
    """Each episode of rollout() (7 episodes, repeated seeds, through 3 sub-envs) is the episode of one plain
    gymnasium env reset with its seed and stepped with the same fixed policy: the same observations, actions,
    length, return, termination, x range and outcome; the mask is 1 on its steps and the padding is zero."""
    seeds = [3, 1, 4, 1, 5, 9, 2]
    envs = control.make_envs(env_id, 3)
    agent = RuleAgent(env_id, envs.single_action_space)
    b = control.rollout(envs, agent, seeds)
    envs.close()
    single, spec = control.gym.make(env_id), control.ENVS[env_id]
    T = b.mask.shape[0]
    assert T == b.length.max()
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
        assert b.length[j] == n and b.terminated[j] == terminated, (j, s)
        assert np.isclose(b.ret[j], ret, rtol=1e-6, atol=1e-6), (j, s)
        assert np.isclose(b.min_x[j], min(xs)) and np.isclose(b.max_x[j], max(xs))
        assert np.allclose(b.obs[:n, j].numpy(), np.array(observations, np.float32), atol=1e-4)
        assert np.allclose(b.actions[:n, j].numpy(), np.array(actions), atol=1e-6)
        assert torch.equal(b.mask[:, j], (torch.arange(T) < n).float())
        assert not b.obs[n:, j].any() and not b.logp[n:, j].any()  # padding is zero
        if "x_position" in info:
            assert b.x_start[j] == x_start and b.x_end[j] == info["x_position"]
        else:
            assert np.isnan(b.x_start[j]) and np.isnan(b.x_end[j])
    first = [seeds.index(s) for s in seeds]  # repeated seeds: the same episode, outcome and success
    one = dataclasses.replace(b, obs=b.obs[:, first], **{k: getattr(b, k)[first] for k in (
        "ret", "length", "terminated", "min_x", "max_x", "x_start", "x_end")})
    assert np.array_equal(spec["outcome"](b), spec["outcome"](one))
    assert np.array_equal(spec["success"](b), spec["success"](one))
    assert b.length.min() >= 20, b.length  # the rules play real episodes, not instant failures


def test_a_folder_in_use_by_a_running_run_is_refused(tmp_path, capsys):
    """Two processes on one --out (the same --resume started twice, --overwrite of a run still going) would
    mix their files: the second is refused while the first holds OUT/.lock, and may go once it is free."""
    import fcntl
    out = tmp_path / "run"
    out.mkdir()
    args = ["--total-steps", "300", "--num-envs", "2", "--episodes", "4", "--eval-episodes", "2",
            "--out", str(out), "--overwrite"]
    with open(out / ".lock", "a") as held:  # what a running control.py holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as e:
            control.main(args)
        assert e.value.code == 2 and "is in use by another run" in capsys.readouterr().err
        assert os.listdir(out) == [".lock"]  # nothing of the running run was touched
    assert control.main(args)["env_steps"] >= 300  # free again
