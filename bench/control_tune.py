"""Tune sppo, grpo and token-level ppo the same way on each control env: the same number of configurations
each, the same budget, the same two tuning seeds (never the suite's).

    python bench/control_tune.py --jobs 2                 # every env; resumable: finished runs are read back
    python bench/control_tune.py --envs CartPole-v1 --jobs 1
    python bench/control_tune.py --quick                  # CartPole, tiny budget, one seed: a smoke test

Each configuration is `python control.py --env ENV --algo ALGO --seed S FLAGS --total-steps BUDGET
--eval-episodes 100 --out DIR --overwrite` with OMP_NUM_THREADS=1: the env's defaults plus one change (GRID).
Every algorithm gets SIX configurations an env, one change at a time from its defaults:
  sppo: defaults, lr x3, lr /3, epochs x2, episodes x2, critic lr x3
  grpo: defaults (group 8), lr x3, lr /3, epochs x2, group 4, group 16
  ppo : gamma 1 and lambda 1, lambda 0.95, lr x3, lr /3, epochs x2, episodes x2 (gamma 1 in all: the
        outcome is not discounted, see SPPO.md; the others at lambda 1: a first pass at lambda 0.95 learnt
        nothing on CartPole and Pendulum, where lambda 1 reached 0.96 and 0.76)
Phase 1 runs each algorithm's first configuration on both tuning seeds; one that reaches 0.95 success on
both needs no more tuning on that env (its other five are not run). Phase 2 runs the rest. The winner is the
configuration with the highest mean final success over the two seeds (ties: the higher mean outcome).
Writes RESULTS/control_tune.{md,json}. Run folders go to OUT/ENV/ALGO_NAME_SEED (default runs/tune); a run
whose folder is gone (another machine) is read back from RESULTS/control_tune.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNE_SEEDS = (11, 12)  # the suite uses 101 and up
ENOUGH = 0.95  # success on both tuning seeds with the defaults: no more tuning needed
# the env defaults the grid scales (control.py's ENVS at the time of tuning): lr, critic lr, epochs, episodes
BASE = {"CartPole-v1": (1e-3, 1e-3, 2, 256), "MountainCar-v0": (1e-3, 1e-3, 4, 64),
        "Pendulum-v1": (1e-3, 1e-3, 8, 64), "LunarLander-v3": (1e-3, 1e-3, 8, 32),
        "Hopper-v5": (3e-4, 1e-3, 8, 32)}
BUDGET = {"CartPole-v1": 1_000_000, "MountainCar-v0": 1_000_000, "Pendulum-v1": 2_000_000,
          "LunarLander-v3": 2_000_000, "Hopper-v5": 1_000_000}
QUICK_BUDGET = 20_000


def grid(env, algo):
    """The six (name, flags) configurations of algo on env; the first is the algorithm's defaults."""
    lr, critic_lr, epochs, episodes = BASE[env]
    common = [("lr x3", ["--lr", f"{lr * 3:g}"]), ("lr /3", ["--lr", f"{lr / 3:g}"]),
              ("epochs x2", ["--update-epochs", str(epochs * 2)])]
    if algo == "sppo":
        return [("defaults", [])] + common + [("episodes x2", ["--episodes", str(episodes * 2)]),
                                              ("critic lr x3", ["--critic-lr", f"{critic_lr * 3:g}"])]
    if algo == "grpo":
        g = ["--group-size", "8"]
        return ([("defaults", g)] + [(n, g + f) for n, f in common]
                + [("group 4", ["--group-size", "4"]), ("group 16", ["--group-size", "16"])])
    g1 = ["--gamma", "1", "--lam", "1"]  # ppo: an undiscounted outcome, lambda 1 as verl (VC-PPO's critic)
    return ([("lambda 1.0", g1), ("lambda 0.95", ["--gamma", "1", "--lam", "0.95"])]
            + [(n, g1 + f) for n, f in common] + [("episodes x2", g1 + ["--episodes", str(episodes * 2)])])


