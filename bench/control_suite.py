"""SPPO vs token-level PPO vs GRPO on the five control tasks, equal env-step budgets, each at its own defaults.

    python bench/control_suite.py                      # 5 envs x 3 algos x 5 seeds, --jobs 2 side by side
    python bench/control_suite.py --quick              # 1 seed, small budgets, 20 eval episodes, minutes
    python bench/control_suite.py --envs CartPole-v1 --seeds 8 --jobs 1 --out DIR --results DIR

Every run is `python control.py --env ENV --algo ALGO --seed S --total-steps BUDGETS[ENV] --out DIR
--overwrite` with control.py's defaults otherwise (per env and algorithm: ENVS' algo_config, the winners of
bench/control_tune.py), OMP_NUM_THREADS=1, --jobs runs side by side; a run that finished with the same
command is read back (the suite resumes). BUDGETS are the env-step budgets of the env's defaults, the same
for the three algorithms, so the sppo rows are the default SPPO runs on unseen seeds. Seeds start at 101
(tuning: 11, 12). Success and return: control.py's final evaluation (summary.json: 100 episodes on seeds
training never draws). Each mean over seeds comes with a 95% percentile
bootstrap interval (10,000 resamples of the seeds, a fixed generator seed, so reruns give the same interval).
Verdict per env: SPPO is "ahead of", "behind" or "not distinguishable from" GRPO and PPO, from the bootstrap
interval of the difference of mean success (each side's seeds resampled on their own): entirely above 0,
entirely below 0, or else (and always "not distinguishable" with one seed a side). Learning curves use each
update's batch success rate: every training episode starts from a fresh seed, so a batch is an unbiased
sample of the current policy on unseen starts. "Steps to target" is the first update whose batch success
rate reaches TARGETS[env].
Writes RESULTS/control_suite.{md,json} and RESULTS/control_<env>.png (plots need matplotlib).
The helpers (run, bootstrap_ci, bootstrap_diff, run_all, machine) are shared with control_ablation.py.
"""
import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGOS = ["sppo", "grpo", "ppo"]
TARGETS = {"CartPole-v1": 0.95, "MountainCar-v0": 0.9, "LunarLander-v3": 0.8, "Pendulum-v1": 0.8,
           "Hopper-v5": 0.5}
sys.path.insert(0, ROOT)
import control  # noqa: E402

# every algorithm gets the env-step budget of control.py's SPPO default for that env, so the sppo rows are
# the default runs on unseen seeds
BUDGETS = {env: spec["config"]["total_steps"] for env, spec in control.ENVS.items()}
SEEDS = {env: 5 for env in BUDGETS}
FIRST_SEED = 101  # bench/control_tune.py tunes on seeds 11 and 12
QUICK_BUDGETS = {"CartPole-v1": 60_000, "MountainCar-v0": 60_000, "LunarLander-v3": 20_000,
                 "Pendulum-v1": 30_000, "Hopper-v5": 10_000}  # a smoke test: 5-25 updates per run
# train-loop env steps per second of sppo on one core (about): to start the longest runs first
STEPS_PER_SECOND = {"CartPole-v1": 100_000, "MountainCar-v0": 40_000, "LunarLander-v3": 9_000,
                    "Pendulum-v1": 25_000, "Hopper-v5": 4_500}
RESAMPLES = 10_000
VERDICTS = ("ahead of", "behind", "not distinguishable from")
EARLIER = []  # the runs of RESULTS/control_suite.json: a finished run whose folder is gone is read from it


def run(env, algo, seed, out, flags=(), eval_episodes=100):
    """One control.py run into out, or the run already there if it finished with the same settings (defaults
    included: a call that stopped part way resumes); its summary, batch-success curve and target."""
    out = os.path.abspath(out)  # control.py runs in ROOT
    cmd = [sys.executable, "control.py", "--env", env, "--algo", algo, "--seed", str(seed), *flags,
           "--eval-episodes", str(eval_episodes), "--out", out, "--overwrite"]  # a rerun replaces its own run
    path = os.path.join(out, "summary.json")
    summary = json.load(open(path)) if os.path.isfile(path) else {}
    wanted = dataclasses.asdict(control.make_config(control.parse_args(cmd[2:])))  # defaults resolved too
    same = lambda config: {**config, "out": out} == wanted  # noqa: E731 (the folder may have moved)
    if summary.get("success_rate") is None or summary.get("config") != wanted:
        row = next((r for r in EARLIER if same(r["config"])), None)
        if row is not None:  # its folder is gone (another machine, a clean clone): read back from the json
            return row
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out + ".log", "w") as log:  # beside the run folder, which holds control.py's files only
            done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=log,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            tail = open(out + ".log").read()[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}), end of {out}.log:\n{tail}")
        with open(path) as f:
            summary = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        curve = [(r["env_steps"], r["wall_seconds"], r["success_rate"]) for r in map(json.loads, f)]
    hit = next((c for c in curve if c[2] >= TARGETS[env]), None)
    return dict(env=env, algo=algo, seed=seed, success_rate=summary["success_rate"],
                mean_return=summary["mean_return"], env_steps=summary["env_steps"],
                wall_seconds=summary["wall_seconds"], steps_per_second=summary["steps_per_second"],
                train_seconds=summary["train_seconds"],
                steps_to_target=hit[0] if hit else None, seconds_to_target=hit[1] if hit else None,
                config=summary["config"], curve=curve)


