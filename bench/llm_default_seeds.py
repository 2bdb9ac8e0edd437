"""The default LLM run on five seeds: does the result belong to the recipe or to a seed?

    python bench/llm_default_seeds.py                 # seeds 0-4, one at a time, torch's threads (2 here)
    python bench/llm_default_seeds.py --jobs 2        # two side by side, one thread each
    python bench/llm_default_seeds.py --quick         # the tiny random model, 2 seeds, 1 step: a smoke test

Each run is `python llm_train.py --seed S --out DIR --overwrite [FLAGS]` (FLAGS: whatever follows `--`, e.g. a
candidate recipe), nothing else changed. A run that finished with the same settings, defaults resolved, is
read back, not rerun (so a recipe's runs count for the defaults once it becomes them).
Writes RESULTS/llm_default_seeds.{md,json} (a call without FLAGS, the defaults): `seeds`, a list of {seed,
accuracy_before, accuracy_after, wall_seconds, train_seconds, entropy_final}, and the mean with its 95%
bootstrap interval over seeds. Every call also adds its recipe (FLAGS, commit) to
RESULTS/llm_recipes.{md,json}: the search behind the defaults.
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
sys.path.insert(0, ROOT)
import llm_train  # noqa: E402  (its flags, to compare a finished run's config with the one wanted)


def run(seed, out, flags, threads):
    out = os.path.abspath(out)
    cmd = [sys.executable, "llm_train.py", "--seed", str(seed), *flags, "--out", out, "--overwrite"]
    cmd += ["--threads", str(threads)] if threads else []
    path = os.path.join(out, "summary.json")
    summary = json.load(open(path)) if os.path.isfile(path) else {}
    wanted = dataclasses.asdict(llm_train.parse_config(cmd[2:]))  # the defaults resolved: a run made with
    same = {**summary.get("config", {}), "out": out, "overwrite": True} == wanted  # the same flags spelt out
    if summary.get("eval_accuracy_after") is None or not same:  # (before they became defaults) is read back
        os.makedirs(os.path.dirname(out), exist_ok=True)
        t0 = time.time()
        with open(out + ".log", "w") as log:
            done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=log,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {out}.log")
        summary = json.load(open(path))
        summary.update(command=cmd[1:], process_seconds=round(time.time() - t0, 1),
                       measured=time.strftime("%Y-%m-%d %H:%M"))
        json.dump(summary, open(path, "w"), indent=1)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]
    return dict(seed=seed, accuracy_before=summary["eval_accuracy_before"],
                accuracy_after=summary["eval_accuracy_after"], wall_seconds=summary["wall_seconds"],
                process_seconds=summary.get("process_seconds"), train_seconds=summary["train_seconds"],
                entropy_final=rows[-1]["entropy"],  # (a run this script did not finish: its summary's time)
                measured=summary.get("measured") or time.strftime("%Y-%m-%d %H:%M",
                                                                  time.localtime(os.path.getmtime(path))))


def bootstrap_ci(values, resamples=10_000, seed=0):
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    return [float(v) for v in np.percentile(means, [2.5, 97.5])]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (then one torch thread each)")
    p.add_argument("--quick", action="store_true", help="tiny model, seeds 0 and 1, 1 step, 16 problems")
    p.add_argument("--out", default=None, help="run folders (default runs/default_seeds[_quick])")
    p.add_argument("--results", default=None, help="tables (default bench/results; OUT with --quick)")
    p.add_argument("--note", default="", help="how the runs shared the machine, for the table's header")
    a, flags = p.parse_known_args()
    flags = [f for f in flags if f != "--"]
    recipe = [f for i, f in enumerate(flags) if "--threads" not in flags[max(i - 1, 0):i + 1]]  # the user's
    seeds = [0, 1] if a.quick else a.seeds
    if a.quick:
        flags = ["--model", "tiny", "--steps", "1", "--batch-size", "4", "--eval-size", "16",
                 "--max-new-tokens", "8"] + flags
    out = a.out or os.path.join(ROOT, "runs", "default_seeds_quick" if a.quick else "default_seeds")
    results = a.results or (out if a.quick else os.path.join(ROOT, "bench", "results"))
    threads = 1 if a.jobs > 1 else 0
    given = flags[flags.index("--threads") + 1] if "--threads" in flags else None
    with ThreadPoolExecutor(a.jobs) as pool:
        runs = list(pool.map(lambda s: run(s, os.path.join(out, f"seed{s}"), flags, threads), seeds))
    acc = [r["accuracy_after"] for r in runs]
    result = dict(flags=flags, jobs=a.jobs, threads=given or threads or "torch default", note=a.note,
                  machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                  seeds=runs, accuracy_after_mean=float(np.mean(acc)), accuracy_after_ci95=bootstrap_ci(acc),
                  accuracy_after_min=min(acc))
    lines = [f"`python llm_train.py --seed S {' '.join(flags)}`; {result['machine']}; {a.jobs} run(s) at a "
             f"time, threads: {result['threads']}. {a.note}", "",
             "| seed | accuracy before -> after | wall s | training s | final entropy | measured |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f} | "
              f"{r['wall_seconds']:.0f} | {r['train_seconds']:.0f} | {r['entropy_final']:.3f} | "
              f"{r['measured']} |"
              for r in runs]
    lines += ["", f"Mean accuracy after: {result['accuracy_after_mean']:.3f} "
                  f"[{result['accuracy_after_ci95'][0]:.3f}, {result['accuracy_after_ci95'][1]:.3f}], "
                  f"lowest seed {result['accuracy_after_min']:.3f}."]
    os.makedirs(results, exist_ok=True)
    if not recipe:  # the defaults themselves: the table the README quotes
        with open(os.path.join(results, "llm_default_seeds.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(results, "llm_default_seeds.json"), "w") as f:
            json.dump(result, f, indent=1)
    print("\n".join(lines))
    print("\n".join(record_recipe(results, recipe, result)))


def record_recipe(results, recipe, result):
    """Add this call's recipe (its flags on top of the defaults of this commit) to RESULTS/llm_recipes.*."""
    path = os.path.join(results, "llm_recipes.json")
    rows = json.load(open(path))["recipes"] if os.path.exists(path) else []
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # "-dirty": uncommitted changes
    row = dict(flags=recipe, commit=commit, seeds=[r["seed"] for r in result["seeds"]],
               accuracy_after=[r["accuracy_after"] for r in result["seeds"]],
               mean=result["accuracy_after_mean"], ci95=result["accuracy_after_ci95"],
               min=result["accuracy_after_min"],
               wall_seconds_max=max(r["wall_seconds"] for r in result["seeds"]),
               entropy_final_mean=float(np.mean([r["entropy_final"] for r in result["seeds"]])),
               jobs=result["jobs"], threads=result["threads"], note=result["note"])
    rows = [r for r in rows if (r["flags"], r["commit"]) != (recipe, commit)] + [row]
    with open(path, "w") as f:
        json.dump(dict(recipes=rows), f, indent=1)
    lines = ["Recipes tried: `python llm_train.py --seed S FLAGS` at the commit named, seeds as listed; "
             "how the runs shared the machine is each row's `note` in llm_recipes.json.", "",
             "| flags (on top of that commit's defaults) | commit | accuracy per seed | mean [95% CI] "
             "| lowest | final entropy (mean) | wall s (max) | --jobs |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| `{' '.join(r['flags']) or '(defaults)'}` | {r['commit']} | "
              f"{', '.join(f'{x:.3f}' for x in r['accuracy_after'])} | {r['mean']:.3f} "
              f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['min']:.3f} | {r['entropy_final_mean']:.3f} | "
              f"{r['wall_seconds_max']:.0f} | {r['jobs']} |" for r in rows]
    with open(os.path.join(results, "llm_recipes.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
