"""Training seconds per sample of llm_train.py, next to the same runs of llm_train.py at an older revision.

    python bench/llm_speed.py --baseline 49b1d83             # 4 steps of the default run each, ~10 min
    python bench/llm_speed.py --baseline 49b1d83 --full      # the whole default run each (accuracy too)
    python bench/llm_speed.py --baseline 49b1d83 --quick     # the tiny random model: a check that it works

Each run is `python llm_train.py` with the current version's defaults, given as flags to both versions
(torch's default threads), --steps cut to --steps unless --full, and a smaller held-out set unless --full
(evaluation is not training time). The two versions run one after the other, alternating over --rounds, so
a change in the machine's speed hits both alike; compare numbers of one run only. Seconds per sample =
training seconds (the phases of llm_train.TIME_KEYS summed over the steps) / responses sampled. Also checks
that the first minibatch of every step had ratio exactly 1 (approx_kl and clip fraction 0).
Writes RESULTS/llm_speed.{md,json} (llm_speed_full.* with --full).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import llm_train  # noqa: E402  (its Config: the current defaults)
PHASES = ("time_generate", "time_old_logp", "time_values", "time_score", "time_critic", "time_policy")


def checkout(rev, folder):
    """llm_train.py and sppo.py as they were at git revision rev, into folder."""
    for name in ("llm_train.py", "sppo.py"):
        text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return folder


def one_run(code_dir, flags, out):
    """Run llm_train.py of code_dir; its summary plus per-step means of the time split."""
    cmd = [sys.executable, os.path.join(code_dir, "llm_train.py"), *flags, "--out", out, "--overwrite"]
    t0 = time.time()
    subprocess.run(cmd, cwd=code_dir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t0
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)  # each version's own defaults: samples per step may differ between them
    n = len(steps) * cfg["batch_size"] * (cfg["group_size"] if cfg["algo"] == "grpo" else 1)
    train = sum(m.get(k, 0.0) for m in steps for k in PHASES)
    return dict(wall_seconds=wall, train_seconds=train, samples=n, seconds_per_sample=train / n,
                phases={k: sum(m.get(k, 0.0) for m in steps) / len(steps) for k in PHASES if k in steps[0]},
                first_ratio_one=all(m["first_minibatch_approx_kl"] == 0 == m["first_minibatch_clip_frac"]
                                    for m in steps),
                accuracy_before=summary["eval_accuracy_before"],
                accuracy_after=summary["eval_accuracy_after"], peak_memory_bytes=summary["peak_memory_bytes"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", metavar="REV", required=True, help="git revision to compare with")
    p.add_argument("--steps", type=int, default=4, help="training steps per run (not with --full)")
    p.add_argument("--full", action="store_true", help="the whole default run, 256 held-out problems")
    p.add_argument("--quick", action="store_true", help="the tiny random model, 2 steps")
    p.add_argument("--rounds", type=int, default=1, help="times each version runs")
    p.add_argument("--out", default=os.path.join(ROOT, "bench"), help="writes OUT/results/llm_speed.*")
    args = p.parse_args()
    if args.quick:
        flags = ["--model", "tiny", "--steps", "2", "--batch-size", "4", "--eval-size", "8",
                 "--max-new-tokens", "8"]
    else:  # the current defaults, spelled out: the baseline's own defaults may differ
        c = llm_train.Config()
        flags = ["--batch-size", str(c.batch_size), "--minibatches", str(c.minibatches), "--lr", str(c.lr),
                 "--critic-lr", str(c.critic_lr), "--eval-batch-size", str(c.eval_batch_size),
                 "--lora", str(c.lora), "--steps", str(c.steps if args.full else args.steps)]
        flags += [] if args.full else ["--eval-size", "16"]
    work = tempfile.mkdtemp(prefix="llm_speed_")
    base_dir = checkout(args.baseline, tempfile.mkdtemp(prefix="llm_base_"))
    runs = {"current": [], "baseline": []}
    for r in range(args.rounds):
        for name, code in (("baseline", base_dir), ("current", ROOT)):
            runs[name].append(one_run(code, flags, os.path.join(work, f"{name}{r}")))
            print(name, {k: v for k, v in runs[name][-1].items() if k != "phases"}, flush=True)

    def mean(name, key):
        return sum(x[key] for x in runs[name]) / len(runs[name])
    base, cur = mean("baseline", "seconds_per_sample"), mean("current", "seconds_per_sample")
    lines = ["| version | train s / sample | " + " | ".join(k[5:] + " s/step" for k in PHASES) +
             " | first ratio 1 | accuracy before -> after | wall s |",
             "|---|---|" + "---|" * len(PHASES) + "---|---|---|"]
    for name, rev in (("baseline", args.baseline), ("current", "current")):
        ph = {k: sum(x["phases"].get(k, 0.0) for x in runs[name]) / len(runs[name]) for k in PHASES}
        lines.append(f"| {rev} | {mean(name, 'seconds_per_sample'):.3f} | "
                     + " | ".join(f"{ph[k]:.2f}" for k in PHASES)
                     + f" | {all(x['first_ratio_one'] for x in runs[name])} | "
                     + ", ".join(f"{x['accuracy_before']:.3f} -> {x['accuracy_after']:.3f}"
                                 for x in runs[name])
                     + f" | {mean(name, 'wall_seconds'):.0f} |")
    measured = f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores"
    what = "tiny model (--quick)" if args.quick else "the default run" + ("" if args.full else
                                                                          f", {args.steps} steps")
    table = ("\n".join(lines) + f"\n\nTraining seconds per sample: {1 - cur / base:.0%} lower than "
             f"{args.baseline}. {what}; {args.rounds} round(s); measured {measured}.\n")
    print("\n" + table)
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    name = "llm_speed_full" if args.full else "llm_speed"
    with open(os.path.join(args.out, "results", name + ".md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "results", name + ".json"), "w") as f:
        json.dump(dict(measured=measured, what=what, baseline=args.baseline, flags=flags,
                       seconds_per_sample_reduction=1 - cur / base, runs=runs), f, indent=2)


if __name__ == "__main__":
    main()
