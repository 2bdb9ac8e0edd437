"""LLM benchmark: SPPO vs GRPO (8 samples per prompt) vs token-level PPO, the small critic, the tail effect.

SPPO samples 1 response per prompt, GRPO 8. Every run is `python llm_train.py ...` with the same model, task,
prompts per step and held-out set, one torch thread, one run at a time (runs in OUT/<run>/, log in log.txt).

    python bench/llm_compare.py --jobs 2   # SmolLM2-135M (embedded), 32 min measured, one thread per run
    python bench/llm_compare.py --quick    # random tiny model, no download, under a minute: a smoke test only

Runs (full mode: 8 prompts per step, 128 held-out problems, at most 32 new tokens):
  sppo              24 steps, 8 samples/step, 6-layer critic (of 30)       accuracy every 8 steps
  grpo               8 steps, 64 samples/step (--group-size 8), no critic  accuracy every 2 steps
  ppo               24 steps, 8 samples/step, 6-layer per-token critic     accuracy every 8 steps
  sppo_full_critic  24 steps, as sppo but --critic-layers 0 (30 layers)     accuracy before and after only
A GRPO step costs about as much as 6-8 SPPO steps, so SPPO and PPO get 3x the steps: the curves are compared
against training time and generated tokens, not steps. "Training seconds" add up each step's
generate/score/old-log-prob/critic/policy times from metrics.jsonl: model loading and evaluation are left out,
so evaluating GRPO more often does not slow it down.

Duration estimate of the full mode, from the measured default run of SmolLM2 on this machine (1 thread, loaded
CPU; 32 samples/step: generation 10.4 s, old log-probs + values 9.0 s, critic 3.5 s, policy 24.6 s, so about
1.2 s per sample outside generation): sppo 24 x (8 x 1.2 + ~5 s generation) = ~350 s; ppo ~400 s;
grpo 8 x (64 x 1.0 + ~15 s) = ~630 s; sppo_full_critic ~460 s (a 5x bigger critic); 15 greedy evaluations of
128 problems at ~30 s = ~450 s; 4 model loads at ~40 s = ~160 s. In all about 2,450 s = ~41 min, uncertain by
perhaps +-25% (the per-step costs were measured at 32 prompts/step; small batches use the CPU less well).
Measured with --jobs 2 (two runs side by side): 1904 s in all, see bench/results/llm_compare.md. If it must be
shorter, --steps 18 --grpo-steps 6 cuts about a quarter.

Writes RESULTS/llm_compare.{json,md}, RESULTS/llm_accuracy.png and RESULTS/llm_tail_effect.png (plots need
matplotlib). RESULTS is bench/results, or OUT/results with --quick.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# With 8 prompts a step, the trainer's default (2 minibatches, actor lr 3e-5, tuned for 32 prompts a step)
# made SPPO collapse (held-out accuracy 0.48 at step 8, 0.09 at step 16); 1 minibatch at lr 1e-5 went
# 0.41 -> 0.49.
FULL = dict(model="smollm2", batch_size=8, steps=24, grpo_steps=8, eval_size=128, eval_every=8,
            grpo_eval_every=2, max_new_tokens=32, critic_layers=6, minibatches=1, lr=1e-5)
QUICK = dict(model="tiny", batch_size=4, steps=6, grpo_steps=2, eval_size=16, eval_every=2, grpo_eval_every=1,
             max_new_tokens=16, critic_layers=1, minibatches=1, lr=1e-5)  # the tiny model has 2 layers
TIME_KEYS = ["time_generate", "time_score", "time_old_logp", "time_critic", "time_policy"]
BINS = 10


def run(name, algo, steps, eval_every, critic_layers, size, out_root):
    """One llm_train.py run in its own process (so its peak RSS is its own); returns its parsed logs."""
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)  # llm_train appends to metrics.jsonl: start clean
    os.makedirs(out)
    cmd = [sys.executable, "llm_train.py", "--model", size["model"], "--algo", algo, "--group-size", "8",
           "--batch-size", str(size["batch_size"]), "--steps", str(steps),
           "--eval-size", str(size["eval_size"]), "--eval-every", str(eval_every),
           "--max-new-tokens", str(size["max_new_tokens"]), "--critic-layers", str(critic_layers),
           "--minibatches", str(size["minibatches"]), "--lr", str(size["lr"]),
           "--threads", "1", "--dump-values", "--out", out]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    with open(os.path.join(out, "log.txt"), "w") as log:
        p = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode != 0:
        tail = open(os.path.join(out, "log.txt")).read()[-2000:]
        sys.exit(f"{name} failed (exit {p.returncode}); end of {out}/log.txt:\n{tail}")
    summary = json.load(open(os.path.join(out, "summary.json")))
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    path = os.path.join(out, "values.jsonl")
    values = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    # accuracy curve: each evaluation with the training seconds and generated tokens spent up to that step
    train_s, seconds = 0.0, {0: 0.0}
    for m in metrics:
        train_s += sum(m[k] for k in TIME_KEYS)
        seconds[m["step"]] = train_s
    tokens = {0: 0, **{m["step"]: m["generated_tokens_total"] for m in metrics}}
    curve = [dict(step=e["step"], train_seconds=seconds[e["step"]], generated_tokens=tokens[e["step"]],
                  eval_accuracy=e["eval_accuracy"]) for e in summary["eval_history"]]
    return dict(name=name, algo=algo, steps=steps, critic_layers=critic_layers if algo != "grpo" else None,
                samples_per_step=size["batch_size"] * (8 if algo == "grpo" else 1), curve=curve,
                final_accuracy=summary["eval_accuracy_after"],
                best_accuracy=max(c["eval_accuracy"] for c in curve),
                train_seconds=train_s, seconds_per_step=train_s / steps,
                critic_seconds_per_step=sum(m["time_critic"] for m in metrics) / steps,
                wall_seconds=summary["wall_seconds"], generated_tokens=summary["generated_tokens"],
                peak_memory_bytes=summary["peak_memory_bytes"], values=values)


def first_reaching(curve, target):
    """The first evaluation at or above target: (training seconds, generated tokens), or (None, None)."""
    hit = next((c for c in curve if c["eval_accuracy"] >= target), None)
    return (hit["train_seconds"], hit["generated_tokens"]) if hit else (None, None)


def tail_effect(records):
    """ppo: mean V(s_t) in BINS bins of relative position t/T, for correct and wrong responses, in the first
    and last third of training. The paper's tail effect: the two curves part only near the end (t/T near 1),
    so most tokens get a near-zero, biased advantage."""
    if not records:
        return None
    steps = sorted({r["step"] for r in records})
    third = max(1, len(steps) // 3)
    phases = {"early": set(steps[:third]), "late": set(steps[-third:])}
    out = {}
    for phase, keep in phases.items():
        for outcome in ("correct", "wrong"):
            sums, counts, responses = [0.0] * BINS, [0] * BINS, 0
            for r in records:
                for vs, reward in zip(r["values"], r["rewards"]):
                    if r["step"] not in keep or (reward == 1.0) != (outcome == "correct"):
                        continue
                    responses += 1
                    for t, v in enumerate(vs):  # pool every token's value into its bin of t / T
                        b = min(BINS - 1, t * BINS // len(vs))
                        sums[b] += v
                        counts[b] += 1
            out[f"{phase}_{outcome}"] = dict(mean_value=[s / c if c else None for s, c in zip(sums, counts)],
                                             responses=responses)
    out["steps"] = dict(early=sorted(phases["early"]), late=sorted(phases["late"]))
    return out


def calibration(records):
    """sppo: predicted success sigmoid(V(x)) against the observed reward, in BINS equal-width bins, all
    steps."""
    if not records:
        return None
    pairs = [(p, r) for rec in records for p, r in zip(rec["pred_success"], rec["rewards"])]
    bins = []
    for b in range(BINS):
        inside = [(p, r) for p, r in pairs if min(BINS - 1, int(p * BINS)) == b]
        if inside:
            bins.append(dict(lo=b / BINS, hi=(b + 1) / BINS, count=len(inside),
                             mean_predicted=sum(p for p, _ in inside) / len(inside),
                             success_rate=sum(r for _, r in inside) / len(inside)))
    brier = sum((p - r) ** 2 for p, r in pairs) / len(pairs)
    return dict(bins=bins, brier=brier, samples=len(pairs))


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def plot(runs, tail, calib, grpo_best, results_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r, color in zip(runs, ("C0", "C2", "C1", "C0")):
        style = dict(color=color, marker="o", ms=3, ls="--" if r["name"] == "sppo_full_critic" else "-",
                     label=r["name"])
        acc = [c["eval_accuracy"] for c in r["curve"]]
        axes[0].plot([c["train_seconds"] for c in r["curve"]], acc, **style)
        axes[1].plot([c["generated_tokens"] for c in r["curve"]], acc, **style)
    for ax, xlabel in zip(axes, ("training seconds (evaluation and loading excluded)", "generated tokens")):
        ax.axhline(grpo_best, color="grey", ls=":", lw=1)
        ax.set(xlabel=xlabel, ylabel="held-out greedy accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "llm_accuracy.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [(b + 0.5) / BINS for b in range(BINS)]
    if tail:
        for key, color, ls in [("early_correct", "C2", "--"), ("early_wrong", "C3", "--"),
                               ("late_correct", "C2", "-"), ("late_wrong", "C3", "-")]:
            axes[0].plot(x, [float("nan") if v is None else v for v in tail[key]["mean_value"]],
                         color=color, ls=ls, marker="o", ms=3,
                         label=f"{key.replace('_', ', ')} ({tail[key]['responses']})")
        axes[0].legend(fontsize=8)
    axes[0].set(title="token-level PPO: critic V(s_t) along the response", xlabel="relative position t / T",
                ylabel="mean V(s_t)")
    if calib:
        axes[1].plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        bins = calib["bins"]
        axes[1].scatter([b["mean_predicted"] for b in bins], [b["success_rate"] for b in bins],
                        s=[10 + 200 * b["count"] / calib["samples"] for b in bins], color="C0")
    axes[1].set(title="SPPO: prompt value vs outcome", xlabel="predicted success sigmoid(V(x))",
                ylabel="observed success rate", xlim=(0, 1), ylim=(-0.02, 1.02))
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "llm_tail_effect.png"), dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="random tiny model, few steps: a smoke test, numbers mean nothing")
    p.add_argument("--out", default=None, help="run folders (default runs/llm_compare[_quick])")
    p.add_argument("--results", default=None,
                   help="tables and plots (default bench/results, OUT/results with --quick)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each (2 fit in 24 GB)")
    for key in ("batch_size", "steps", "grpo_steps", "eval_size"):  # to shrink (or grow) a run; same for all
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                       help=f"default {FULL[key]}, quick {QUICK[key]}")
    args = p.parse_args()
    size = {k: getattr(args, k, None) or v for k, v in (QUICK if args.quick else FULL).items()}
    out = args.out or os.path.join(ROOT, "runs", "llm_compare_quick" if args.quick else "llm_compare")
    results_dir = args.results or (os.path.join(out, "results") if args.quick
                                   else os.path.join(ROOT, "bench", "results"))
    os.makedirs(results_dir, exist_ok=True)
    start = time.time()
    k = size["critic_layers"]
    jobs = [("grpo", "grpo", size["grpo_steps"], size["grpo_eval_every"], k),  # longest first
            ("sppo", "sppo", size["steps"], size["eval_every"], k),
            ("ppo", "ppo", size["steps"], size["eval_every"], k),
            ("sppo_full_critic", "sppo", size["steps"], 0, 0)]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: run(*job, size, out), jobs))
    by = {r["name"]: r for r in runs}

    # 2. time to GRPO's best accuracy; the speed-up is defined only if GRPO improved on the common start
    start_acc, grpo_best = by["grpo"]["curve"][0]["eval_accuracy"], by["grpo"]["best_accuracy"]
    for r in runs:
        r["wall_seconds_to_grpo_best"], r["tokens_to_grpo_best"] = first_reaching(r["curve"], grpo_best)
    t_grpo, t_sppo = by["grpo"]["wall_seconds_to_grpo_best"], by["sppo"]["wall_seconds_to_grpo_best"]
    speedup = t_grpo / t_sppo if grpo_best > start_acc and t_sppo else None
    # 3. the small critic: same run but for the critic's depth
    cut, full = by["sppo"], by["sppo_full_critic"]
    small_critic = dict(critic_layers=k, cut_peak_memory_bytes=cut["peak_memory_bytes"],
                        full_peak_memory_bytes=full["peak_memory_bytes"],
                        memory_saving=1 - cut["peak_memory_bytes"] / full["peak_memory_bytes"],
                        cut_seconds_per_step=cut["seconds_per_step"],
                        full_seconds_per_step=full["seconds_per_step"],
                        cut_final_accuracy=cut["final_accuracy"], full_final_accuracy=full["final_accuracy"])
    # 4. the tail effect (ppo) and the calibration of the prompt value (sppo)
    tail, calib = tail_effect(by["ppo"]["values"]), calibration(by["sppo"]["values"])

    machine = (f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread, "
               f"Python {platform.python_version()}, "
               f"{time.strftime('%Y-%m-%d')}, {time.time() - start:.0f} s in all")
    lines = [f"Model `{size['model']}`"
             f"{' (random weights: a smoke test, the numbers mean nothing)' if args.quick else ''}, "
             f"{size['batch_size']} prompts per step, {size['eval_size']} held-out problems, at most "
             f"{size['max_new_tokens']} new tokens. Machine: {machine}.", "",
             "| run | steps | samples/step | accuracy start -> final | best | training s | s/step "
             "| generated tokens | s to GRPO best | tokens to GRPO best |", "|---" * 10 + "|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r['steps']} | {r['samples_per_step']} | "
                     f"{start_acc:.3f} -> {r['final_accuracy']:.3f} | "
                     f"{r['best_accuracy']:.3f} | {r['train_seconds']:.0f} | {r['seconds_per_step']:.1f} | "
                     f"{r['generated_tokens']:,} | {fmt(r['wall_seconds_to_grpo_best'], '.0f')} | "
                     f"{fmt(r['tokens_to_grpo_best'], ',')} |")
    lines += ["", f"GRPO's best accuracy {grpo_best:.3f} (start {start_acc:.3f}). "
              "Speed-up of SPPO over GRPO to reach it, "
              "in training seconds: " + (f"{speedup:.1f}x (paper: 5.9x)." if speedup else
                                         "undefined (GRPO did not improve on the start, "
                                         "or SPPO did not reach it)."), "",
              "| critic | layers | peak memory (RSS) | s/step | critic s/step | final accuracy |",
              "|---" * 6 + "|",
              f"| cut | {k} | {cut['peak_memory_bytes'] / 2**30:.2f} GiB | {cut['seconds_per_step']:.1f} | "
              f"{cut['critic_seconds_per_step']:.2f} | {cut['final_accuracy']:.3f} |",
              f"| full | all | {full['peak_memory_bytes'] / 2**30:.2f} GiB | "
              f"{full['seconds_per_step']:.1f} | "
              f"{full['critic_seconds_per_step']:.2f} | {full['final_accuracy']:.3f} |", "",
              f"The cut critic's run peaks {100 * small_critic['memory_saving']:.1f}% lower in memory "
              "(paper: 12.8% on GPU)."]
    if tail:
        lines += ["", "PPO critic, mean V(s_t) at the start (t/T < 0.1) and end (t/T >= 0.9) of responses:",
                  "",
                  "| phase | outcome | responses | V at start | V at end |", "|---" * 5 + "|"]
        for key in ("early_correct", "early_wrong", "late_correct", "late_wrong"):
            v = tail[key]["mean_value"]
            lines.append(f"| {key.split('_')[0]} | {key.split('_')[1]} | {tail[key]['responses']} | "
                         f"{fmt(v[0], '.3f')} | {fmt(v[-1], '.3f')} |")
    if calib:
        lines += ["", f"SPPO prompt value, all {calib['samples']} training samples "
                  f"(Brier {calib['brier']:.3f}):", "",
                  "| predicted bin | samples | mean predicted | observed success |", "|---" * 4 + "|"]
        lines += [f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['count']} | {b['mean_predicted']:.3f} | "
                  f"{b['success_rate']:.3f} |" for b in calib["bins"]]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(results_dir, "llm_compare.md"), "w") as f:
        f.write(text + "\n")
    for r in runs:
        del r["values"]  # raw values stay in the run folders; the JSON keeps the binned summaries
    result = dict(machine=machine, quick=args.quick, settings=size,
                  seconds="training seconds: each step's generate+score+old-logp+critic+policy time; "
                          "model loading and evaluation excluded (wall_seconds: the whole run)",
                  start_accuracy=start_acc,
                  grpo_best_accuracy=grpo_best, speedup_vs_grpo=speedup, results={r["name"]: r for r in runs},
                  small_critic=small_critic, tail_effect=tail, calibration=calib)
    with open(os.path.join(results_dir, "llm_compare.json"), "w") as f:
        json.dump(result, f, indent=1)
    try:
        plot(runs, tail, calib, grpo_best, results_dir)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)


if __name__ == "__main__":
    main()
