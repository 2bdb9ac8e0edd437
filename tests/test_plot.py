"""bench/plot.py draws control and LLM runs (metrics.jsonl, shared keys); bad input is one line, exit 2."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import plot  # noqa: E402


def fake_control(d):
    """What control.py writes: a row per update, eval_success_rate on every second one, a final evaluation."""
    d.mkdir()
    lines = []
    for u in range(1, 6):
        m = dict(step=u, env_steps=1000 * u, wall_seconds=0.5 * u, train_seconds=0.4 * u,
                 reward_mean=0.1 * u, success_rate=0.15 * u, mean_return=50 * u, clip_frac=0.1,
                 critic_loss=None if u == 1 else 0.6, approx_kl=0.01, entropy=0.5, lr=1e-3)
        if u % 2 == 0:
            m.update(eval_success_rate=0.2 * u, eval_mean_return=100 * u)
        lines.append(json.dumps(m))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (d / "summary.json").write_text(json.dumps({"success_rate": 0.9, "env_steps": 5000}))
    return d


def fake_llm(d, algo="sppo"):
    """What llm_train.py writes: the shared keys per step, eval_accuracy on some rows, eval_history."""
    d.mkdir()
    lines = []
    for s in range(1, 5):
        m = dict(step=s, reward_mean=0.1 * s, success_rate=0.1 * s, wall_seconds=10.0 * s,
                 train_seconds=8.0 * s, generated_tokens_total=100 * s, clip_frac=0.0, approx_kl=0.001 * s,
                 entropy=1.0,
                 samples=[{"prompt": "1+1", "completion": "2", "reward": 1.0}])
        if algo != "grpo":
            m["critic_loss"] = 0.7 - 0.1 * s
        lines.append(json.dumps(m))
        if s == 2:
            lines.append(json.dumps({"step": 2, "eval_accuracy": 0.3}))  # an evaluation row of its own
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    history = [{"step": s, "eval_accuracy": a} for s, a in [(0, 0.2), (2, 0.3), (4, 0.5)]]
    (d / "summary.json").write_text(json.dumps({"eval_history": history}))
    return d


def test_load_reads_both_drivers(tmp_path):
    kind, rows, evals = plot.load(str(fake_control(tmp_path / "cartpole")))
    assert kind == "control" and [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert evals == [(2, 0.4), (4, 0.8), (5, 0.9)]  # periodic evaluations, then the final one at the end
    assert rows[0]["critic_loss"] != rows[0]["critic_loss"]  # null (grpo, or no critic yet): nan, not drawn
    kind, rows, evals = plot.load(str(fake_llm(tmp_path / "llm")))
    assert kind == "llm" and len(rows) == 5 and evals == [(0, 0.2), (2, 0.3), (4, 0.5)]
    old = tmp_path / "old"  # a control run from before metrics.jsonl
    old.mkdir()
    (old / "metrics.csv").write_text("update,env_steps,mean_outcome,success_rate\n1,100,0.5,0.25\n")
    assert plot.load(str(old))[1] == [{"step": 1, "env_steps": 100, "reward_mean": 0.5, "success_rate": 0.25}]


def test_plot_control_and_llm_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    control_run, llm_run = fake_control(tmp_path / "cartpole"), fake_llm(tmp_path / "llm_sppo")
    grpo_run = fake_llm(tmp_path / "llm_grpo", algo="grpo")
    for run in (control_run, llm_run):  # one run: RUN_DIR/curves.png by default
        plot.main([str(run)])
        assert capsys.readouterr().out.strip() == str(run / "curves.png")
        assert (run / "curves.png").stat().st_size > 0
    png = tmp_path / "all.png"  # several runs, control and LLM mixed, another x axis
    plot.main([str(control_run), str(llm_run), str(grpo_run), "--out", str(png), "--x", "train_seconds"])
    assert png.stat().st_size > 0
    monkeypatch.chdir(tmp_path)
    plot.main([str(llm_run), str(grpo_run)])  # several runs: ./curves.png
    assert (tmp_path / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("make,args,message", [
    (None, ["missing"], "missing: no such directory"),
    ("empty", ["empty"], "empty: no metrics.jsonl"),
    ("llm", ["llm", "--x", "env_steps"], "llm: no key 'env_steps'"),
    ("bad", ["bad"], "bad/metrics.jsonl:1: not JSON"),
    (None, ["run", "--x"], "argument --x: expected one argument"),
])
def test_plot_bad_input(tmp_path, monkeypatch, capsys, make, args, message):
    monkeypatch.chdir(tmp_path)
    if make == "empty":
        (tmp_path / "empty").mkdir()
    elif make == "llm":
        fake_llm(tmp_path / "llm")
    elif make == "bad":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "metrics.jsonl").write_text("{oops\n{}\n")
    with pytest.raises(SystemExit) as e:
        plot.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("plot.py: error: ") and "Traceback" not in err
