"""Speed of llm_train.reward_fn: calls per second on plain-number completions (the built-in task's fast path)
and the slowest call on hostile completions (math-verify under its VERIFY_SECONDS timer).

    python bench/reward_speed.py        # targets: >= 2,000 calls/s plain, <= 1 s for any hostile call
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import llm_train  # noqa: E402

HOSTILE = ["\\boxed{" * 50000 + "1", "{" * 100000, "1" * 200000, "1," * 100000,
           "-" * 100000 + "Answer:" * 10000, "\\boxed{" + "}" * 100000, "9" * 60 + " " + "9" * 59 + "8",
           "\\boxed{" + "\\frac{" * 100 + "1" + "}{2}" * 100 + "}",
           "\\boxed{" + "(" * 140 + "1" + ")" * 140 + "}", "\\boxed{" + "x^{" * 90 + "2" + "}" * 90 + "}",
           "\\boxed{9^{9^{9^{9^{9}}}}}", "\\boxed{10^{10^{10}}}",
           "Answer: " + "\\sqrt{" * 50 + "2" + "}" * 50, "\\boxed{\\prod_{k=1}^{10^{9}} k}",
           "\\boxed{" + "+".join(["x"] * 140) + "}", "The answer is " + "1" * 300 + "."]


def main():
    llm_train.reward_fn("\\boxed{\\frac{1}{2}}", "0.5")  # imports math-verify and sympy, outside the timing
    n = 20000
    texts = [f"First, {i} * 3 = {3 * i}. Then add 0. Answer: {3 * i}" for i in range(n)]
    t0 = time.perf_counter()
    correct = sum(llm_train.reward_fn(t, str(3 * i)) for i, t in enumerate(texts))
    plain_rate = n / (time.perf_counter() - t0)
    slowest = 0.0
    for text in HOSTILE:
        for gold in ("1", "\\frac{1}{2}", "(1, 2)"):
            t0 = time.perf_counter()
            llm_train.reward_fn(text, gold)
            slowest = max(slowest, time.perf_counter() - t0)
    result = dict(plain_calls_per_second=round(plain_rate), plain_correct=correct, plain_calls=n,
                  hostile_calls=len(HOSTILE) * 3, hostile_slowest_seconds=round(slowest, 3),
                  verify_seconds=llm_train.VERIFY_SECONDS, max_chars=llm_train.MAX_CHARS)
    print(json.dumps(result))
    print(f"plain numbers: {plain_rate:,.0f} calls/s (target >= 2,000); slowest hostile call: "
          f"{slowest:.3f} s (target <= 1 s)", file=sys.stderr)


if __name__ == "__main__":
    main()
