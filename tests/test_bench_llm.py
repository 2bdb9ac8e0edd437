"""bench/llm_compare.py runs end to end in its --quick form (random tiny model, offline, ~30 s on one thread)
and writes the keys that bench/README.md relies on."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_llm_compare_quick(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "bench/llm_compare.py", "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = tmp_path / "results"
    result = json.load(open(results / "llm_compare.json"))
    assert result["quick"] and "speedup_vs_grpo" in result and "grpo_best_accuracy" in result
    assert set(result["results"]) == {"sppo", "grpo", "ppo", "sppo_full_critic"}
    for name, r in result["results"].items():
        assert r["curve"][0]["step"] == 0 and r["curve"][-1]["step"] == r["steps"], name
        assert all({"train_seconds", "generated_tokens", "eval_accuracy"} <= set(c) for c in r["curve"]), name
        assert "wall_seconds_to_grpo_best" in r, name
        assert r["peak_memory_bytes"] > 0 and r["seconds_per_step"] > 0, name
    # --eval-every reaches the curve
    assert [c["step"] for c in result["results"]["grpo"]["curve"]] == [0, 1, 2]
    assert result["results"]["grpo"]["samples_per_step"] == 8 * result["results"]["sppo"]["samples_per_step"]
    small = result["small_critic"]
    for key in ["cut_peak_memory_bytes", "full_peak_memory_bytes", "memory_saving", "cut_seconds_per_step",
                "full_seconds_per_step", "cut_final_accuracy", "full_final_accuracy"]:
        assert key in small, key
    tail = result["tail_effect"]  # the random model never answers right: only wrong responses to bin
    assert tail["early_wrong"]["responses"] > 0 and len(tail["late_wrong"]["mean_value"]) == 10
    calib = result["calibration"]
    assert calib["samples"] == 6 * 4 and sum(b["count"] for b in calib["bins"]) == calib["samples"]
    table = (results / "llm_compare.md").read_text()
    assert "| sppo | 6 | 4 |" in table and "| grpo | 2 | 32 |" in table and "| cut | 1 |" in table
    if "matplotlib is not installed" not in out.stderr:
        for png in ["llm_accuracy.png", "llm_tail_effect.png"]:
            assert (results / png).stat().st_size > 0, png