EARLIER = {}  # rows of the results file, by what ran: a run whose folder is gone is read from there


def run(root, env, algo, name, flags, seed, out, budget, eval_episodes):
    """One control.py run (read back if it already finished with these flags); its summary's numbers."""
    out = os.path.abspath(out)
    cmd = [sys.executable, "control.py", "--env", env, "--algo", algo, "--seed", str(seed), *flags,
           "--total-steps", str(budget), "--eval-episodes", str(eval_episodes), "--threads", "1",
           "--out", out, "--overwrite"]
    key = json.dumps([env, algo, seed, flags, budget, eval_episodes])
    path = os.path.join(out, "summary.json")
    summary = json.load(open(path)) if os.path.isfile(path) else {}
    if summary.get("success_rate") is None or summary.get("command") != cmd[2:]:
        if key in EARLIER:
            return EARLIER[key]
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out + ".log", "w") as log:
            done = subprocess.run(cmd, cwd=root, stdout=log, stderr=log,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {out}.log")
        summary = json.load(open(path))
        summary.update(command=cmd[2:], finished=time.strftime("%Y-%m-%d %H:%M"))  # a rerun reuses only this
        json.dump(summary, open(path, "w"), indent=1)
    return dict(env=env, algo=algo, name=name, flags=flags, seed=seed, budget=budget,
                eval_episodes=eval_episodes, success_rate=summary["success_rate"],
                mean_outcome=summary["mean_outcome"], mean_return=summary["mean_return"],
                train_seconds=summary["train_seconds"], wall_seconds=summary["wall_seconds"],
                finished=summary.get("finished"))


def run_all(jobs, n_jobs, done=lambda runs: None):
    """The runs of jobs, n_jobs side by side; done(runs so far) after each, so a kill loses one run."""
    finished = []
    with ThreadPoolExecutor(n_jobs) as pool:
        for future in as_completed([pool.submit(run, *job) for job in jobs]):
            finished.append(future.result())
            done(finished)
    return finished


def table(runs, env, algo):
    """Per configuration: success per seed, means; and the winner's name."""
    rows = {}
    for r in runs:
        if (r["env"], r["algo"]) == (env, algo):
            rows.setdefault(r["name"], dict(flags=r["flags"], seeds=[], success=[], outcome=[],
                                            train_seconds=[]))
            row = rows[r["name"]]
            for key, value in (("seeds", r["seed"]), ("success", r["success_rate"]),
                               ("outcome", r["mean_outcome"]), ("train_seconds", r["train_seconds"])):
                row[key].append(value)
    for row in rows.values():
        row["success_mean"] = sum(row["success"]) / len(row["success"])
        row["outcome_mean"] = sum(row["outcome"]) / len(row["outcome"])
    winner = max(rows, key=lambda n: (rows[n]["success_mean"], rows[n]["outcome_mean"])) if rows else None
    return rows, winner


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=list(BASE), choices=list(BASE))
    p.add_argument("--algos", nargs="+", default=["sppo", "grpo", "ppo"], choices=["sppo", "grpo", "ppo"])
    p.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    p.add_argument("--quick", action="store_true", help="CartPole, a 20k-step budget, one seed, 20 episodes")
    p.add_argument("--root", default=ROOT, help="the folder whose control.py runs (default: this repo)")
    p.add_argument("--out", default=None, help="run folders (default runs/tune, runs/tune_quick)")
    p.add_argument("--results", default=None, help="tables (default bench/results; OUT with --quick)")
    a = p.parse_args()
    envs, seeds = (["CartPole-v1"], TUNE_SEEDS[:1]) if a.quick else (a.envs, TUNE_SEEDS)
    out = a.out or os.path.join(ROOT, "runs", "tune_quick" if a.quick else "tune")
    results = a.results or (out if a.quick else os.path.join(ROOT, "bench", "results"))
    start = time.time()
    path = os.path.join(results, "control_tune.json")
    for r in json.load(open(path))["runs"] if os.path.exists(path) else []:
        budget, episodes = r.get("budget", BUDGET[r["env"]]), r.get("eval_episodes", 100)
        EARLIER[json.dumps([r["env"], r["algo"], r["seed"], r["flags"], budget, episodes])] = r

    def jobs(env, algo, configs):
        budget = QUICK_BUDGET if a.quick else BUDGET[env]
        return [(a.root, env, algo, name, flags, seed,
                 os.path.join(out, env, f"{algo}_{name.replace(' ', '_').replace('/', 'div')}_{seed}"),
                 budget, 20 if a.quick else 100) for name, flags in configs for seed in seeds]
    pairs = [(env, algo) for env in envs for algo in a.algos]
    def save(runs):  # the results file after every run: a run that finished is never lost
        write(runs, envs, a, results, time.time() - start)
    runs = run_all([j for env, algo in pairs for j in jobs(env, algo, grid(env, algo)[:1])], a.jobs, save)
    rest = [(env, algo) for env, algo in pairs
            if not all(r["success_rate"] >= ENOUGH for r in runs if (r["env"], r["algo"]) == (env, algo))]
    runs += run_all([j for env, algo in rest for j in jobs(env, algo, grid(env, algo)[1:])], a.jobs,
                    lambda more: save(runs + more))
    print("\n".join(write(runs, envs, a, results, time.time() - start)))


