"""LLM benchmark: SPPO vs GRPO vs token-level PPO, equal samples per step, equal training seconds, 3 seeds;
the small critic against the full one; the tail effect.

    python bench/llm_compare.py --sweep --jobs 2   # 1. lr per algorithm on the validation split (~2 h)
    python bench/llm_compare.py --jobs 2           # 2. the comparison to each run's peak, with the sweep's lrs
    python bench/llm_compare.py --quick [--sweep]  # random tiny model, offline, 1-3 min: a smoke test

Every run is `python llm_train.py ...` in its own process (OMP_NUM_THREADS=1, --threads 1; --jobs 2 runs two
side by side), in OUT/<run>/ with its log in log.txt. The same for all runs:
  samples   64 per step: sppo and ppo 64 prompts x 1 response, grpo 8 prompts x 8 (--group-size 8); 2
            minibatches of 32 samples (one AdamW step each), 1 epoch (--ppo-epochs 1), as llm_train's defaults
            (16-sample minibatches drifted to long wrong answers in development runs). LoRA rank 16 on policy
            and critic, llm_train's default (not in the paper; full fine-tuning's five default seeds missed
            the targets LoRA met, bench/results/llm_recipes.md).
  to the peak  each run until its curve stops rising (--patience 3 --min-delta 0.01: no new best by more
            than 0.01 in its last 3 evaluations) or --time-budget 1800 training seconds (each step's generate
            + score + values + critic + policy time; loading and evaluation do not count).
  test set  OUT/data/test.jsonl, written once: llm_train.arithmetic(levels, 256, 0, "test"), whatever the
            seed; greedy accuracy on it at the start, each 120 training seconds (--eval-every-seconds) and
            at the end. A run's peak is its best evaluation; the speed-ups use the mean curves over seeds (a
            run that stopped keeps its last accuracy), with bootstrap intervals over seeds.
  training  OUT/data/train_s<seed>.jsonl: arithmetic(levels, 5000, seed, "train") minus the validation
            bucket (problems with crc32(prompt) % 4 == 0); OUT/data/val.jsonl: 256 distinct problems of that
            bucket, never trained on, never tested on: the sweep's yardstick.
  runs      sppo (6-layer critic), grpo, ppo (6-layer per-token critic), sppo_full_critic (--critic-layers 0,
            all 30 layers); seeds 1, 2, 3.
  sweep     actor lr 1e-4, 3e-4, 6e-4 for each algorithm (the critic's lr the same, llm_train's LoRA default),
            and for sppo and ppo the critic lr 1e-4 and 1e-3 at actor lr 3e-4. Seeds 11, 12, 13 (not the
            comparison's), 6 steps (384 samples: a step budget, so the machine's load cannot move it),
            validation accuracy at the end. The best mean per algorithm goes to RESULTS/llm_sweep.json, which
            the comparison reads (else LRS below); sppo_full_critic takes sppo's.

Duration on this 2-core machine (2026-12-03, --jobs 2, one thread a run): a sweep run ~10 min (~40 s
loading, ~60 s an evaluation of 256 problems, 40-75 s a step). To the peak a run can take up to 1800
training seconds and 16 evaluations: hours; it resumes (a finished run is read back, a stopped one continued
from its checkpoint), so it can run in parts. Time-budgeted runs lose steps to anything else on the CPU: run
it alone.

Writes RESULTS/llm_compare.{json,md}, llm_accuracy.png and llm_tail_effect.png (plots need matplotlib);
--sweep writes RESULTS/llm_sweep.{json,md}. RESULTS is bench/results, or OUT/results with --quick.
"""
import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import llm_train  # noqa: E402  (the built-in task and TIME_KEYS: one definition)

FULL = dict(model="smollm2", samples=64, group_size=8, minibatches=2, max_new_tokens=32, eval_size=256,
            critic_layers=6, budget=1800, eval_every_seconds=120, patience=3, seeds=[1, 2, 3], sweep_steps=6,
            sweep_seeds=[11, 12, 13], grid_size=5, train_problems=5000)
QUICK = dict(model="tiny", samples=16, group_size=8, minibatches=2, max_new_tokens=8, eval_size=16,
             critic_layers=1, budget=3, eval_every_seconds=0.25, patience=3, seeds=[1, 2], sweep_steps=2,
             sweep_seeds=[11], grid_size=2, train_problems=500)  # tiny: 2 layers; fewer rows to encode
