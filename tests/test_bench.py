"""The benchmark scripts run end to end in their --quick form and write what the README relies on."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import control_ablation  # noqa: E402
import control_suite  # noqa: E402


def test_bootstrap_ci_exact_cases():
    assert control_suite.bootstrap_ci([0.3, 0.3, 0.3]) == [0.3, 0.3]  # no spread, no interval
    assert control_suite.bootstrap_ci([0.7]) == [0.7, 0.7]  # one seed
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 0.5]
    low, high = control_suite.bootstrap_ci(values)
    assert 0.0 <= low < sum(values) / len(values) < high <= 1.0
    assert control_suite.bootstrap_ci([0.1, 0.5, 0.9]) == control_suite.bootstrap_ci([0.1, 0.5, 0.9])  # fixed


def test_bootstrap_diff_verdicts():
    high, low = [0.9, 0.95, 1.0, 0.92], [0.1, 0.0, 0.2]
    ahead = control_suite.bootstrap_diff(high, low)
    assert ahead["verdict"] == "ahead of" and 0 < ahead["ci95"][0] <= ahead["difference"] <= ahead["ci95"][1]
    assert control_suite.bootstrap_diff(low, high)["verdict"] == "behind"
    same = control_suite.bootstrap_diff([0.0, 1.0, 0.5], [0.4, 0.6, 0.5])
    assert same["verdict"] == "not distinguishable from" and same["ci95"][0] < 0 < same["ci95"][1]
    # one seed a side says nothing about the spread between seeds, whatever the gap
    assert control_suite.bootstrap_diff([1.0], [0.0])["verdict"] == "not distinguishable from"


@pytest.mark.slow
def test_control_suite_quick(tmp_path):
    out = subprocess.run([sys.executable, "bench/control_suite.py", "--quick", "--envs", "CartPole-v1",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.load(open(tmp_path / "results" / "control_suite.json"))
    assert result["quick"] and len(result["runs"]) == 3 and all(r["curve"] for r in result["runs"])
    cartpole = result["results"]["CartPole-v1"]
    assert set(cartpole) == {"sppo", "ppo", "grpo", "verdicts"}
    for algo in control_suite.ALGOS:
        r = cartpole[algo]
        assert r["ci95"][0] <= r["success_rate_mean"] <= r["ci95"][1], algo
        assert r["seeds"] == [101] and r["env_steps"] == 60_000 and len(r["success_rates"]) == 1, algo
        assert 0 <= r["reached_target"] <= 1 and r["wall_seconds_mean"] > 0, algo
        assert len(r["steps_per_second"]) == 1 and r["steps_per_second"][0] > 0, algo
        assert 0 < r["train_seconds"][0] <= r["wall_seconds_mean"], algo
    assert set(cartpole["verdicts"]) == {"grpo", "ppo"}
    for v in cartpole["verdicts"].values():
        assert v["verdict"] in control_suite.VERDICTS and v["ci95"][0] <= v["difference"] <= v["ci95"][1]
    md = (tmp_path / "results" / "control_suite.md").read_text()
    assert "| CartPole-v1 | sppo | 60,000 |" in md and "- **CartPole-v1** (target 0.95): SPPO is " in md
    configs = {r["algo"]: r["config"] for r in result["runs"]}  # each algorithm at its own tuned defaults
    assert (configs["sppo"]["episodes"], configs["ppo"]["lr"], configs["grpo"]["episodes"]) == (512, 3e-3, 256)
    stamp = os.path.getmtime(tmp_path / "CartPole-v1_sppo_101" / "summary.json")
    again = subprocess.run([sys.executable, "bench/control_suite.py", "--quick", "--envs", "CartPole-v1",
                            "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr  # the finished runs are read back, not run again
    assert os.path.getmtime(tmp_path / "CartPole-v1_sppo_101" / "summary.json") == stamp
    kept = json.load(open(tmp_path / "results" / "control_suite.json"))["runs"]
    assert [r["curve"] for r in kept] == [r["curve"] for r in result["runs"]]
    shutil.rmtree(tmp_path / "CartPole-v1_sppo_101")  # a clean clone: the folder is gone, the json is not
    third = subprocess.run([sys.executable, "bench/control_suite.py", "--quick", "--envs", "CartPole-v1",
                            "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert third.returncode == 0, third.stderr
    assert not (tmp_path / "CartPole-v1_sppo_101").exists()  # read back from the json, not run again
    kept = json.load(open(tmp_path / "results" / "control_suite.json"))["runs"]
    assert [r["curve"] for r in kept] == [r["curve"] for r in result["runs"]]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "results" / "control_CartPole-v1.png").stat().st_size > 0


@pytest.mark.slow
def test_control_ablation_quick_merges_by_name(tmp_path):
    cmd = [sys.executable, "bench/control_ablation.py", "--quick", "--out", str(tmp_path / "runs"),
           "--results", str(tmp_path / "results")]
    first = subprocess.run(cmd + ["--only", "Pendulum: 16 sub-envs, 32 episodes", "--seeds", "2"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(cmd + ["--only", "CartPole: no dual-clip"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    table = json.load(open(tmp_path / "results" / "control_ablation.json"))["results"]
    # the first call's row is still there; rows in VARIANTS order (CartPole's first)
    assert list(table) == ["CartPole: no dual-clip", "Pendulum: 16 sub-envs, 32 episodes"]
    pendulum = "Pendulum: 16 sub-envs, 32 episodes"
    for name, seeds in ((pendulum, [101, 102]), ("CartPole: no dual-clip", [101])):
        r = table[name]
        assert r["seeds"] == seeds and len(r["success_rates"]) == len(seeds) and r["quick"], name
        assert r["budget"] == 5_000 and r["ci95"][0] <= r["success_rate_mean"] <= r["ci95"][1], name
    assert table["CartPole: no dual-clip"]["change"] == "--dual-clip 0"
    assert table["CartPole: no dual-clip"]["runs"][0]["config"]["dual_clip"] == 0
    md = (tmp_path / "results" / "control_ablation.md").read_text()
    assert f"| {pendulum} | Pendulum-v1 | `--num-envs 16 --episodes 32` | 5,000 |" in md


def test_control_ablation_refuses_an_unknown_variant(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        control_ablation.main(["--only", "no such variant", "--out", str(tmp_path / "runs")])
    assert e.value.code == 2 and "unknown variant(s) ['no such variant']" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")


def test_suite_reads_a_control_run(tmp_path, monkeypatch):
    """run() reads summary.json and the batch-success curve of metrics.jsonl as control.py writes them."""
    out = tmp_path / "run"

    def fake_control(cmd, cwd, stdout, stderr, env):  # what `control.py ... --out out` leaves behind
        out.mkdir()
        rows = [dict(step=i, env_steps=100 * i, wall_seconds=0.1 * i, success_rate=s)
                for i, s in enumerate([0.0, 0.5, 0.97], 1)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "summary.json").write_text(json.dumps(dict(
            success_rate=0.96, mean_return=480.0, env_steps=300, wall_seconds=1.0, steps_per_second=400.0,
            train_seconds=0.75, config={"total_steps": 300})))
        assert cmd[1:3] == ["control.py", "--env"] and env["OMP_NUM_THREADS"] == "1"
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(control_suite.subprocess, "run", fake_control)
    r = control_suite.run("CartPole-v1", "sppo", 101, str(out))
    assert r["curve"] == [(100, 0.1, 0.0), (200, 0.2, 0.5), (300, 0.30000000000000004, 0.97)]
    assert r["steps_to_target"] == 300 and r["seconds_to_target"] == 0.30000000000000004  # target 0.95
    assert r["success_rate"] == 0.96 and r["train_seconds"] == 0.75