def run_all(jobs, n_jobs):
    """jobs: argument tuples of run(), longest first; n_jobs of them side by side (each uses one core)."""
    with ThreadPoolExecutor(n_jobs) as pool:
        return list(pool.map(lambda job: run(*job), jobs))


def bootstrap_ci(values, resamples=RESAMPLES, seed=0):
    """95% percentile bootstrap interval of the mean of values; [x, x] when all values are x (or just one)."""
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(np.clip(low, x.min(), x.max())), float(np.clip(high, x.min(), x.max()))]  # no float dust


def bootstrap_diff(a, b, resamples=RESAMPLES, seed=0):
    """mean(a) - mean(b), its 95% percentile bootstrap interval (each side resampled on its own), verdict."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, len(a), (resamples, len(a)))].mean(axis=1)
             - b[rng.integers(0, len(b), (resamples, len(b)))].mean(axis=1))
    low, high = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
    if min(len(a), len(b)) < 2:  # one seed says nothing about the spread between seeds
        verdict = VERDICTS[2]
    else:
        verdict = VERDICTS[0] if low > 0 else VERDICTS[1] if high < 0 else VERDICTS[2]
    return dict(difference=float(a.mean() - b.mean()), ci95=[low, high], verdict=verdict)


def runs_of(runs, env):
    return [r for r in runs if r["env"] == env]


def mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def machine(n_jobs, seconds):
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d')}, {n_jobs} runs side by side, {seconds:.0f} s in all")


def summarise(rs, budget):
    """The runs of one env and algorithm: success mean and interval over seeds, return, time to target."""
    s = [r["success_rate"] for r in rs]
    return dict(success_rate_mean=mean(s), ci95=bootstrap_ci(s), success_rates=s,
                seeds=[r["seed"] for r in rs], return_mean=mean([r["mean_return"] for r in rs]),
                env_steps=budget,
                steps_to_target_mean=mean([r["steps_to_target"] for r in rs]),
                seconds_to_target_mean=mean([r["seconds_to_target"] for r in rs]),
                reached_target=sum(r["steps_to_target"] is not None for r in rs),
                wall_seconds_mean=mean([r["wall_seconds"] for r in rs]),
                # per seed (None for runs kept from a call before these were recorded): the training time,
                # final evaluation excluded, and the training loop's env steps per second
                train_seconds=[r.get("train_seconds") for r in rs],
                steps_per_second=[r.get("steps_per_second") for r in rs])


def plot(env, runs, path):
    """Batch success against env steps and against wall seconds: mean over seeds, band min-max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, x, name in zip(axes, (0, 1), ("env steps", "wall seconds")):
        # env steps: where every run has data; seconds: to the slowest run's end, a finished run keeps its
        # last value (its policy no longer changes)
        lo = max(r["curve"][0][x] for r in runs)
        hi = (min if x == 0 else max)(r["curve"][-1][x] for r in runs)
        grid = np.linspace(lo, hi, 200)
        for algo, color in zip(ALGOS, ("C0", "C1", "C2")):
            rs = [r for r in runs if r["algo"] == algo]
            ys = np.array([np.interp(grid, [c[x] for c in r["curve"]], [c[2] for c in r["curve"]]) for r in rs])
            seeds = f"{len(rs)} seed" + "s" * (len(rs) > 1)
            ax.plot(grid, ys.mean(axis=0), color=color, lw=1.5, label=f"{algo} ({seeds})")
            ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.2, lw=0)
        ax.axhline(TARGETS[env], color="grey", ls=":", lw=1, label=f"target {TARGETS[env]}")
        ax.set(title=f"{env}: mean over seeds, band: min-max", xlabel=name, ylabel="batch success rate",
               ylim=(-0.02, 1.02))
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="1 seed, small budgets, 20 eval episodes")
    p.add_argument("--envs", nargs="+", default=list(BUDGETS))
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per env from {FIRST_SEED} (default SEEDS)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=None, help="run folders (default runs/bench_suite[_quick])")
    p.add_argument("--results", default=None,
                   help="tables and plots (default bench/results, OUT/results with --quick)")
    args = p.parse_args(argv)
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    n_seeds = {env: args.seeds or (1 if args.quick else SEEDS[env]) for env in args.envs}
    out = args.out or os.path.join(ROOT, "runs", "bench_suite_quick" if args.quick else "bench_suite")
    results_dir = args.results or (os.path.join(out, "results") if args.quick
                                   else os.path.join(ROOT, "bench", "results"))
    os.makedirs(results_dir, exist_ok=True)
    flags = {env: ["--total-steps", str(budgets[env])] for env in args.envs}  # else control.py's defaults
    eval_episodes = 20 if args.quick else 100
    path = os.path.join(results_dir, "control_suite.json")
    EARLIER.extend(json.load(open(path))["runs"] if os.path.exists(path) else [])
    jobs = [(env, algo, seed, os.path.join(out, f"{env}_{algo}_{seed}"), flags[env], eval_episodes)
            for env in args.envs for seed in range(FIRST_SEED, FIRST_SEED + n_seeds[env]) for algo in ALGOS]
    jobs.sort(key=lambda j: -budgets[j[0]] / STEPS_PER_SECOND[j[0]])  # longest first: the last ones are short
    start = time.time()
    runs = run_all(jobs, args.jobs)
    info = machine(args.jobs, time.time() - start)
    for r in runs:
        r.setdefault("measured", info)  # a run read back from the json keeps its own
    if os.path.exists(path) and not args.quick:  # the envs measured in an earlier call (not in --envs) stay
        earlier = json.load(open(path))
        for r in earlier["runs"]:  # "machine" was one string for all envs before it was one per env
            m = earlier["machine"]
            r.setdefault("measured", m if isinstance(m, str) else m[r["env"]])
        runs = [r for r in earlier["runs"] if r["env"] not in args.envs] + runs
    envs = [env for env in BUDGETS if any(r["env"] == env for r in runs)]
    table, verdicts = {}, {}
    measured = {env: "; ".join(dict.fromkeys(r["measured"] for r in runs_of(runs, env))) for env in envs}
    lines = ["Measured (machine, date, runs side by side, the call's total time):"]
    lines += [f"- {env}: {m}" for env, m in measured.items()] + [""]
    lines += ["| env | algo | budget | success mean [95% CI] | success per seed | return (mean) "
              "| steps to target (mean) | seconds to target (mean) | runs reaching target | wall s (mean) |",
              "|---" * 10 + "|"]
    for env in envs:
        table[env] = {algo: summarise([r for r in runs if (r["env"], r["algo"]) == (env, algo)], budgets[env])
                      for algo in ALGOS}
        for algo, t in table[env].items():
            lines.append(f"| {env} | {algo} | {budgets[env]:,} | {t['success_rate_mean']:.2f} "
                         f"[{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}] | "
                         f"{', '.join(f'{x:.2f}' for x in t['success_rates'])} | {t['return_mean']:.1f} | "
                         f"{fmt(t['steps_to_target_mean'], ',.0f')} | "
                         f"{fmt(t['seconds_to_target_mean'], '.1f')} | "
                         f"{t['reached_target']}/{len(t['seeds'])} | {t['wall_seconds_mean']:.1f} |")
        sppo = table[env]["sppo"]["success_rates"]
        verdicts[env] = {other: bootstrap_diff(sppo, table[env][other]["success_rates"])
                         for other in ("grpo", "ppo")}
        table[env]["verdicts"] = verdicts[env]
        try:
            plot(env, [r for r in runs if r["env"] == env], os.path.join(results_dir, f"control_{env}.png"))
        except ImportError:
            print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
    lines.append("")
    for env, v in verdicts.items():
        lines.append(f"- **{env}** (target {TARGETS[env]}): SPPO is " + " and ".join(
            f"{d['verdict']} {other.upper()} (success difference {d['difference']:+.2f} "
            f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}])" for other, d in v.items()) + ".")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(results_dir, "control_suite.md"), "w") as f:
        f.write(text + "\n")
    with open(path, "w") as f:
        json.dump(dict(machine=measured, quick=args.quick, targets=TARGETS, results=table, runs=runs), f,
                  indent=1)


if __name__ == "__main__":
    main()