LORA = llm_train.Config().lora  # every run's LoRA rank (llm_train's default); a sweep at another is not read
LRS = {"sppo": (3e-4, 3e-4), "grpo": (3e-4, None), "ppo": (3e-4, 3e-4)}  # (actor, critic) without a sweep
ACTOR = [(1e-4, 1e-4), (3e-4, 3e-4), (6e-4, 6e-4)]  # LoRA: ~10x full fine-tuning's lrs; critic lr = actor's
CRITIC = [(3e-4, 1e-4), (3e-4, 1e-3)]  # the critic's lr on its own, at the middle actor lr
GRID = {"sppo": ACTOR + CRITIC, "grpo": [(lr, None) for lr, _ in ACTOR], "ppo": ACTOR + CRITIC}
RUNS = {"sppo": "sppo", "grpo": "grpo", "ppo": "ppo", "sppo_full_critic": "sppo"}  # run name: algorithm
COLORS = {"sppo": "C0", "grpo": "C2", "ppo": "C1", "sppo_full_critic": "C4"}
COMPARE = [("sppo", "grpo"), ("sppo", "ppo"), ("grpo", "ppo"), ("sppo", "sppo_full_critic")]
RESAMPLES, BINS, GRID_POINTS = 10_000, 10, 61
SPEEDUP_RESAMPLES = 2_000  # each recomputes the mean curves
START = time.time()  # the benchmark's wall time, for the tables


# ------------------------------------------------------------------------------------------------ data
def in_val_bucket(row):
    return zlib.crc32(row["prompt"].encode()) % 4 == 0  # a property of the text: no seed puts it in training


def write_data(seeds, n_train, out):
    """OUT/data/{test,val,train_s<seed>}.jsonl, rows {"prompt", "answer"}; returns {name: path}."""
    levels = llm_train.Config().task.split(",")
    val = list({r["prompt"]: r for r in llm_train.arithmetic(levels, 5000, 0, "train")
                if in_val_bucket(r)}.values())[:256]
    sets = {"test": llm_train.arithmetic(levels, 256, 0, "test"), "val": val}
    for s in seeds:
        rows = llm_train.arithmetic(levels, n_train, s, "train")
        sets[f"train_s{s}"] = [r for r in rows if not in_val_bucket(r)]
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    paths = {}
    for name, rows in sets.items():
        paths[name] = os.path.join(out, "data", f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows)
    assert len(val) == 256 and not {r["prompt"] for r in val} & {r["prompt"] for r in sets["test"]}
    return paths


