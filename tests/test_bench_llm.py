"""bench/llm_compare.py runs end to end in its --quick form (random tiny model, offline, 8 runs of 3 training
seconds, two side by side: 1-2.5 min) with the lrs of an llm_sweep.json, and writes the keys the README
uses."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"sppo", "grpo", "ppo", "sppo_full_critic"}


@pytest.mark.slow
def test_llm_compare_quick(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    chosen = {"sppo": dict(lr=6e-5, critic_lr=3e-4), "grpo": dict(lr=1e-5, critic_lr=None),
              "ppo": dict(lr=3e-5, critic_lr=1e-4)}  # what --sweep writes; the comparison must take these lrs
    (results / "llm_sweep.json").write_text(json.dumps({"settings": {"model": "tiny", "lora": 16}, "chosen": chosen}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "bench/llm_compare.py", "--quick", "--jobs", "2", "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(results / "llm_compare.json"))
    s = result["settings"]
    assert s["samples_per_step"] == {name: 16 for name in RUNS} and s["prompts_per_step"]["grpo"] == 2
    assert s["lr_source"].endswith("llm_sweep.json") and s["lrs"]["sppo_full_critic"] == chosen["sppo"]
    assert {k: s["lrs"][k] for k in chosen} == chosen
    assert s["seeds"] == [1, 2] and s["budget_train_seconds"] == 3
    # the held-out set is one file, the same for every seed; training files leave the validation bucket out
    data = {name: [json.loads(line) for line in open(tmp_path / "data" / f"{name}.jsonl")]
            for name in ("test", "val", "train_s1", "train_s2")}
    assert len(data["test"]) == len(data["val"]) == 256 and set(data["test"][0]) == {"prompt", "answer"}
    val = {r["prompt"] for r in data["val"]}
    assert not val & {r["prompt"] for r in data["train_s1"] + data["train_s2"] + data["test"]}
    assert set(result["algos"]) == RUNS
    for name, a in result["algos"].items():
        assert a["seeds"] == [1, 2] and len(a["runs"]) == 2 and len(a["final_accuracy"]) == 2, name
        lo, hi = a["final_accuracy_ci95"]
        assert lo <= a["final_accuracy_mean"] <= hi, name
        assert a["curve_mean"][0]["train_seconds"] == 0, name
        assert {"generated_tokens", "accuracy", "band_lo", "band_hi"} <= set(a["curve_tokens_mean"][-1]), name
        assert a["seconds_per_step"] > 0 and a["peak_memory_bytes"] > 0, name
        for r in a["runs"]:  # the random model's accuracy is flat: --patience 3 stops every run after three
            # evaluations (every 0.25 s) with no new best, before the 3 s budget
            assert r["stopped_by_patience"] and not r["stopped_by_time_budget"] and r["train_seconds"] < 3, name
            assert len(r["curve"]) == 4 and r["curve"][-1]["step"] == r["steps"], name
            assert r["curve"][-1]["train_seconds"] == r["train_seconds"], name
        assert a["peak_mean"] == 0 and a["peak_ci95"] == [0, 0] and a["peak_train_seconds"] == 0, name
        assert a["stopped_by_patience"] == [True, True], name
    # the random model never answers right: GRPO never improves, both speed-ups are undefined, with a reason
    sp = result["speedup_vs_grpo"]
    assert sp["paper_way"] is None and sp["ours"] is None and "never rose" in sp["reason"]
    assert "never rose" in sp["paper_way_reason"] and "never rose" in sp["ours_reason"]
    small = result["small_critic"]
    for key in ["cut_peak_memory_bytes", "full_peak_memory_bytes", "memory_saving_relative",
                "memory_saving_points_of_machine", "cut_seconds_per_step", "full_seconds_per_step"]:
        assert key in small, key
    assert result["tail_effect"]["early_wrong"]["responses"] > 0
    assert result["calibration"]["samples"] == 16 * sum(r["steps"] for r in result["algos"]["sppo"]["runs"])
    table = (results / "llm_compare.md").read_text()
    assert "- sppo vs grpo final accuracy: difference +0.000 [+0.000, +0.000] -> not distinguishable" in table
    if "matplotlib is not installed" not in out.stderr:
        for png in ["llm_accuracy.png", "llm_tail_effect.png"]:
            assert (results / png).stat().st_size > 0, png
    # no run keeps its checkpoints (~2 GB each for SmolLM2); started again, the benchmark reads the runs it
    # completed instead of repeating them, and a run asked for with other settings is run again
    assert not [p for p in tmp_path.glob("*/checkpoint-*")]
    first = json.load(open(results / "llm_compare.json"))
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("done earlier") == 8, again.stderr[-3000:]
    second = json.load(open(results / "llm_compare.json"))
    for name in RUNS:
        for key in ("curve_mean", "final_accuracy", "seconds_per_step"):
            assert second["algos"][name][key] == first["algos"][name][key], (name, key)
    assert first["settings"]["runs_read_from_earlier_invocation"] == 0
    assert second["settings"]["runs_read_from_earlier_invocation"] == 8
    assert "8 runs read from an earlier invocation" in (results / "llm_compare.md").read_text()
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import llm_compare
    run = tmp_path / "sppo_s1"
    saved = json.load(open(run / "config.json"))
    flags = ["--model", "tiny", "--algo", "sppo", "--batch-size", "16", "--group-size", "8",
             "--minibatches", "2", "--ppo-epochs", "1", "--steps", "1000", "--time-budget", "3",
             "--eval-every-seconds", "0.25", "--data", saved["data"], "--eval-data", saved["eval_data"],
             "--eval-size", "16", "--max-new-tokens", "8", "--critic-layers", "1", "--lr", "6e-05",
             "--seed", "1", "--threads", "1", "--samples-every", "0", "--out", str(run),
             "--critic-lr", "0.0003", "--dump-values", "--patience", "3", "--min-delta", "0.01"]
    assert llm_compare.finished(str(run), ["python", "llm_train.py"] + flags)
    other = flags[:flags.index("--lr") + 1] + ["1e-4"] + flags[flags.index("--lr") + 2:]
    assert not llm_compare.finished(str(run), ["python", "llm_train.py"] + other)
    summary = json.load(open(run / "summary.json"))  # a run stopped by a signal is not done
    (run / "summary.json").write_text(json.dumps({**summary, "interrupted": True}))
    assert not llm_compare.finished(str(run), ["python", "llm_train.py"] + flags)
    (run / "latest").write_text("checkpoint-000001")  # a checkpoint of the same settings: continued, not redone
    assert llm_compare.started(str(run), ["python", "llm_train.py"] + flags)
    assert not llm_compare.started(str(run), ["python", "llm_train.py"] + other)


@pytest.mark.slow
def test_llm_sweep_quick(tmp_path):
    """--quick --sweep: every algorithm at its first two grid points (the actor lrs, the critic's lr the
    same), one seed, a step budget, validation data; the best mean is chosen; the LoRA recipe is run."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "bench/llm_compare.py", "--quick", "--sweep", "--jobs", "2", "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    swept = json.load(open(tmp_path / "results" / "llm_sweep.json"))
    rows = {(r["algo"], r["lr"], r["critic_lr"]): r for r in swept["rows"]}
    assert set(rows) == {("sppo", 1e-4, 1e-4), ("sppo", 3e-4, 3e-4), ("grpo", 1e-4, None), ("grpo", 3e-4, None),
                         ("ppo", 1e-4, 1e-4), ("ppo", 3e-4, 3e-4)}
    for r in rows.values():
        assert r["seeds"] == [11] and len(r["val_accuracy"]) == 1 and r["mean"] == r["val_accuracy"][0]
    for algo, c in swept["chosen"].items():  # the best mean; a tie (the random model: all 0) the smaller lr
        assert c["val_accuracy_mean"] == max(r["mean"] for r in rows.values() if r["algo"] == algo)
    assert swept["chosen"]["grpo"]["lr"] == 1e-4 and swept["settings"]["steps"] == 2
    assert swept["settings"]["lora"] == 16  # what the comparison checks before it takes the sweep's lrs
    config = json.load(open(tmp_path / "sweep_ppo_lr0.0003_critic0.0003_s11" / "config.json"))
    assert (config["lora"], config["critic_lr"], config["steps"], config["time_budget"]) == (16, 3e-4, 2, 0.0)
    assert config["eval_data"].endswith("val.jsonl")


