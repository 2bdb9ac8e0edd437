"""LoRA against full fine-tuning at equal training seconds, what --grad-checkpointing costs, and what fits a GPU.

    python bench/llm_lora.py                  # all three parts; runs one at a time, torch's threads
    python bench/llm_lora.py --jobs 2         # two runs side by side, one thread each
    python bench/llm_lora.py --parts fits     # only the GPU table (no run: the memory plan's arithmetic)
    python bench/llm_lora.py --quick          # the tiny random model, 1 seed, seconds: a smoke test

Part "accuracy": `python llm_train.py --seed S --time-budget BUDGET --steps 100 FULL|LORA` for seeds 0-2,
full fine-tuning FULL = `--lora 0 --lr 3e-5` (the defaults before results/llm_default_seeds.md) against
LORA = `--lora 16 --lr 3e-4` (alpha 32, adapters on every linear layer of the policy and of the critic, value
head trained fully). The LoRA lr is 10x the full one, the usual rule for
adapters, not tuned here. Both stop at the same training seconds: held-out greedy accuracy (256 problems), mean
and 95% bootstrap interval over seeds, seconds a step, peak memory.
Part "memory": one step (`--steps 1 --eval-size 64`) of full, --grad-checkpointing, --lora 16 and both: the
measured peak RSS against the memory plan's total (llm_train.py prints it before anything loads), and the
seconds of the step's update (time_critic + time_policy: what checkpointing recomputes).
Part "fits": llm_train.plan_bytes for Qwen2.5-0.5B/1.5B/7B shapes on a CUDA device (no CPU runtime term) at a
reasoning workload (64 prompts a step, 256 prompt + 1024 response tokens, micro-batch 4, eval batch 64), against
24, 48 and 80 GiB: an estimate (float32 weights and activations; the CUDA path's bf16 autocast needs less).
A run that finished with the same command is read back. Writes RESULTS/llm_lora.{md,json}.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import llm_train  # noqa: E402

LORA = ["--lora", "16", "--lr", "3e-4"]
FULL = ["--lora", "0", "--lr", "3e-5"]  # llm_train.py's defaults were these until the five-seed table
MEMORY = {"full": FULL, "grad-checkpointing": [*FULL, "--grad-checkpointing"], "lora 16": ["--lora", "16"],
          "lora 16 + grad-checkpointing": ["--lora", "16", "--grad-checkpointing"]}
QWEN = {  # Qwen2.5-*-Instruct config.json fields (hub), the memory plan's inputs
    "0.5B": dict(num_hidden_layers=24, hidden_size=896, intermediate_size=4864, vocab_size=151936,
                 tie_word_embeddings=True, num_attention_heads=14, num_key_value_heads=2),
    "1.5B": dict(num_hidden_layers=28, hidden_size=1536, intermediate_size=8960, vocab_size=151936,
                 tie_word_embeddings=True, num_attention_heads=12, num_key_value_heads=2),
    "7B": dict(num_hidden_layers=28, hidden_size=3584, intermediate_size=18944, vocab_size=152064,
               tie_word_embeddings=False, num_attention_heads=28, num_key_value_heads=4)}
WORKLOAD = dict(batch_size=64, max_new_tokens=1024, micro_batch=4, eval_batch_size=64)
SETUPS = {  # name: Config changes
    "full, whole critic": dict(lora=0, critic_layers=0), "full, small critic (6 layers)": dict(lora=0, critic_layers=6),
    "full, small critic, grad-ckpt": dict(lora=0, critic_layers=6, grad_checkpointing=True),
    "LoRA 16, small critic": dict(lora=16, critic_layers=6),
    "LoRA 16, small critic, grad-ckpt": dict(lora=16, critic_layers=6, grad_checkpointing=True)}
GPUS = (24, 48, 80)


def run(out, flags, threads):
    """One llm_train.py run (read back if it finished with the same command): its summary and log."""
    out = os.path.abspath(out)
    cmd = ["llm_train.py", *flags, "--out", out, "--overwrite"] + (["--threads", str(threads)] if threads else [])
    path = os.path.join(out, "summary.json")
    summary = json.load(open(path)) if os.path.isfile(path) else {}
    if summary.get("eval_accuracy_after") is None or summary.get("command") != cmd:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out + ".log", "w") as log:
            done = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=log, stderr=log,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {out}.log")
        summary = json.load(open(path))
        plan = re.search(r"^memory plan: .*total ([\d.]+) GiB", open(out + ".log").read(), re.M)
        summary.update(command=cmd, plan_gib=float(plan.group(1)) if plan else None,
                       measured=time.strftime("%Y-%m-%d %H:%M"))
        json.dump(summary, open(path, "w"), indent=1)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]
    steps = [r for r in rows if "time_policy" in r]
    return dict(accuracy=summary["eval_accuracy_after"], steps=summary["steps"],
                train_seconds=summary["train_seconds"],
                seconds_per_step=summary["train_seconds"] / summary["steps"],
                update_seconds=float(np.mean([r["time_critic"] + r["time_policy"] for r in steps])),
                peak_gib=summary["peak_memory_bytes"] / 2**30, plan_gib=summary.get("plan_gib"),
                measured=summary.get("measured"))


def bootstrap_ci(values, resamples=10_000, seed=0):
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    return [float(v) for v in np.percentile(means, [2.5, 97.5])]


def fits():
    """Expected peak GiB of each setup and policy size, and which GPU sizes hold it."""
    table = {}
    for size, shape in QWEN.items():
        for name, change in SETUPS.items():
            cfg = llm_train.Config(**WORKLOAD, **change)
            parts = llm_train.plan_bytes(cfg, shape, shape, 256, "cuda")
            table[f"{size} | {name}"] = dict(gib=sum(parts.values()) / 2**30,
                                             parts={k: v / 2**30 for k, v in parts.items()})
    return table


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["accuracy", "memory", "fits"],
                   choices=["accuracy", "memory", "fits"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=float, default=400.0, help="training seconds of every accuracy run")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (then one torch thread each)")
    p.add_argument("--threads", type=int, default=0, help="torch threads a run (0: 1 with --jobs 2, else all)")
    p.add_argument("--quick", action="store_true", help="tiny model, seed 0, 2 s budget, 16 problems")
    p.add_argument("--out", default=None, help="run folders (default runs/llm_lora[_quick])")
    p.add_argument("--results", default=None, help="tables (default bench/results; OUT with --quick)")
    a = p.parse_args()
    out = a.out or os.path.join(ROOT, "runs", "llm_lora_quick" if a.quick else "llm_lora")
    results = a.results or (out if a.quick else os.path.join(ROOT, "bench", "results"))
    small = (["--model", "tiny", "--batch-size", "4", "--eval-size", "16", "--max-new-tokens", "8"] if a.quick
             else [])
    seeds, budget = ([0], 2.0) if a.quick else (a.seeds, a.budget)
    threads = a.threads or (1 if a.jobs > 1 else 0)
    jobs = []
    if "accuracy" in a.parts:
        jobs += [(f"{arm}/seed{s}", [*small, "--seed", str(s), "--time-budget", str(budget), "--steps", "100",
                                      *(LORA if arm == "lora" else FULL)])
                 for arm in ("full", "lora") for s in seeds]
    if "memory" in a.parts:
        jobs += [(f"memory/{name.replace(' ', '_')}", [*small, "--steps", "1", "--eval-size", "16" if a.quick
                                                        else "64", *flags]) for name, flags in MEMORY.items()]
    with ThreadPoolExecutor(a.jobs) as pool:
        finished = pool.map(lambda j: run(os.path.join(out, j[0]), j[1], threads), jobs)
        done = dict(zip([j[0] for j in jobs], finished))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    result = dict(machine=machine, jobs=a.jobs, threads=threads or "torch default", quick=a.quick, runs=done)
    lines = [f"{machine}; {a.jobs} run(s) at a time, threads: {result['threads']}.", ""]
    if "accuracy" in a.parts:
        lines += [f"Accuracy at {budget:.0f} training s (`--time-budget {budget:.0f}`; LoRA: "
                  f"`{' '.join(LORA)}`)", "",
                  "| arm | accuracy per seed | mean [95% CI] | steps | s / step | peak GiB | measured |",
                  "|---|---|---|---|---|---|---|"]
        for arm in ("full", "lora"):
            rs = [done[f"{arm}/seed{s}"] for s in seeds]
            acc = [r["accuracy"] for r in rs]
            result[arm] = dict(accuracy_mean=float(np.mean(acc)), accuracy_ci95=bootstrap_ci(acc),
                               seconds_per_step=float(np.mean([r["seconds_per_step"] for r in rs])),
                               peak_gib=float(np.mean([r["peak_gib"] for r in rs])))
            lines.append(f"| {arm} | {', '.join(f'{x:.3f}' for x in acc)} | {np.mean(acc):.3f} "
                         f"[{result[arm]['accuracy_ci95'][0]:.3f}, {result[arm]['accuracy_ci95'][1]:.3f}] | "
                         f"{', '.join(str(r['steps']) for r in rs)} | {result[arm]['seconds_per_step']:.0f} | "
                         f"{result[arm]['peak_gib']:.2f} | {rs[0]['measured']} |")
        lines.append("")
    if "memory" in a.parts:
        lines += ["One step, `--steps 1`: measured peak RSS against the memory plan", "",
                  "| setting | plan GiB | measured peak GiB | plan / measured | update s (critic + policy) |",
                  "|---|---|---|---|---|"]
        for name in MEMORY:
            r = done[f"memory/{name.replace(' ', '_')}"]
            lines.append(f"| {name} | {r['plan_gib']:.2f} | {r['peak_gib']:.2f} | "
                         f"{r['plan_gib'] / r['peak_gib']:.2f} | {r['update_seconds']:.1f} |")
        lines.append("")
    if "fits" in a.parts:
        result["fits"] = table = fits()
        work = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in WORKLOAD.items())
        lines += [f"What fits, sppo (an estimate: llm_train.plan_bytes, float32 on CUDA; {work}, prompts of 256 "
                  "tokens)", "",
                  "| policy | setup | expected peak GiB | " + " | ".join(f"{g} GiB" for g in GPUS) + " |",
                  "|---" * (3 + len(GPUS)) + "|"]
        lines += [f"| {key} | {t['gib']:.1f} | " + " | ".join("fits" if t["gib"] <= g else "-" for g in GPUS)
                  + " |" for key, t in table.items()]
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "llm_lora.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(results, "llm_lora.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