# ------------------------------------------------------------------------------------------------ runs
def launch(job, size, out_root):
    """One llm_train.py run in its own process (so its peak RSS is its own); returns its parsed logs."""
    out = os.path.join(out_root, job["name"])
    per_prompt = size["group_size"] if job["algo"] == "grpo" else 1
    cmd = [sys.executable, "llm_train.py", "--model", size["model"], "--algo", job["algo"],
           "--batch-size", str(size["samples"] // per_prompt), "--group-size", str(size["group_size"]),
           "--minibatches", str(size["minibatches"]), "--ppo-epochs", "1", "--steps", str(job["steps"]),
           "--time-budget", str(job["budget"]), "--eval-every-seconds", str(job["eval_every_seconds"]),
           "--data", job["data"], "--eval-data", job["eval_data"], "--eval-size", str(size["eval_size"]),
           "--max-new-tokens", str(size["max_new_tokens"]), "--critic-layers", str(job["critic_layers"]),
           "--lr", str(job["lr"]), "--seed", str(job["seed"]), "--threads", "1", "--samples-every", "0",
           "--out", out]
    cmd += ["--critic-lr", str(job["critic_lr"])] if job["critic_lr"] else []
    cmd += ["--dump-values"] if job["dump"] else []
    cmd += ["--patience", str(job["patience"]), "--min-delta", "0.01"] if job["patience"] else []
    reused = finished(out, cmd)
    if reused:  # an interrupted benchmark, started again, keeps the runs it completed
        print(f"{job['name']}: done earlier, read from {out}", file=sys.stderr, flush=True)
    else:
        if started(out, cmd):  # stopped part way (a signal, kill -9): llm_train continues it exactly
            cmd += ["--resume", out]
        else:
            shutil.rmtree(out, ignore_errors=True)  # llm_train refuses to write over an earlier run
            os.makedirs(out)
        print(f"[{time.strftime('%H:%M:%S')}] {job['name']}: {' '.join(cmd[1:])}", file=sys.stderr,
              flush=True)
        with open(os.path.join(out, "log.txt"), "a") as log:
            p = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        if p.returncode != 0:
            tail = open(os.path.join(out, "log.txt")).read()[-2000:]
            sys.exit(f"{job['name']} failed (exit {p.returncode}); end of {out}/log.txt:\n{tail}")
        for name in os.listdir(out):  # ~2 GB each, never read here: 18 runs would fill a disk
            if name.startswith("checkpoint-"):
                shutil.rmtree(os.path.join(out, name))
    summary = json.load(open(os.path.join(out, "summary.json")))
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    path = os.path.join(out, "values.jsonl")
    values = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    # each evaluation with the training seconds and generated tokens spent up to its step
    spent = {0: (0.0, 0), **{m["step"]: (m["train_seconds"], m["generated_tokens_total"]) for m in metrics}}
    curve = [dict(step=e["step"], train_seconds=spent[e["step"]][0], generated_tokens=spent[e["step"]][1],
                  accuracy=e["eval_accuracy"]) for e in summary["eval_history"]]
    return dict(job, steps=summary["steps"], curve=curve, final_accuracy=summary["eval_accuracy_after"],
                train_seconds=summary["train_seconds"],
                seconds_per_step=summary["train_seconds"] / summary["steps"],
                stopped_by_time_budget=summary["stopped_by_time_budget"],
                stopped_by_patience=summary.get("stopped_by_patience", False),
                generated_tokens=summary["generated_tokens"], peak_memory_bytes=summary["peak_memory_bytes"],
                wall_seconds=summary["wall_seconds"], values=values, reused=reused)


def same_settings(out, cmd):
    """out's config.json is the one cmd asks for (whether or not a --resume finished it)."""
    def settings(c):
        return {k: v for k, v in c.items() if k not in ("resume", "overwrite")}
    try:
        with open(os.path.join(out, "config.json")) as f:
            return settings(json.load(f)) == settings(dataclasses.asdict(llm_train.parse_config(cmd[2:])))
    except (OSError, ValueError):
        return False


def finished(out, cmd):
    """True if out holds a completed run (summary.json, not interrupted) with exactly the settings cmd asks
    for."""
    try:
        with open(os.path.join(out, "summary.json")) as f:
            done = not json.load(f)["interrupted"]
        return done and same_settings(out, cmd)
    except (OSError, ValueError):
        return False


def started(out, cmd):
    """True if out holds a checkpoint of a run with the settings cmd asks for, not finished."""
    return os.path.isfile(os.path.join(out, "latest")) and same_settings(out, cmd)


def timing(runs):
    """Wall time of this invocation and of the runs themselves (some may come from an earlier invocation)."""
    return dict(wall_seconds=time.time() - START, runs_wall_seconds=sum(r["wall_seconds"] for r in runs),
                runs_read_from_earlier_invocation=sum(r["reused"] for r in runs))


def timing_text(s, n_jobs):
    reused = s["runs_read_from_earlier_invocation"]
    return (f"{s['wall_seconds'] / 60:.0f} min in all" + (f" ({reused} runs read from an earlier invocation; "
            f"the runs' own wall time / {n_jobs} side by side: "
            f"{s['runs_wall_seconds'] / n_jobs / 60:.0f} min)"
            if reused else ""))


def run_all(jobs, size, out, n_jobs):
    with ThreadPoolExecutor(n_jobs) as pool:
        return list(pool.map(lambda job: launch(job, size, out), jobs))


def job(name, algo, seed, lrs, critic_layers, data, eval_data, budget, eval_every_seconds, dump, patience=0,
        steps=1000):
    return dict(name=name, algo=algo, seed=seed, lr=lrs[0], critic_lr=lrs[1] if algo != "grpo" else None,
                steps=steps,
                critic_layers=critic_layers, data=data, eval_data=eval_data, budget=budget,
                eval_every_seconds=eval_every_seconds, dump=dump, patience=patience)


# ------------------------------------------------------------------------------------------ statistics
def bootstrap_ci(a, b=None):
    """95% percentile-bootstrap interval of mean(a), or of mean(a) - mean(b): seeds resampled with
    replacement, RESAMPLES times, fixed rng."""
    rng = np.random.default_rng(0)
    stat = rng.choice(a, (RESAMPLES, len(a))).mean(1)
    if b is not None:
        stat = stat - rng.choice(b, (RESAMPLES, len(b))).mean(1)
    return [float(x) for x in np.percentile(stat, [2.5, 97.5])]


def on_grid(runs, key, grid):
    """Each seed's accuracy at the grid points, linear between its evaluations: [seeds, points]."""
    return np.array([np.interp(grid, [c[key] for c in r["curve"]], [c["accuracy"] for c in r["curve"]])
                     for r in runs])


def first_reach(grid, mean, target):
    """Where the mean curve first reaches target, linear between grid points; None if it never does."""
    above = np.nonzero(mean >= target - 1e-9)[0]
    if not len(above):
        return None
    i = above[0]
    if i == 0:
        return float(grid[0])
    return float(grid[i - 1] + (target - mean[i - 1]) / (mean[i] - mean[i - 1]) * (grid[i] - grid[i - 1]))


def speedups(curves, grid):
    """The paper's way: time to GRPO's own mean-curve peak / time to SPPO's own peak. Ours: GRPO's time to its
    peak / SPPO's time to GRPO's peak. None, with the reason, when undefined."""
    g, s = curves["grpo"], curves["sppo"]
    t_g, t_s = first_reach(grid, g, g.max()), first_reach(grid, s, s.max())
    t_s_at_g = first_reach(grid, s, g.max())
    out, reasons = {"paper_way": None, "ours": None}, []
    if g.max() <= g[0]:
        reasons.append(f"GRPO's mean curve never rose above its start ({g[0]:.3f})")
    else:
        if t_s > 0:
            out["paper_way"] = t_g / t_s
        else:
            reasons.append(f"SPPO's mean curve peaks at its start ({s[0]:.3f}): no time to its peak")
        if t_s_at_g is None:
            reasons.append(f"SPPO's mean curve stays below GRPO's mean peak {g.max():.3f}")
        elif t_s_at_g == 0:
            reasons.append("SPPO's mean curve starts at or above GRPO's mean peak")
        else:
            out["ours"] = t_g / t_s_at_g
    if reasons:
        out["reason"] = "; ".join(reasons)
    return out


def speedup_intervals(sppo_runs, grpo_runs, grid):
    """speedups() of the mean curves, each with its 95% bootstrap interval over seeds (each algorithm's seeds
    resampled on their own, the mean curves recomputed) and a verdict against 1; where a speed-up is undefined
    on the mean curves or in over 5% of the resamples: its _reason instead of an interval."""
    s, g = on_grid(sppo_runs, "train_seconds", grid), on_grid(grpo_runs, "train_seconds", grid)
    out = speedups({"sppo": s.mean(0), "grpo": g.mean(0)}, grid)
    rng = np.random.default_rng(0)
    draws = [speedups({"sppo": s[rng.integers(0, len(s), len(s))].mean(0),
                       "grpo": g[rng.integers(0, len(g), len(g))].mean(0)}, grid)
             for _ in range(SPEEDUP_RESAMPLES)]
    for key in ("paper_way", "ours"):
        ok = [d[key] for d in draws if d[key] is not None]
        if out[key] is None:
            out[f"{key}_reason"] = out.get("reason", "undefined")
        elif len(ok) < 0.95 * len(draws):
            out[f"{key}_reason"] = f"undefined in {100 - 100 * len(ok) / len(draws):.0f}% of the resamples"
        else:
            lo, hi = (float(x) for x in np.percentile(ok, [2.5, 97.5]))
            out[f"{key}_ci95"] = [lo, hi]
            out[f"{key}_verdict"] = ("SPPO sooner" if lo > 1 else "SPPO later" if hi < 1 else
                                     "not distinguishable")
    return out


def verdict(lo, hi):
    return "ahead" if lo > 0 else "behind" if hi < 0 else "not distinguishable"


def tail_effect(records):
    """ppo: mean V(s_t) in BINS bins of relative position t/T, for correct and wrong responses, in the first
    and last third of the steps (all seeds pooled). The paper's tail effect: the two curves part only near
    the end (t/T near 1), so most tokens get a near-zero, biased advantage."""
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
    """sppo: predicted success sigmoid(V(x)) against the observed reward, in BINS equal-width bins, all steps
    and seeds."""
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


def times(x):
    return "undefined" if x is None else f"{x:.2f}x"


# ------------------------------------------------------------------------------------------------ sweep
def sweep(size, paths, out, results_dir, n_jobs, machine, quick):
    """Each (actor lr, critic lr) of GRID on the sweep seeds: validation accuracy at the end of the budget."""
    grid = {algo: settings[:size["grid_size"]] for algo, settings in GRID.items()}
    jobs = [job(f"sweep_{algo}_lr{lrs[0]:g}" + (f"_critic{lrs[1]:g}" if lrs[1] else "") + f"_s{seed}", algo, seed,
                lrs, size["critic_layers"], paths[f"train_s{seed}"], paths["val"], 0, 0, False,
                steps=size["sweep_steps"])
            for algo, settings in grid.items() for lrs in settings for seed in size["sweep_seeds"]]
    jobs.sort(key=lambda j: (j["lr"], j["critic_lr"]) in CRITIC)  # the actor lrs first (a stable sort)
    runs = run_all(jobs, size, out, n_jobs)
    rows = []
    for algo, settings in grid.items():
        for lr, critic_lr in settings:
            acc = [r["final_accuracy"] for r in runs
                   if r["algo"] == algo and r["lr"] == lr and r["critic_lr"] == critic_lr]
            rows.append(dict(algo=algo, lr=lr, critic_lr=critic_lr, seeds=size["sweep_seeds"],
                             val_accuracy=acc, mean=float(np.mean(acc))))
    chosen = {}
    for algo in grid:  # the best mean; a tie goes to the smaller lr (listed first)
        best = max((r for r in rows if r["algo"] == algo), key=lambda r: r["mean"])
        chosen[algo] = dict(lr=best["lr"], critic_lr=best["critic_lr"], val_accuracy_mean=best["mean"])
    def picked(r):
        return (chosen[r["algo"]]["lr"], chosen[r["algo"]]["critic_lr"]) == (r["lr"], r["critic_lr"])
    settings = {k: size[k] for k in ("model", "samples", "minibatches", "max_new_tokens", "critic_layers")}
    settings.update(lora=LORA, steps=size["sweep_steps"], seeds=size["sweep_seeds"], machine=machine,
                    eval_data="data/val.jsonl: 256 validation problems, never the test set", quick=quick,
                    date=time.strftime("%Y-%m-%d"), jobs=n_jobs, **timing(runs))
    with open(os.path.join(results_dir, "llm_sweep.json"), "w") as f:
        json.dump(dict(settings=settings, rows=rows, chosen=chosen), f, indent=1)
    lines = [f"lr sweep, model `{size['model']}`, LoRA 16, {size['sweep_steps']} steps per run, greedy "
             f"accuracy on {size['eval_size']} validation problems (never the test set). {machine}, "
             f"{settings['date']}, {timing_text(settings, n_jobs)}.", "",
             "| algo | lr | critic lr | validation accuracy per seed | mean | chosen |", "|---" * 6 + "|"]
    lines += [f"| {r['algo']} | {r['lr']:g} | {fmt(r['critic_lr'], 'g')} | "
              f"{', '.join(f'{a:.3f}' for a in r['val_accuracy'])} | {r['mean']:.3f} | "
              f"{'yes' if picked(r) else ''} |" for r in rows]
    write_md(results_dir, "llm_sweep.md", lines)


def chosen_lrs(results_dir, model):
    """The sweep's choice for this model and LoRA rank if RESULTS/llm_sweep.json has one (the full fine-tuning
    sweep of 2026-11-26 is not), else LRS; and where from."""
    path = os.path.join(results_dir, "llm_sweep.json")
    if os.path.exists(path):
        swept = json.load(open(path))
        if (swept["settings"]["model"], swept["settings"].get("lora", 0)) == (model, LORA):  # this recipe's
            chosen = {a: (c["lr"], c["critic_lr"]) for a, c in swept["chosen"].items()}
            return {**LRS, **chosen}, os.path.relpath(path, ROOT)
    return LRS, "defaults (LRS in bench/llm_compare.py; no llm_sweep.json for this model and LoRA rank)"


def write_md(results_dir, name, lines):
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(results_dir, name), "w") as f:
        f.write(text + "\n")