@pytest.mark.slow
def test_llm_lora_quick(tmp_path):
    """bench/llm_lora.py --quick: full and LoRA at the same 2 training seconds, the four memory settings with
    their plan, and the GPU table from the plan's arithmetic; a second call reads the runs back."""
    pytest.importorskip("peft")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "bench/llm_lora.py", "--quick", "--jobs", "2", "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(tmp_path / "llm_lora.json"))
    runs = result["runs"]
    assert set(runs) == {"full/seed0", "lora/seed0", "memory/full", "memory/grad-checkpointing",
                         "memory/lora_16", "memory/lora_16_+_grad-checkpointing"}
    for name, r in runs.items():
        assert 0 <= r["accuracy"] <= 1 and r["steps"] >= 1 and r["plan_gib"] > 0 and r["peak_gib"] > 0, name
    assert runs["full/seed0"]["train_seconds"] >= 2 and runs["lora/seed0"]["train_seconds"] >= 2
    config = json.load(open(tmp_path / "lora" / "seed0" / "config.json"))
    assert (config["lora"], config["lr"], config["time_budget"]) == (16, 3e-4, 2.0)
    assert result["full"]["accuracy_ci95"][0] <= result["full"]["accuracy_mean"] <= result["full"]["accuracy_ci95"][1]
    fits = result["fits"]
    assert len(fits) == 15 and fits["7B | LoRA 16, small critic, grad-ckpt"]["parts"]["runtime"] == 0
    assert fits["1.5B | LoRA 16, small critic"]["gib"] < fits["1.5B | full, small critic (6 layers)"]["gib"]
    md = (tmp_path / "llm_lora.md").read_text()
    assert "| lora | " in md and "| grad-checkpointing | " in md and "| 7B | full, whole critic | " in md
    stamp = os.path.getmtime(tmp_path / "lora" / "seed0" / "summary.json")
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and os.path.getmtime(tmp_path / "lora" / "seed0" / "summary.json") == stamp


