"""Measure control.py's default SPPO runs against the targets of the core issue, print a markdown table.

    python bench/control_targets.py              # CartPole x 5 seeds, the other envs x 3 seeds, from seed 101
    python bench/control_targets.py --envs CartPole-v1 --seeds 5 --jobs 2

Each run is `python control.py --env ENV --algo sppo --seed S --out DIR --overwrite` with default settings
and one torch thread, in its own process (control_suite.run); --jobs runs that many side by side (this
machine has 2 cores). Seeds start at --first-seed (101: seeds 1-3 were used for tuning); CartPole gets at
least 5. Success is the final evaluation (100 unseen episodes): mean over seeds with its 95% percentile
bootstrap interval (control_suite.bootstrap_ci), and the worst seed. It also times the raw env.step rate of
the same vector envs with random actions, to compare with the training loop's env steps per second.
Writes RESULTS/control_targets.{md,json} (default bench/results); envs measured in an earlier call stay in
them, the ones measured now are replaced.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import control  # noqa: E402
from control_suite import TARGETS, bootstrap_ci, run_all  # noqa: E402


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
    p.add_argument("--first-seed", type=int, default=101, help="seeds 1-3 were used for tuning")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_targets"))
    p.add_argument("--results", default=os.path.join(ROOT, "bench", "results"), help="tables")
    args = p.parse_args()
    os.makedirs(args.results, exist_ok=True)
    n_seeds = {env: max(5, args.seeds) if env == "CartPole-v1" else args.seeds for env in args.envs}
    jobs = [(env, "sppo", seed, os.path.join(args.out, f"{env}_sppo_{seed}"))
            for env in args.envs for seed in range(args.first_seed, args.first_seed + n_seeds[env])]
    summaries = run_all(jobs, args.jobs)
    results = {}
    for env in args.envs:
        runs = [s for s in summaries if s["env"] == env]
        success = [s["success_rate"] for s in runs]
        results[env] = dict(
            seeds=[s["seed"] for s in runs], target=TARGETS[env], success_rates=success,
            success_rate_mean=float(np.mean(success)), ci95=bootstrap_ci(success),
            success_rate_min=float(np.min(success)),
            return_mean=float(np.mean([s["mean_return"] for s in runs])),
            env_steps_median=float(np.median([s["env_steps"] for s in runs])),
            wall_seconds_median=float(np.median([s["wall_seconds"] for s in runs])),
            wall_seconds_max=float(np.max([s["wall_seconds"] for s in runs])),
            train_steps_per_second_median=float(np.median([s["steps_per_second"] for s in runs])),
            raw_env_steps_per_second=raw_step_rate(env, runs[0]["config"]["num_envs"]))
        results[env]["measured"] = (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} "
                                    f"{os.cpu_count()} cores, {args.jobs} run(s) side by side")
    path = os.path.join(args.results, "control_targets.json")
    if os.path.exists(path):  # keep the envs measured earlier, replace the ones measured now
        with open(path) as f:
            results = {**json.load(f), **results}
    results = {env: results[env] for env in control.ENVS if env in results}
    lines = ["| env | target | success mean [95% CI] | min | success per seed | return (mean) | env steps "
             "| wall s (median / max) | train loop steps/s | raw env.step steps/s | measured |",
             "|---" * 11 + "|"]
    for env, r in results.items():
        if "ci95" not in r:  # measured before the bootstrap interval existed: rerun this env
            print(f"{env}: an old entry without ci95 in {path}, left out; measure it again", file=sys.stderr)
            continue
        lines.append(f"| {env} | {r['target']} | {r['success_rate_mean']:.2f} "
                     f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['success_rate_min']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in r['success_rates'])} | {r['return_mean']:.1f} | "
                     f"{r['env_steps_median']:.0f} | "
                     f"{r['wall_seconds_median']:.1f} / {r['wall_seconds_max']:.1f} | "
                     f"{r['train_steps_per_second_median']:.0f} | {r['raw_env_steps_per_second']:.0f} | "
                     f"{r['measured']} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.results, "control_targets.md"), "w") as f:
        f.write(table + "\n")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
