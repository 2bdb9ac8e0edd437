"""A plug-in reward for llm_train.py: the built-in check, plus a format rule.

    python llm_train.py --reward examples/reward.py:boxed_only --data examples/math_small.jsonl \
        --prompt-field problem --answer-field solution

A reward is any function f(completion, answer) -> float in [0, 1]; `answer` is the gold answer as the
data stores it. llm_train.py stops with one line (and saves the steps done) if it raises or leaves [0, 1].
"""
from llm_train import last_boxed, reward_fn


def boxed_only(completion, answer):
    """1.0 for a right answer given in \\boxed{}, 0.0 otherwise (a right answer without the box too)."""
    return reward_fn(completion, answer) if last_boxed(completion) is not None else 0.0