# ------------------------------------------------------------------------------------------- comparison
def summarise(name, runs, grid):
    """One run name over its seeds: final accuracy with its interval, the mean curves with their bands."""
    def curve(key, x):
        acc = on_grid(runs, key, x)
        return [{key: float(t), "accuracy": float(a), "band_lo": float(lo), "band_hi": float(hi)}
                for t, a, lo, hi in zip(x, acc.mean(0), acc.min(0), acc.max(0))]
    final = [r["final_accuracy"] for r in runs]
    tokens = np.linspace(0, min(r["curve"][-1]["generated_tokens"] for r in runs), GRID_POINTS)
    a = dict(algo=RUNS[name], critic_layers=None if RUNS[name] == "grpo" else runs[0]["critic_layers"],
             lr=runs[0]["lr"], critic_lr=runs[0]["critic_lr"], seeds=[r["seed"] for r in runs],
             final_accuracy=final, final_accuracy_mean=float(np.mean(final)),
             final_accuracy_ci95=bootstrap_ci(final), curve_mean=curve("train_seconds", grid),
             curve_tokens_mean=curve("generated_tokens", tokens))
    for key in ("seconds_per_step", "steps", "train_seconds", "generated_tokens", "peak_memory_bytes"):
        a[key] = float(np.mean([r[key] for r in runs]))  # means over the seeds
    a["runs"] = [{k: v for k, v in r.items() if k not in ("values", "data", "eval_data", "dump")}
                 for r in runs]  # values.jsonl stays in the run folders; the JSON keeps binned summaries
    return a


