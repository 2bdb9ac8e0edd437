"""The benchmark scripts run end to end in their --quick form and write what the README relies on."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_control_suite_quick(tmp_path):
    out = subprocess.run([sys.executable, "bench/control_suite.py", "--quick", "--envs", "CartPole-v1",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.load(open(tmp_path / "results" / "control_suite.json"))
    cartpole = result["results"]["CartPole-v1"]
    assert set(cartpole) == {"sppo", "ppo", "grpo"}
    for algo, r in cartpole.items():
        assert 0.0 <= r["success_rate_median"] <= 1.0 and r["env_steps"] == 60_000, algo
    assert "| CartPole-v1 | sppo |" in (tmp_path / "results" / "control_suite.md").read_text()
