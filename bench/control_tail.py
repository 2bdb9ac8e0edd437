"""The tail effect on control: where in an episode does token-level PPO's critic V(s_t) tell success from
failure, and how well calibrated is SPPO's sigmoid(V(s_0))?

    python bench/control_tail.py --jobs 2           # every env: one ppo and one sppo run with --dump-values
    python bench/control_tail.py --quick            # CartPole, a small budget: a smoke test

Each run is `python control.py --env ENV --algo ALGO --seed 101 --dump-values FLAGS` at the env's default
budget; FLAGS are the tuning's winner for that env and algorithm (bench/results/control_tune.json) where there
is one, else ppo runs with gamma 1 and lambda 1. values.jsonl holds, for every update, each episode's outcome,
success and (ppo) V(s_t) at t/T = 0, 0.1, ..., 0.9 or (sppo) sigmoid(V(s_0)).
- ppo: per tenth of the episode, the ROC AUC of V(s_t) for success against failure, over the episodes of the
  first and of the last fifth of the updates ("early", "late"); None where one of the two classes is missing.
  The paper's tail effect would show as AUC near 0.5 early in the episode and high only near its end.
- sppo: the Brier score of sigmoid(V(s_0)) against the outcome R it is trained on, and reliability bins
  (mean prediction against mean outcome), early and late.
Writes RESULTS/control_tail.{md,json} and control_tail.png.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from control_suite import BUDGETS, QUICK_BUDGETS, ROOT, run_all  # noqa: E402

SEED = 101
PHASE = 0.2  # early: the first fifth of the updates; late: the last fifth


def auc(pos, neg):
    """ROC AUC = P(V of a success > V of a failure), ties half (Mann-Whitney U from average ranks)."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    x = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average rank of each value, from 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def phases(rows):
    n = max(1, int(len(rows) * PHASE))
    return {"early": rows[:n], "late": rows[-n:]}


def ppo_table(rows):
    out = {}
    for phase, rs in phases(rows).items():
        values = np.concatenate([np.asarray(r["values"], dtype=float) for r in rs])  # [episodes, 10]
        success = np.concatenate([np.asarray(r["success"], dtype=bool) for r in rs])
        out[phase] = dict(updates=[rs[0]["step"], rs[-1]["step"]], successes=int(success.sum()),
                          failures=int((~success).sum()),
                          auc=[auc(values[success, f], values[~success, f]) for f in range(values.shape[1])])
    return out


def sppo_table(rows):
    out = {}
    for phase, rs in phases(rows).items():
        p = np.concatenate([np.asarray(r["pred_success"], dtype=float) for r in rs])
        y = np.concatenate([np.asarray(r["rewards"], dtype=float) for r in rs])
        bins = np.minimum((p * 10).astype(int), 9)
        out[phase] = dict(updates=[rs[0]["step"], rs[-1]["step"]], episodes=len(p),
                          brier=float(np.mean((p - y) ** 2)),
                          bins=[dict(bin=f"{b / 10:.1f}-{(b + 1) / 10:.1f}", episodes=int((bins == b).sum()),
                                     predicted=float(p[bins == b].mean()),
                                     observed=float(y[bins == b].mean()))
                                for b in range(10) if (bins == b).any()])
    return out


def winner_flags(env, algo):
    path = os.path.join(ROOT, "bench", "results", "control_tune.json")
    won = json.load(open(path))["winners"].get(env, {}).get(algo) if os.path.exists(path) else None
    if won:
        return won["flags"]
    return ["--gamma", "1", "--lam", "1"] if algo == "ppo" else []


def fmt(x):
    return "-" if x is None else f"{x:.2f}"


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.0), squeeze=False)
    for ax, (env, r) in zip(axes[0], results.items()):
        for phase, style in (("early", ":"), ("late", "-")):
            a = r["ppo"][phase]["auc"]
            ax.plot([f / 10 for f in range(len(a))], [np.nan if v is None else v for v in a], style,
                    color="C2", marker="o", ms=3, label=f"ppo {phase}")
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set(title=env, xlabel="t / T", ylim=(-0.02, 1.02))
    axes[0][0].set_ylabel("ROC AUC of V(s_t): success vs failure")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=list(BUDGETS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="CartPole, 60k steps, 20 evaluation episodes")
    p.add_argument("--out", default=None, help="run folders (default runs/tail[_quick])")
    p.add_argument("--results", default=None, help="tables, plot (default bench/results; OUT with --quick)")
    a = p.parse_args()
    envs = ["CartPole-v1"] if a.quick else a.envs
    out = a.out or os.path.join(ROOT, "runs", "tail_quick" if a.quick else "tail")
    results_dir = a.results or (out if a.quick else os.path.join(ROOT, "bench", "results"))
    budgets = QUICK_BUDGETS if a.quick else BUDGETS
    jobs = [(env, algo, SEED, os.path.join(out, f"{env}_{algo}"),
             ["--dump-values", "--total-steps", str(budgets[env]), *winner_flags(env, algo)],
             20 if a.quick else 100)
            for env in envs for algo in ("ppo", "sppo")]
    runs = run_all(jobs, a.jobs)
    results, lines = {}, ["| env | phase | updates | successes / failures "
                          "| ROC AUC of V(s_t) at t/T = 0, 0.1, ..., 0.9 | sppo Brier | sppo final success |",
                          "|---|---|---|---|---|---|---|"]
    for env in envs:
        read = {algo: [json.loads(line) for line in open(os.path.join(out, f"{env}_{algo}", "values.jsonl"))]
                for algo in ("ppo", "sppo")}
        results[env] = dict(ppo=ppo_table(read["ppo"]), sppo=sppo_table(read["sppo"]),
                            final_success={r["algo"]: r["success_rate"] for r in runs if r["env"] == env},
                            flags={algo: winner_flags(env, algo) for algo in ("ppo", "sppo")})
        for phase in ("early", "late"):
            t, s = results[env]["ppo"][phase], results[env]["sppo"][phase]
            lines.append(f"| {env} | {phase} | {t['updates'][0]}-{t['updates'][1]} | {t['successes']} / "
                         f"{t['failures']} | {', '.join(fmt(v) for v in t['auc'])} | {s['brier']:.3f} | "
                         f"{results[env]['final_success']['sppo']:.2f} |")
    lines += ["", "SPPO reliability (late): " + "; ".join(
        f"{env}: " + ", ".join(f"{b['bin']} {b['predicted']:.2f}->{b['observed']:.2f} ({b['episodes']})"
                               for b in r["sppo"]["late"]["bins"]) for env, r in results.items())]
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "control_tail.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(results_dir, "control_tail.json"), "w") as f:
        json.dump(dict(seed=SEED, phase_fraction=PHASE, results=results), f, indent=1)
    try:
        plot(results, os.path.join(results_dir, "control_tail.png"))
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
