"""bench/plot.py draws control (metrics.csv) and LLM (metrics.jsonl) runs; bad input is one line, exit 2."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROL_COLUMNS = ["update", "env_steps", "wall_seconds", "mean_outcome", "success_rate", "mean_return",
                   "critic_loss", "clip_frac", "approx_kl", "entropy", "eval_success_rate",
                   "eval_mean_return"]


def plot(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "bench", "plot.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def fake_control(d):
    d.mkdir()
    rows = [",".join(CONTROL_COLUMNS)]
    for u in range(1, 6):  # evaluation columns on every second update only, empty otherwise
        ev = f"{0.2 * u:.1f},{100 * u}" if u % 2 == 0 else ","
        rows.append(f"{u},{1000 * u},{0.5 * u},{0.1 * u},{0.15 * u},{50 * u},0.6,0.1,0.01,0.5,{ev}")
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    (d / "summary.json").write_text(json.dumps({"success_rate": 0.9, "env_steps": 5000}))
    return d


def fake_llm(d, algo="sppo"):
    d.mkdir()
    lines = []
    for s in range(1, 5):
        m = dict(step=s, reward_mean=0.1 * s, accuracy=0.1 * s, wall_seconds=10.0 * s,
                 generated_tokens_total=100 * s, policy_loss=0.01, clip_frac=0.0, approx_kl=0.001 * s,
                 entropy=1.0, response_length=12.0,
                 samples=[{"prompt": "1+1", "completion": "2", "reward": 1.0}])
        if algo != "grpo":
            m["critic_loss"] = 0.7 - 0.1 * s
        if s == 2:
            m["eval_accuracy"] = 0.3
        lines.append(json.dumps(m))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    history = [{"step": s, "eval_accuracy": a} for s, a in [(0, 0.2), (2, 0.3), (4, 0.5)]]
    (d / "summary.json").write_text(json.dumps({"eval_history": history}))
    return d


def test_plot_control_and_llm_runs(tmp_path):
    pytest.importorskip("matplotlib")
    control_run, llm_run = fake_control(tmp_path / "cartpole"), fake_llm(tmp_path / "llm_sppo")
    grpo_run = fake_llm(tmp_path / "llm_grpo", algo="grpo")
    for run in (control_run, llm_run):  # one run: RUN_DIR/curves.png by default
        out = plot(run)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(run / "curves.png") and (run / "curves.png").stat().st_size > 0
    png = tmp_path / "all.png"  # several runs, control and LLM mixed, another x axis
    out = plot(control_run, llm_run, grpo_run, "--out", png, "--x", "wall_seconds")
    assert out.returncode == 0, out.stderr
    assert png.stat().st_size > 0
    out = plot(llm_run, grpo_run, cwd=tmp_path)  # several runs: ./curves.png
    assert out.returncode == 0 and (tmp_path / "curves.png").stat().st_size > 0, out.stderr


def test_plot_bad_input(tmp_path):
    out = plot(tmp_path / "missing")
    assert out.returncode == 2 and "missing: no such directory" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    (tmp_path / "empty").mkdir()
    out = plot(tmp_path / "empty")
    assert out.returncode == 2 and "no metrics.csv" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = plot(fake_llm(tmp_path / "llm"), "--x", "env_steps")
    assert out.returncode == 2 and "no column 'env_steps'" in out.stderr