def write(runs, envs, a, results, seconds):
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, "control_tune.json")
    earlier = json.load(open(path)) if os.path.exists(path) and not a.quick else {"runs": []}
    now = {(x["env"], x["algo"], x["name"], x["seed"]) for x in runs}  # earlier rows stay unless run again
    keep = [r for r in earlier["runs"] if (r["env"], r["algo"], r["name"], r["seed"]) not in now
            and (r["name"], r["flags"]) in [(n, f) for n, f in grid(r["env"], r["algo"])]]  # not an old grid
    def order(r):  # env, algorithm, configuration, seed: the same file whatever order the runs ended in
        names = [n for n, _ in grid(r["env"], r["algo"])]
        algo = ("sppo", "grpo", "ppo").index(r["algo"])
        return list(BASE).index(r["env"]), algo, names.index(r["name"]), r["seed"]
    runs = sorted(keep + runs, key=order)
    lines = [f"Tuning seeds {', '.join(map(str, TUNE_SEEDS))}; budget per run: the env's default env steps; "
             f"one torch thread a run, {a.jobs} side by side; this call {seconds:.0f} s. "
             "**bold**: the winner (highest mean success; ties: mean outcome).", "",
             "| env | algo | configuration | success per seed | success mean | outcome mean "
             "| train s (mean) |",
             "|---|---|---|---|---|---|---|"]
    winners = {}
    for env in BASE:
        for algo in ("sppo", "grpo", "ppo"):
            rows, win = table(runs, env, algo)
            if not rows:
                continue
            winners.setdefault(env, {})[algo] = dict(name=win, flags=rows[win]["flags"],
                                                     success_mean=rows[win]["success_mean"],
                                                     complete=len(rows) in (1, 6))
            for name, row in rows.items():
                label = f"**{name}**" if name == win else name
                per_seed = ", ".join(f"{s:.2f}" for s in row["success"])
                lines.append(f"| {env} | {algo} | {label} | {per_seed} | "
                             f"{row['success_mean']:.2f} | {row['outcome_mean']:.3f} | "
                             f"{sum(row['train_seconds']) / len(row['train_seconds']):.0f} |")
    with open(os.path.join(results, "control_tune.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(seeds=TUNE_SEEDS, enough=ENOUGH, winners=winners, runs=runs), f, indent=1)
    os.replace(path + ".tmp", path)
    return lines


if __name__ == "__main__":
    main()