def compare(size, paths, out, results_dir, n_jobs, machine, quick):
    lrs, lr_source = chosen_lrs(results_dir, size["model"])
    jobs = [job(f"{name}_s{seed}", algo, seed, lrs[algo], size["critic_layers"] if name != "sppo_full_critic"
                else 0, paths[f"train_s{seed}"], paths["test"], size["budget"], size["eval_every_seconds"],
                name in ("sppo", "ppo"), size["patience"])
            for seed in size["seeds"] for name, algo in RUNS.items()]
    results = run_all(jobs, size, out, n_jobs)
    by = {name: [r for r in results if r["name"] == f"{name}_s{r['seed']}"] for name in RUNS}

    # the mean curves on a common grid of training seconds (a run that stopped keeps its last accuracy: its
    # policy no longer changes); times to peaks on them
    grid = np.linspace(0, max(r["train_seconds"] for r in results), GRID_POINTS)
    algos = {name: summarise(name, runs, grid) for name, runs in by.items()}
    curves = {name: np.array([p["accuracy"] for p in a["curve_mean"]]) for name, a in algos.items()}
    grpo_peak = curves["grpo"].max()
    for name, a in algos.items():
        # each seed's own peak: its best evaluation, and the training seconds of the first evaluation at it
        peaks = [max(c["accuracy"] for c in r["curve"]) for r in by[name]]
        at = [next(c["train_seconds"] for c in r["curve"] if c["accuracy"] == p) for r, p in zip(by[name], peaks)]
        a.update(start_accuracy_mean=float(curves[name][0]), peak=peaks, peak_mean=float(np.mean(peaks)),
                 peak_ci95=bootstrap_ci(peaks), peak_train_seconds=float(np.mean(at)),
                 peak_train_seconds_per_seed=at, peak_train_seconds_ci95=bootstrap_ci(at),
                 stopped_by_patience=[r["stopped_by_patience"] for r in by[name]],
                 peak_accuracy_mean_curve=float(curves[name].max()),
                 seconds_to_own_peak=first_reach(grid, curves[name], curves[name].max()),
                 seconds_to_grpo_peak=first_reach(grid, curves[name], grpo_peak))
    differences = {}
    for x, y in COMPARE:
        lo, hi = bootstrap_ci(algos[x]["final_accuracy"], algos[y]["final_accuracy"])
        differences[f"{x}_vs_{y}"] = dict(
            difference=algos[x]["final_accuracy_mean"] - algos[y]["final_accuracy_mean"], ci95=[lo, hi],
            verdict=verdict(lo, hi))

    # the small critic against the full one, same budget and seeds
    cut, full = algos["sppo"], algos["sppo_full_critic"]
    machine_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    saved = full["peak_memory_bytes"] - cut["peak_memory_bytes"]
    small_critic = dict(critic_layers=size["critic_layers"], machine_memory_bytes=machine_memory,
                        cut_peak_memory_bytes=cut["peak_memory_bytes"],
                        full_peak_memory_bytes=full["peak_memory_bytes"],
                        memory_saving_relative=saved / full["peak_memory_bytes"],
                        memory_saving_points_of_machine=100 * saved / machine_memory,
                        cut_seconds_per_step=cut["seconds_per_step"],
                        full_seconds_per_step=full["seconds_per_step"],
                        cut_final_accuracy_mean=cut["final_accuracy_mean"],
                        full_final_accuracy_mean=full["final_accuracy_mean"],
                        accuracy_difference=differences["sppo_vs_sppo_full_critic"])

    n = size["samples"]
    settings = dict(
        model=size["model"], samples_per_step={name: n for name in RUNS},
        prompts_per_step={name: n // (size["group_size"] if algo == "grpo" else 1)
                          for name, algo in RUNS.items()},
        minibatches=size["minibatches"], samples_per_optimizer_step=n // size["minibatches"], ppo_epochs=1,
        max_new_tokens=size["max_new_tokens"], budget_train_seconds=size["budget"], patience=size["patience"],
        eval_every_train_seconds=size["eval_every_seconds"], eval_problems=size["eval_size"],
        eval_data="data/test.jsonl: arithmetic(levels, 256, 0, 'test'), the same for every seed and run",
        seeds=size["seeds"], lrs={k: dict(lr=a["lr"], critic_lr=a["critic_lr"]) for k, a in algos.items()},
        lr_source=lr_source, machine=machine, date=time.strftime("%Y-%m-%d"), quick=quick, jobs=n_jobs,
        **timing(results),
        train_seconds="each step's " + " + ".join(llm_train.TIME_KEYS) + "; loading and evaluation excluded",
        band="lowest to highest seed at each grid point (each seed linear between its evaluations)",
        ci95=f"percentile bootstrap over seeds, {RESAMPLES} resamples, numpy default_rng(0)")
    result = dict(settings=settings, algos=algos, grpo_mean_peak=float(grpo_peak),
                  speedup_vs_grpo=speedup_intervals(by["sppo"], by["grpo"], grid),
                  final_accuracy_differences=differences,
                  small_critic=small_critic,
                  tail_effect=tail_effect([v for r in by["ppo"] for v in r["values"]]),
                  calibration=calibration([v for r in by["sppo"] for v in r["values"]]))
    with open(os.path.join(results_dir, "llm_compare.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_md(results_dir, "llm_compare.md", report(result))
    try:
        plot(result, results_dir)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)


def report(res):
    """The markdown tables: only what the intervals support is called a difference."""
    s, algos, sp, c = res["settings"], res["algos"], res["speedup_vs_grpo"], res["small_critic"]
    quick = " (random weights: a smoke test, the numbers mean nothing)" if s["quick"] else ""
    lines = [f"Model `{s['model']}`{quick}; {s['samples_per_step']['sppo']} samples per step for every run "
             f"(grpo {s['prompts_per_step']['grpo']} prompts x 8), {s['samples_per_optimizer_step']} per "
             f"optimiser step; each run until no new best by more than 0.01 in {s['patience']} evaluations in a "
             f"row, or {s['budget_train_seconds']} training seconds ({s['train_seconds']}); "
             f"seeds {', '.join(map(str, s['seeds']))}; greedy accuracy on the same {s['eval_problems']} "
             f"held-out problems; lrs from {s['lr_source']}. {s['machine']}, {s['date']}, "
             f"{timing_text(s, s['jobs'])}.", "",
             "| run | lr (critic) | steps | s/step | training s | peak, mean [95% CI] | peak per seed | peak at "
             "training s, mean [95% CI] | final accuracy, mean [95% CI] | s to GRPO's mean peak (mean curve) "
             "| generated tokens | peak memory |", "|---" * 12 + "|"]
    for name, a in algos.items():
        (lo, hi), (plo, phi), (tlo, thi) = a["final_accuracy_ci95"], a["peak_ci95"], a["peak_train_seconds_ci95"]
        lines.append(f"| {name} | {a['lr']:g} ({fmt(a['critic_lr'], 'g')}) | {a['steps']:.1f} | "
                     f"{a['seconds_per_step']:.1f} | {a['train_seconds']:.0f} | {a['peak_mean']:.3f} "
                     f"[{plo:.3f}, {phi:.3f}] | {', '.join(f'{x:.3f}' for x in a['peak'])} | "
                     f"{a['peak_train_seconds']:.0f} [{tlo:.0f}, {thi:.0f}] | "
                     f"{a['final_accuracy_mean']:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{fmt(a['seconds_to_grpo_peak'], '.0f')} | {a['generated_tokens']:,.0f} | "
                     f"{a['peak_memory_bytes'] / 2**30:.2f} GiB |")
    lines += ["", f"Start accuracy {algos['grpo']['start_accuracy_mean']:.3f}; GRPO's mean-curve peak "
              f"{res['grpo_mean_peak']:.3f}. Intervals: {s['ci95']}; with {len(s['seeds'])} seeds they are "
              "narrower than they should be: read them as the least uncertainty there is.", ""]
    lines += [f"- {k.replace('_vs_', ' vs ')} final accuracy: difference {d['difference']:+.3f} "
              f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] -> {d['verdict']}"
              for k, d in res["final_accuracy_differences"].items()]
    def speedup(key):
        if f"{key}_ci95" in sp:
            lo, hi = sp[f"{key}_ci95"]
            return f"{times(sp[key])} [{lo:.2f}, {hi:.2f}] -> {sp[key + '_verdict']}"
        return f"{times(sp[key])} ({sp[key + '_reason']})"
    lines += ["", "Speed-up of SPPO over GRPO in training seconds, on the mean curves (95% bootstrap interval "
              "over seeds): the paper's way (time to each one's own peak, GRPO's / SPPO's) " + speedup("paper_way")
              + "; ours (GRPO's time to its peak / SPPO's time to GRPO's peak) " + speedup("ours")
              + ". Paper: 5.9x, the paper's way."]
    d = c["accuracy_difference"]
    lines += ["", f"Small critic ({c['critic_layers']} layers) against the full one, same budget and seeds:",
              "",
              "| critic | peak memory (RSS, mean) | s/step | final accuracy mean |", "|---" * 4 + "|",
              f"| {c['critic_layers']} layers | {c['cut_peak_memory_bytes'] / 2**30:.2f} GiB | "
              f"{c['cut_seconds_per_step']:.1f} | {c['cut_final_accuracy_mean']:.3f} |",
              f"| all layers | {c['full_peak_memory_bytes'] / 2**30:.2f} GiB | "
              f"{c['full_seconds_per_step']:.1f} | {c['full_final_accuracy_mean']:.3f} |", "",
              f"The small critic's runs peak {100 * c['memory_saving_relative']:.1f}% lower (relative), "
              f"{c['memory_saving_points_of_machine']:.1f} percentage points of the machine's "
              f"{c['machine_memory_bytes'] / 2**30:.1f} GiB (paper: 12.8 points of a GPU, 14% relative); "
              f"accuracy difference {d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] -> "
              f"{d['verdict']}."]
    tail, calib = res["tail_effect"], res["calibration"]
    if tail:
        lines += ["", "PPO critic, mean V(s_t) at the start (t/T < 0.1) and end (t/T >= 0.9) of responses, "
                  "seeds pooled:", "", "| phase | outcome | responses | V at start | V at end |",
                  "|---" * 5 + "|"]
        for key in ("early_correct", "early_wrong", "late_correct", "late_wrong"):
            v = tail[key]["mean_value"]
            lines.append(f"| {key.split('_')[0]} | {key.split('_')[1]} | {tail[key]['responses']} | "
                         f"{fmt(v[0], '.3f')} | {fmt(v[-1], '.3f')} |")
    if calib:
        lines += ["", f"SPPO prompt value, all {calib['samples']} training samples of all seeds "
                  f"(Brier {calib['brier']:.3f}):", "",
                  "| predicted bin | samples | mean predicted | observed success |", "|---" * 4 + "|"]
        lines += [f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['count']} | {b['mean_predicted']:.3f} | "
                  f"{b['success_rate']:.3f} |" for b in calib["bins"]]
    return lines