def test_speedup_intervals_on_known_curves():
    """SPPO's seeds reach 0.6 at 100 s, GRPO's at 300 s (peaks 0.6 both): 3x both ways, an interval around it
    that excludes 1; when SPPO never reaches GRPO's peak, 'ours' is undefined with its reason."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import llm_compare
    import numpy as np

    def runs(t_peak, peaks):
        return [{"curve": [dict(train_seconds=0.0, accuracy=0.4), dict(train_seconds=t * 0.9, accuracy=p - 0.05),
                           dict(train_seconds=t, accuracy=p), dict(train_seconds=600.0, accuracy=p)]}
                for t, p in zip(t_peak, peaks)]
    grid = np.linspace(0, 600, 601)
    sp = llm_compare.speedup_intervals(runs([95, 100, 105], [0.6] * 3), runs([290, 300, 310], [0.6] * 3), grid)
    assert abs(sp["paper_way"] - 3) < 0.05 and abs(sp["ours"] - 3) < 0.05
    for key in ("paper_way", "ours"):
        lo, hi = sp[f"{key}_ci95"]
        assert 1 < lo <= sp[key] <= hi < 4 and sp[f"{key}_verdict"] == "SPPO sooner", key
    below = llm_compare.speedup_intervals(runs([100] * 3, [0.5] * 3), runs([300] * 3, [0.6] * 3), grid)
    assert below["ours"] is None and "stays below GRPO's mean peak" in below["ours_reason"]
    assert below["paper_way_verdict"] == "SPPO sooner"
