"""Learning curves of control.py and llm_train.py runs, drawn to one PNG.

    python bench/plot.py RUN_DIR [RUN_DIR ...] [--out FILE.png] [--x env_steps|wall_seconds|step|...]

Both drivers write RUN_DIR/metrics.jsonl, one JSON line per training step with the same keys for the same
things (step, wall_seconds, train_seconds, reward_mean, success_rate, critic_loss, approx_kl, ...); control
runs add env_steps and eval_success_rate, LLM runs eval_accuracy. RUN_DIR/summary.json, when present, adds the
final evaluation (control: success_rate) or the held-out accuracy before, during and after training (LLM:
eval_history). A control run from before metrics.jsonl (metrics.csv, columns update and mean_outcome) is read
too. Four panels: mean outcome reward, success rate (training batches as lines, evaluations as open dots),
critic loss, approx KL; one line per run, labelled with its folder name. The x axis defaults to env_steps
(control runs), step (LLM runs) or wall_seconds (a mix of both).
Writes RUN_DIR/curves.png for one run, ./curves.png for several, or --out; prints the path.
Needs matplotlib. Bad input: one line on stderr, exit status 2.
"""
import argparse
import csv
import json
import math
import os
import sys

PANELS = [("mean outcome reward", "reward_mean"), ("success rate (dots: evaluations)", "success_rate"),
          ("critic loss", "critic_loss"), ("approx KL", "approx_kl")]
OLD_CSV = {"update": "step", "mean_outcome": "reward_mean"}  # control.py's metrics.csv, before metrics.jsonl


def fail(msg):
    print(f"plot.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def load(run_dir):
    """-> (kind, rows as dicts of floats, evaluations as [(step, success rate or accuracy)])."""
    if not os.path.isdir(run_dir):
        fail(f"{run_dir}: no such directory")
    jsonl_path, csv_path = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "metrics.csv")
    summary_path = os.path.join(run_dir, "summary.json")
    try:
        summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    except ValueError:
        fail(f"{summary_path}: not JSON")
    if os.path.exists(jsonl_path):
        rows, lines = [], [ln for ln in open(jsonl_path).read().splitlines() if ln.strip()]
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
                rows.append({k: number(v) for k, v in row.items() if not isinstance(v, (list, dict))})
            except json.JSONDecodeError:
                if i < len(lines) - 1:  # only the last line may still be being written
                    fail(f"{jsonl_path}:{i + 1}: not JSON")
    elif os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            rows = [{OLD_CSV.get(k, k): number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    else:
        fail(f"{run_dir}: no metrics.jsonl (control.py, llm_train.py) in it")
    if not rows:
        fail(f"{run_dir}: the metrics file has no rows yet")
    if "step" not in rows[0]:
        fail(f"{run_dir}: the metrics file has no 'step' key")
    kind = "control" if "env_steps" in rows[0] else "llm"
    ev = "eval_success_rate" if kind == "control" else "eval_accuracy"
    evals = [(r["step"], r[ev]) for r in rows if not math.isnan(r.get(ev, math.nan))]
    if kind == "control" and summary.get("success_rate") is not None:  # the final evaluation, unseen seeds
        evals.append((rows[-1]["step"], summary["success_rate"]))
    if kind == "llm" and summary.get("eval_history"):  # before (step 0), during and after training
        evals = [(e["step"], e["eval_accuracy"]) for e in summary["eval_history"]]
    return kind, rows, evals


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot learning curves of control.py / llm_train.py runs.")
    p.error = fail
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="PNG to write (default RUN_DIR/curves.png for one run, else ./curves.png)")
    p.add_argument("--x", help="x key: env_steps, wall_seconds, train_seconds, step, ...")
    args = p.parse_args(argv)
    runs = [(os.path.basename(os.path.normpath(d)), *load(d)) for d in args.runs]
    kinds = {kind for _, kind, _, _ in runs}
    x = args.x or ("wall_seconds" if len(kinds) > 1 else "env_steps" if kinds == {"control"} else "step")
    for name, _, rows, _ in runs:
        if x not in rows[0]:
            fail(f"{name}: no key {x!r}; it has {', '.join(rows[0])}")
    out = args.out or (os.path.join(args.runs[0], "curves.png") if len(runs) == 1 else "curves.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("matplotlib is not installed (pip install -r requirements-dev.txt)")
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for i, (name, kind, rows, evals) in enumerate(runs):
        color = f"C{i % 10}"
        for ax, (title, key) in zip(axes.flat, PANELS):
            points = [(r[x], r[key]) for r in rows  # eval-only rows (llm) have no key or x
                      if not math.isnan(r.get(key, math.nan) + r.get(x, math.nan))]
            if points:
                ax.plot(*zip(*points), color=color, lw=1.2, label=name)
            ax.set(title=title)
        at = {0: 0.0, **{r["step"]: r[x] for r in rows if x in r}}  # step 0 (before training) at x = 0
        if evals:
            axes[0, 1].plot([at.get(s, math.nan) for s, _ in evals], [y for _, y in evals], "o", color=color,
                            ms=5, mfc="white", label=f"{name} (evaluation)")
    for ax in axes[1]:
        ax.set_xlabel(x)
    axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}")
    print(out)


if __name__ == "__main__":
    main()