def plot(res, results_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    start, peak = res["algos"]["grpo"]["start_accuracy_mean"], res["grpo_mean_peak"]
    for ax, key, curve, xlabel in [(axes[0], "train_seconds", "curve_mean", "training seconds (no loading, "
                                    "no evaluation)"),
                                   (axes[1], "generated_tokens", "curve_tokens_mean", "generated tokens")]:
        for name, a in res["algos"].items():
            x = [p[key] for p in a[curve]]
            ax.plot(x, [p["accuracy"] for p in a[curve]], color=COLORS[name],
                    ls="--" if name == "sppo_full_critic" else "-", label=f"{name} ({len(a['seeds'])} seeds)")
            ax.fill_between(x, [p["band_lo"] for p in a[curve]], [p["band_hi"] for p in a[curve]],
                            color=COLORS[name], alpha=0.15, lw=0)
        ax.axhline(peak, color="grey", ls=":", lw=1, label=f"GRPO's mean peak {peak:.3f}")
        ax.axhline(start, color="black", ls="-.", lw=0.8, label=f"start {start:.3f}")
        ax.set(xlabel=xlabel, ylabel="held-out greedy accuracy (band: seeds' min-max)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "llm_accuracy.png"), dpi=110)
    plt.close(fig)

    tail, calib = res["tail_effect"], res["calibration"]
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
    p.add_argument("--quick", action="store_true", help="random tiny model, tiny budget: a smoke test")
    p.add_argument("--sweep", action="store_true", help="the lr sweep on the validation split instead")
    p.add_argument("--out", default=None, help="run folders and data (default runs/llm_compare[_quick])")
    p.add_argument("--results", default=None, help="tables, plots (bench/results; --quick: OUT/results)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each (2 fit in 24 GB)")
    args = p.parse_args()
    size = QUICK if args.quick else FULL
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", "llm_compare_quick" if args.quick
                                                   else "llm_compare"))
    results_dir = args.results or os.path.join(*((out,) if args.quick else (ROOT, "bench")), "results")
    os.makedirs(results_dir, exist_ok=True)
    paths = write_data(size["sweep_seeds"] if args.sweep else size["seeds"], size["train_problems"], out)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {memory / 2**30:.1f} GiB, {args.jobs} run(s) "
               f"side by side, 1 torch thread each, Python {platform.python_version()}")
    (sweep if args.sweep else compare)(size, paths, out, results_dir, args.jobs, machine, args.quick)
    print(f"{time.time() - START:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
