"""bench/control_tune.py and bench/llm_default_seeds.py: the tuning grid is fair, the quick forms run, reruns
read finished runs back."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import control_tune  # noqa: E402


@pytest.mark.parametrize("env", list(control_tune.BASE))
def test_every_algorithm_gets_six_configurations_and_ppo_is_undiscounted(env):
    grids = {algo: control_tune.grid(env, algo) for algo in ("sppo", "grpo", "ppo")}
    assert {algo: len(g) for algo, g in grids.items()} == {"sppo": 6, "grpo": 6, "ppo": 6}
    for algo, g in grids.items():
        assert len({name for name, _ in g}) == 6 and len({tuple(f) for _, f in g}) == 6  # all different
    for _, flags in grids["ppo"]:
        assert flags[flags.index("--gamma") + 1] == "1"
    assert {f[f.index("--lam") + 1] for _, f in grids["ppo"]} == {"0.95", "1"}
    lr = control_tune.BASE[env][0]
    assert dict(grids["sppo"])["lr x3"] == ["--lr", f"{3 * lr:g}"]


@pytest.mark.slow
def test_tune_quick_runs_and_reads_finished_runs_back(tmp_path):
    cmd = [sys.executable, "bench/control_tune.py", "--quick", "--algos", "grpo", "--jobs", "2",
           "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    result = json.load(open(tmp_path / "control_tune.json"))
    assert len(result["runs"]) == 6 and {r["algo"] for r in result["runs"]} == {"grpo"}
    winner = result["winners"]["CartPole-v1"]["grpo"]
    assert winner["success_mean"] == max(r["success_rate"] for r in result["runs"])
    logs = sorted(tmp_path.glob("CartPole-v1/*.log"))
    stamps = [os.path.getmtime(p) for p in logs]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    assert [os.path.getmtime(p) for p in logs] == stamps  # nothing ran again
    assert json.load(open(tmp_path / "control_tune.json"))["runs"][0]["success_rate"] == \
        result["runs"][0]["success_rate"]
    shutil.rmtree(tmp_path / "CartPole-v1")  # the run folders are gone (another machine): the results file
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)  # is read back, nothing runs again
    assert not (tmp_path / "CartPole-v1").exists()
    assert json.load(open(tmp_path / "control_tune.json"))["runs"] == result["runs"]


@pytest.mark.slow
def test_default_seeds_quick_writes_the_table(tmp_path):
    subprocess.run([sys.executable, "bench/llm_default_seeds.py", "--quick", "--out", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.load(open(tmp_path / "llm_default_seeds.json"))
    assert [r["seed"] for r in result["seeds"]] == [0, 1]
    for r in result["seeds"]:
        assert set(r) >= {"seed", "accuracy_after", "wall_seconds", "entropy_final"}
        assert 0 <= r["accuracy_after"] <= 1 and r["entropy_final"] > 0
    assert result["accuracy_after_min"] == min(r["accuracy_after"] for r in result["seeds"])
    recipes = json.load(open(tmp_path / "llm_recipes.json"))["recipes"]  # the search table has its row
    assert [(r["flags"], r["accuracy_after"]) for r in recipes] == [([], [s["accuracy_after"] for s in
                                                                      result["seeds"]])]


def test_auc_is_the_probability_that_a_success_has_the_higher_value():
    import control_tail
    assert control_tail.auc([2.0, 3.0], [1.0]) == 1.0 and control_tail.auc([0.0], [1.0, 2.0]) == 0.0
    assert control_tail.auc([1.0], [1.0]) == 0.5 and control_tail.auc([], [1.0]) is None
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)  # many ties
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert control_tail.auc(pos, neg) == pytest.approx(brute, abs=1e-12)


@pytest.mark.slow
def test_tail_quick_writes_auc_and_calibration(tmp_path):
    cmd = [sys.executable, "bench/control_tail.py", "--quick", "--jobs", "2", "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = json.load(open(tmp_path / "control_tail.json"))["results"]["CartPole-v1"]
    assert len(r["ppo"]["early"]["auc"]) == 10
    assert r["ppo"]["late"]["updates"][1] > r["ppo"]["early"]["updates"][0]
    assert 0 <= r["sppo"]["late"]["brier"] <= 1 and r["sppo"]["late"]["bins"]
    assert (tmp_path / "control_tail.png").exists()


@pytest.mark.slow
def test_robust_quick_writes_one_row_per_candidate(tmp_path):
    import control_robust
    cmd = [sys.executable, "bench/control_robust.py", "--quick", "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    runs = json.load(open(tmp_path / "control_robust.json"))["runs"]
    wanted = [(env, name) for env, configs in control_robust.CANDIDATES.items() for name, _, _ in configs]
    assert [(r["env"], r["name"]) for r in runs] == wanted and all(r["seed"] == 11 for r in runs)
    annealed = json.load(open(tmp_path / "Hopper-v5" / "sppo_lr_annealed_11" / "summary.json"))["config"]
    assert annealed["anneal_lr"] and annealed["critic_lr"] == 3e-3  # the candidate on top of the tuned defaults
    md = (tmp_path / "control_robust.md").read_text()
    assert all(md.count(f"| {env} |") == len(configs) for env, configs in control_robust.CANDIDATES.items())
