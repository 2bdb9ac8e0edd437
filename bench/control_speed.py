"""Speed of control.py's training loop next to the raw env.step rate of the same vector env.

    python bench/control_speed.py                      # all five envs, about 10 minutes
    python bench/control_speed.py --quick --envs CartPole-v1
    python bench/control_speed.py --baseline 5a45fbb   # also the training loop of control.py at that commit

Raw: control.make_envs(env, num_envs) (the vector env training uses, with the env's default num_envs)
stepped with random actions, no policy, no learning; raw async: the same with vectorization_mode="async"
(subprocesses), to see whether it would pay on this machine. Train: a short `python control.py --env ENV`
run with default settings, its steps_per_second from summary.json (env steps of real episodes over the
training time, updates included, the final evaluation excluded). Every measurement runs one at a time,
one thread (OMP_NUM_THREADS=1), alternating between the rounds, and the table shows the median of the
rounds: on a shared machine timings are noisy, so compare numbers of one run only.
Writes bench/results/control_speed.{md,json} (--quick: bench/runs/results/; or under --out), keeping the
rows of envs not measured this time; every row says its date, rounds and baseline.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import control  # noqa: E402  (after the path: the bench runs from any folder)

# training steps per run: long enough for CartPole's episodes to grow well past those of random play
STEPS = {"CartPole-v1": 200_000, "MountainCar-v0": 100_000, "LunarLander-v3": 100_000,
         "Pendulum-v1": 100_000, "Hopper-v5": 50_000}
QUICK_STEPS = {"CartPole-v1": 30_000, "MountainCar-v0": 15_000, "LunarLander-v3": 15_000,
               "Pendulum-v1": 15_000, "Hopper-v5": 5_000}


def raw_rate(envs, seconds):
    """Sub-env steps per second of envs stepped with random actions (an autoreset restarts ended ones)."""
    envs.reset(seed=0)
    envs.action_space.seed(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envs.step(envs.action_space.sample())
        steps += envs.num_envs
    rate = steps / (time.perf_counter() - start)
    envs.close()
    return rate


def train_rate(code_dir, env, total_steps, out):
    """steps_per_second of one control.py run (the control.py in code_dir), default settings."""
    cmd = [sys.executable, os.path.join(code_dir, "control.py"), "--env", env,
           "--total-steps", str(total_steps), "--eval-episodes", "1", "--out", out, "--overwrite"]
    subprocess.run(cmd, cwd=code_dir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)["steps_per_second"]


def checkout(rev, folder):
    """control.py and sppo.py as they were at git revision rev, into folder (for --baseline)."""
    for name in ("control.py", "sppo.py"):
        show = ["git", "show", f"{rev}:{name}"]
        text = subprocess.run(show, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return folder


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=list(control.ENVS), choices=list(control.ENVS))
    p.add_argument("--quick", action="store_true", help="short runs and one round: a check that it works")
    p.add_argument("--rounds", type=int, default=None, help="times each is measured (default 3, quick 1)")
    p.add_argument("--baseline", metavar="REV", help="also time control.py of this git revision (e.g. main)")
    p.add_argument("--out", help="writes OUT/results/control_speed.* (default bench/; --quick: bench/runs/)")
    args = p.parse_args()
    args.out = args.out or os.path.join(ROOT, "bench", "runs" if args.quick else "")
    os.environ["OMP_NUM_THREADS"] = "1"
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = 1.0 if args.quick else 3.0
    work = tempfile.mkdtemp(prefix="control_speed_")
    base_dir = args.baseline and checkout(args.baseline, tempfile.mkdtemp(prefix="control_base_"))
    results = {}
    for env in args.envs:
        n = control.ENVS[env]["config"].get("num_envs", control.Config.num_envs)
        steps = (QUICK_STEPS if args.quick else STEPS)[env]
        m = {"raw": [], "raw_async": [], "train": [], "baseline": []}
        for _ in range(rounds):  # alternate, so a change in the machine's load hits every column alike
            m["raw"].append(raw_rate(control.make_envs(env, n), seconds))
            if env != "CartPole-v1":  # the numpy-batched CartPole has no subprocess version
                async_envs = gym.make_vec(env, num_envs=n, vectorization_mode="async")
                m["raw_async"].append(raw_rate(async_envs, seconds))
            m["train"].append(train_rate(ROOT, env, steps, os.path.join(work, env)))
            if base_dir:
                m["baseline"].append(train_rate(base_dir, env, steps, os.path.join(work, env + "_base")))
        r = {k: float(np.median(v)) if v else None for k, v in m.items()}
        results[env] = dict(num_envs=n, train_steps=steps, raw_steps_per_second=r["raw"],
                            raw_async_steps_per_second=r["raw_async"], train_steps_per_second=r["train"],
                            train_fraction_of_raw=r["train"] / r["raw"], baseline=args.baseline,
                            baseline_train_steps_per_second=r["baseline"], measured=measured(), rounds=m)
        print(env, {k: round(v) if isinstance(v, float) and v > 1 else v for k, v in results[env].items()
                    if k != "rounds"}, flush=True)
    path = os.path.join(args.out, "results", "control_speed")
    if not args.quick and os.path.exists(path + ".json"):  # keep the rows of envs not measured this time
        with open(path + ".json") as f:
            earlier = json.load(f)["results"]
        results = {env: results.get(env) or earlier[env] for env in control.ENVS
                   if env in results or env in earlier}

    def fmt(x):
        return "-" if x is None else f"{x:.0f}"
    lines = ["| env | sub-envs | raw env.step steps/s | raw async steps/s | train loop steps/s | train/raw "
             "| baseline train steps/s | speed-up | measured (rounds) |", "|---" * 9 + "|"]
    for env, r in results.items():
        b = r.get("baseline_train_steps_per_second")
        base = f"{b:.0f} ({r['baseline']}) | {r['train_steps_per_second'] / b:.2f}x" if b else "- | -"
        lines.append(f"| {env} | {r['num_envs']} | {fmt(r['raw_steps_per_second'])} | "
                     f"{fmt(r['raw_async_steps_per_second'])} | {fmt(r['train_steps_per_second'])} | "
                     f"{r['train_fraction_of_raw']:.0%} | {base} | {r.get('measured', '-')} "
                     f"({len(r['rounds']['train'])}) |")
    table = "\n".join(lines) + "\n\nEach figure: the median of its row's rounds, measured one at a time.\n"
    print("\n" + table)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".md", "w") as f:
        f.write(table)
    with open(path + ".json", "w") as f:
        json.dump(dict(quick=args.quick, results=results), f, indent=2)


def measured():
    return f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
