"""SPPO vs token-level PPO vs GRPO (8 episodes per seed) on the five control tasks, equal env-step budgets.

    python bench/control_suite.py            # 5 envs x 3 algos x 3 seeds, about an hour on 1 core
    python bench/control_suite.py --quick    # 1 seed, small budgets, a few minutes

Every run is `python control.py --env ENV --algo ALGO --seed S --total-steps BUDGET` with the env's
default settings otherwise, one torch thread, --jobs runs side by side. Learning curves use each
update's batch success rate: every training episode starts from a fresh seed, so a batch is an
unbiased sample of the current policy on unseen starts, at no extra cost. "Steps to target" is the
first update whose batch success rate reaches the env's target from the core issue.
Writes RESULTS/control_suite.{md,json} and RESULTS/control_<env>.png (plots need matplotlib).
"""
import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGOS = ["sppo", "ppo", "grpo"]
TARGETS = {"CartPole-v1": 0.95, "MountainCar-v0": 0.8, "LunarLander-v3": 0.7, "Pendulum-v1": 0.8,
           "Hopper-v5": 0.5}
BUDGETS = {"CartPole-v1": 300_000, "MountainCar-v0": 600_000, "LunarLander-v3": 600_000,
           "Pendulum-v1": 1_000_000, "Hopper-v5": 300_000}
QUICK_BUDGETS = {"CartPole-v1": 60_000, "MountainCar-v0": 100_000, "LunarLander-v3": 60_000,
                 "Pendulum-v1": 100_000, "Hopper-v5": 30_000}


def run(env, algo, seed, budget, out_root, eval_episodes):
    out = os.path.join(out_root, f"{env}_{algo}_{seed}")
    cmd = [sys.executable, "control.py", "--env", env, "--algo", algo, "--seed", str(seed), "--total-steps",
           str(budget), "--group-size", "8", "--eval-episodes", str(eval_episodes), "--out", out,
           "--overwrite"]  # a rerun replaces its own runs
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    curve = [(int(r["env_steps"]), float(r["wall_seconds"]), float(r["success_rate"])) for r in rows]
    hit = next((c for c in curve if c[2] >= TARGETS[env]), None)
    return dict(env=env, algo=algo, seed=seed, success_rate=summary["success_rate"],
                mean_return=summary["mean_return"], env_steps=summary["env_steps"],
                wall_seconds=summary["wall_seconds"], steps_to_target=hit and hit[0],
                seconds_to_target=hit and hit[1], curve=curve)


def median(xs):
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def plot(env, runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for algo, color in zip(ALGOS, ("C0", "C1", "C2")):
        for i, r in enumerate(x for x in runs if x["algo"] == algo):
            steps, _, success = zip(*r["curve"])
            ax.plot(steps, success, color=color, alpha=0.8, lw=1, label=algo if i == 0 else None)
    ax.axhline(TARGETS[env], color="grey", ls=":", lw=1)
    ax.set(title=env, xlabel="env steps", ylabel="batch success rate", ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="1 seed, small budgets, 20 eval episodes")
    p.add_argument("--envs", nargs="+", default=list(BUDGETS))
    p.add_argument("--seeds", type=int, default=None, help="default 3, or 1 with --quick")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=None, help="run folders (default runs/bench_suite[_quick])")
    p.add_argument("--results", default=None,
                   help="tables and plots (default bench/results, runs/... with --quick)")
    args = p.parse_args()
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    seeds = args.seeds or (1 if args.quick else 3)
    tag = "bench_suite_quick" if args.quick else "bench_suite"
    out = args.out or os.path.join(ROOT, "runs", tag)
    results_dir = args.results or (os.path.join(out, "results") if args.quick
                                   else os.path.join(ROOT, "bench", "results"))
    os.makedirs(results_dir, exist_ok=True)
    jobs = [(env, algo, seed) for env in args.envs for seed in range(1, seeds + 1) for algo in ALGOS]
    jobs.sort(key=lambda j: -budgets[j[0]] * (4 if j[0] == "Hopper-v5" else 1))  # longest first
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: run(*j, budgets[j[0]], out, 20 if args.quick else 100), jobs))
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"{time.strftime('%Y-%m-%d')}, {args.jobs} runs side by side, "
               f"{time.time() - start:.0f} s in all")
    table = {}
    lines = [f"Machine: {machine}.", "",
             "| env | algo | budget | success (median) | min-max | return (median) "
             "| steps to target (median) | seconds to target (median) | runs reaching target "
             "| wall s (median) |", "|---" * 10 + "|"]
    for env in args.envs:
        for algo in ALGOS:
            rs = [r for r in runs if r["env"] == env and r["algo"] == algo]
            s = [r["success_rate"] for r in rs]
            table.setdefault(env, {})[algo] = dict(
                success_rate_median=median(s), success_rate_min=min(s), success_rate_max=max(s),
                return_median=median([r["mean_return"] for r in rs]), env_steps=budgets[env],
                wall_seconds=median([r["wall_seconds"] for r in rs]),
                steps_to_target_median=median([r["steps_to_target"] for r in rs]),
                seconds_to_target_median=median([r["seconds_to_target"] for r in rs]),
                reached_target=sum(r["steps_to_target"] is not None for r in rs),
                seeds=[r["seed"] for r in rs])
            t = table[env][algo]
            lines.append(f"| {env} | {algo} | {budgets[env]:,} | {t['success_rate_median']:.2f} | "
                         f"{t['success_rate_min']:.2f}-{t['success_rate_max']:.2f} | "
                         f"{t['return_median']:.1f} | {fmt(t['steps_to_target_median'], ',.0f')} | "
                         f"{fmt(t['seconds_to_target_median'], '.1f')} | "
                         f"{t['reached_target']}/{len(rs)} | {t['wall_seconds']:.1f} |")
        try:
            plot(env, [r for r in runs if r["env"] == env], os.path.join(results_dir, f"control_{env}.png"))
        except ImportError:
            print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(results_dir, "control_suite.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(results_dir, "control_suite.json"), "w") as f:
        json.dump(dict(machine=machine, quick=args.quick, results=table, runs=runs), f, indent=1)


if __name__ == "__main__":
    main()
