"""Measure control.py's default SPPO runs against the targets of the core issue, print a markdown table.

    python bench/control_targets.py                 # CartPole x 5 seeds, all five envs x 3 seeds
    python bench/control_targets.py --envs CartPole-v1 --seeds 5 --jobs 2

Each run is `python control.py --env ENV --algo sppo --seed S` with default settings and one torch
thread, in its own process; --jobs runs that many side by side (this machine has 2 cores). It also
times the raw env.step rate of the same vector envs with random actions, to compare with the training
loop's env steps per second. Writes bench/results/control_targets.{md,json}; envs measured in an
earlier call stay in them, the ones measured now are replaced.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import control  # noqa: E402

TARGETS = {"CartPole-v1": 0.95, "MountainCar-v0": 0.8, "LunarLander-v3": 0.7, "Pendulum-v1": 0.8,
           "Hopper-v5": 0.5}


def run(env, seed, out_root):
    out = os.path.join(out_root, f"{env}_sppo_{seed}")
    cmd = [sys.executable, "control.py", "--env", env, "--algo", "sppo", "--seed", str(seed), "--out", out,
           "--overwrite"]  # a rerun replaces its own runs
    subprocess.run(cmd, cwd=ROOT, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def raw_step_rate(env, num_envs, seconds=3.0):
    """env.step calls per second of the same vector env with random actions (no policy, no learning)."""
    envs = control.make_envs(env, num_envs)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    n, start = 0, time.time()
    while time.time() - start < seconds:
        envs.step(envs.action_space.sample())
        n += num_envs
    envs.close()
    return n / (time.time() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--envs", nargs="+", default=list(control.ENVS))
    p.add_argument("--seeds", type=int, default=3, help="seeds per env (CartPole always gets at least 5)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_targets"))
    args = p.parse_args()
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    jobs = [(env, seed) for env in args.envs
            for seed in range(1, 1 + (max(5, args.seeds) if env == "CartPole-v1" else args.seeds))]
    with ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(lambda job: run(*job, args.out), jobs))
    results = {}
    for env in args.envs:
        runs = [s for s in summaries if s["env"] == env]
        results[env] = dict(
            seeds=[s["seed"] for s in runs], target=TARGETS[env],
            success_rate_median=float(np.median([s["success_rate"] for s in runs])),
            success_rates=[s["success_rate"] for s in runs],
            return_median=float(np.median([s["mean_return"] for s in runs])),
            env_steps_median=float(np.median([s["env_steps"] for s in runs])),
            wall_seconds_median=float(np.median([s["wall_seconds"] for s in runs])),
            wall_seconds_max=float(np.max([s["wall_seconds"] for s in runs])),
            train_steps_per_second_median=float(np.median([s["steps_per_second"] for s in runs])),
            raw_env_steps_per_second=raw_step_rate(env, runs[0]["config"]["num_envs"]))
        results[env]["measured"] = (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} "
                                    f"{os.cpu_count()} cores, {args.jobs} run(s) side by side")
    path = os.path.join(ROOT, "bench", "results", "control_targets.json")
    if os.path.exists(path):  # keep the envs measured earlier, replace the ones measured now
        with open(path) as f:
            results = {**json.load(f), **results}
    results = {env: results[env] for env in control.ENVS if env in results}
    lines = ["| env | target | success (median) | success per seed | return (median) | env steps "
             "| wall s (median / max) | train loop steps/s | raw env.step steps/s | measured |",
             "|---" * 10 + "|"]
    for env, r in results.items():
        lines.append(f"| {env} | {r['target']} | {r['success_rate_median']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in r['success_rates'])} | {r['return_median']:.1f} | "
                     f"{r['env_steps_median']:.0f} | "
                     f"{r['wall_seconds_median']:.1f} / {r['wall_seconds_max']:.1f} | "
                     f"{r['train_steps_per_second_median']:.0f} | {r['raw_env_steps_per_second']:.0f} | "
                     f"{r['measured']} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(ROOT, "bench", "results", "control_targets.md"), "w") as f:
        f.write(table + "\n")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
