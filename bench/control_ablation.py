"""The ablation table of SPPO's tuning: each variant of VARIANTS is `control.py --algo sppo` with its flags.

    python bench/control_ablation.py           # every variant x 3 seeds (101, 102, 103), 2 runs side by side
    python bench/control_ablation.py --only "lr 3e-4" --seeds 5 --jobs 1
    python bench/control_ablation.py --quick   # tiny budgets, 1 seed, into runs/: a smoke test

A variant runs `python control.py --env ENV --algo sppo --seed S FLAGS --out DIR --overwrite` for each seed,
OMP_NUM_THREADS=1; its budget is the env's default in control.py unless FLAGS hold --total-steps (--quick
overrides both with QUICK_STEPS). Success and return are control.py's final evaluation (100 unseen episodes);
the mean success over seeds comes with the 95% percentile bootstrap interval of control_suite.py.
Writes RESULTS/control_ablation.{md,json}; variants run in an earlier call stay in them (merged by name, the
ones run now replace theirs), so the table can be built in several calls.
"""
import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from control_suite import FIRST_SEED, ROOT, bootstrap_ci, machine, mean, run_all  # noqa: E402

# (name, env, flags for control.py, note): the name is the key of the merged table. Each env's "defaults"
# row is not run here: it is read from the sppo runs in bench/results/control_suite.json (the same command on
# the same seeds).
VARIANTS = [
    ("LunarLander: 8 epochs", "LunarLander-v3", ["--update-epochs", "8"],
     "measured against 16 epochs, then the default; 8 is the default again since"),
    ("CartPole: no dual-clip", "CartPole-v1", ["--dual-clip", "0"],
     "plain PPO clip; the authors' loss adds dual-clip c = 3 on A < 0"),
    ("Pendulum: 16 sub-envs, 32 episodes", "Pendulum-v1", ["--num-envs", "16", "--episodes", "32"],
     "the earlier default batch (3M steps then; 64 units, the default then)"),
    ("Pendulum: 64 hidden units", "Pendulum-v1", ["--hidden", "64"],
     "the default before issue 12; 32 since, for speed: the update's cost grows with the width"),
    ("LunarLander: 32 hidden units", "LunarLander-v3", ["--hidden", "32"],
     "for speed (issue 12): the update's cost grows with the width"),
    ("LunarLander: 4 epochs", "LunarLander-v3", ["--update-epochs", "4"],
     "for speed (issue 12): half the update's passes"),
    ("LunarLander: 2 minibatches", "LunarLander-v3", ["--num-minibatches", "2"],
     "for speed (issue 12): half the optimiser steps, each on twice the steps"),
]
QUICK_STEPS = 5_000


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run these variants only")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per variant from {FIRST_SEED} (default 3)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} env steps, 1 seed, 20 eval episodes")
    p.add_argument("--out", default=None, help="run folders (default runs/bench_ablation[_quick])")
    p.add_argument("--results", default=None,
                   help="tables (default bench/results, OUT/results with --quick)")
    args = p.parse_args(argv)
    unknown = set(args.only or ()) - {v[0] for v in VARIANTS}
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; VARIANTS has {[v[0] for v in VARIANTS]}")
    variants = [v for v in VARIANTS if args.only is None or v[0] in args.only]
    seeds = list(range(FIRST_SEED, FIRST_SEED + (args.seeds or (1 if args.quick else 3))))
    out = args.out or os.path.join(ROOT, "runs", "bench_ablation_quick" if args.quick else "bench_ablation")
    results_dir = args.results or (os.path.join(out, "results") if args.quick
                                   else os.path.join(ROOT, "bench", "results"))
    os.makedirs(results_dir, exist_ok=True)
    quick_flags = ["--total-steps", str(QUICK_STEPS)] if args.quick else []  # after the variant's: it wins
    folder = {name: os.path.join(out, re.sub(r"[^\w.-]+", "_", name)) for name, *_ in variants}  # no spaces
    jobs = [(name, (env, "sppo", seed, os.path.join(folder[name], f"{env}_sppo_{seed}"), flags + quick_flags,
                    20 if args.quick else 100)) for name, env, flags, _ in variants for seed in seeds]
    start = time.time()
    runs = run_all([job for _, job in jobs], args.jobs)
    info = machine(args.jobs, time.time() - start)
    path = os.path.join(results_dir, "control_ablation.json")
    table = json.load(open(path))["results"] if os.path.exists(path) else {}
    for name, env, flags, note in variants:
        rs = [r for r, (job_name, _) in zip(runs, jobs) if job_name == name]
        s = [r["success_rate"] for r in rs]
        table[name] = dict(env=env, flags=flags, change=" ".join(flags) or "none", note=note,
                           budget=rs[0]["config"]["total_steps"], success_rate_mean=mean(s),
                           ci95=bootstrap_ci(s), success_rates=s, seeds=[r["seed"] for r in rs],
                           return_mean=mean([r["mean_return"] for r in rs]), quick=args.quick,
                           measured=info, runs=rs)
    suite_path = os.path.join(ROOT, "bench", "results", "control_suite.json")
    suite_runs = json.load(open(suite_path))["runs"] if os.path.exists(suite_path) and not args.quick else []
    for env in dict.fromkeys(env for _, env, *_ in VARIANTS):  # each env's defaults: the suite's sppo runs
        rs = [r for r in suite_runs if (r["env"], r["algo"]) == (env, "sppo") and r["seed"] in seeds]
        if rs:
            s = [r["success_rate"] for r in rs]
            table[f"{env.split('-')[0]}: defaults"] = dict(
                env=env, flags=[], change="none", budget=rs[0]["config"]["total_steps"],
                note="the suite's sppo runs: {update_epochs} epochs, {num_envs} sub-envs, {episodes} "
                     "episodes per update, {hidden} units".format(**rs[0]["config"]),
                success_rate_mean=mean(s), ci95=bootstrap_ci(s),
                success_rates=s, seeds=[r["seed"] for r in rs], quick=False,
                return_mean=mean([r["mean_return"] for r in rs]), measured="bench/results/control_suite.json")
    envs = [env for _, env, *_ in VARIANTS]  # rows by env (in VARIANTS order), its defaults first
    names = [v[0] for v in VARIANTS]
    order = lambda n: (envs.index(table[n]["env"]) if table[n]["env"] in envs else 99,  # noqa: E731
                       n in names, names.index(n) if n in names else 0)
    table = {name: table[name] for name in sorted(table, key=order)}
    lines = ["| variant | env | change | budget | success mean [95% CI] | success per seed | return (mean) "
             "| note |", "|---" * 8 + "|"]
    for name, t in table.items():
        lines.append(f"| {name} | {t['env']} | `{t['change']}` | {t['budget']:,} | "
                     f"{t['success_rate_mean']:.2f} [{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}] | "
                     f"{', '.join(f'{x:.2f}' for x in t['success_rates'])} | {t['return_mean']:.1f} | "
                     f"{t['note']} |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(results_dir, "control_ablation.md"), "w") as f:
        f.write(text + "\n")
    with open(path, "w") as f:
        json.dump(dict(results=table), f, indent=1)


if __name__ == "__main__":
    main()
