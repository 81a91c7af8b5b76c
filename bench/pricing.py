"""Benchmark `bot.pricing.Pricer` against raw `genai_prices.calc_price`.

Run with ``python bench/pricing.py [N]`` (default N = 100,000 usages).
"""

from __future__ import annotations

import math
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genai_prices import Usage, calc_price  # noqa: E402

from bot.pricing import Pricer  # noqa: E402

# Common models, all on the Pricer's fast path (deepseek-chat has time-of-day prices and
# mistral-large-4 start-date prices: both are cached per price period). Tiered models always go
# through calc_price and are benchmarked separately.
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4.1"),
    ("anthropic", "claude-sonnet-4-0"),
    ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-flash"),
    ("deepseek", "deepseek-chat"),
    ("mistral", "mistral-large-4"),
]
TIERED = [("anthropic", "claude-sonnet-4-5"), ("google", "gemini-2.5-pro")]


def make_calls(models: list[tuple[str, str]], n: int, seed: int = 42) -> list[tuple]:
    rnd = random.Random(seed)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    calls = []
    for _ in range(n):
        provider, model = rnd.choice(models)
        prompt = rnd.randrange(0, 200_000)
        cached = rnd.randrange(0, prompt + 1) if rnd.random() < 0.5 else 0
        completion = rnd.randrange(0, 8_000)
        at = start + timedelta(seconds=rnd.randrange(0, 60 * 86_400))
        calls.append((provider, model, prompt, completion, cached, at))
    return calls


def bench_pricer(pricer: Pricer, calls: list[tuple]) -> tuple[float, list[float | None]]:
    price = pricer.price
    t0 = time.perf_counter()
    results = [price(p, m, pt, ct, cached, at).dollars for p, m, pt, ct, cached, at in calls]
    return time.perf_counter() - t0, results


def bench_calc_price(calls: list[tuple]) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    results = [
        float(
            calc_price(
                Usage(input_tokens=pt, output_tokens=ct, cache_read_tokens=cached),
                m,
                provider_id=p,
                genai_request_timestamp=at,
            ).total_price
        )
        for p, m, pt, ct, cached, at in calls
    ]
    return time.perf_counter() - t0, results


def run(label: str, models: list[tuple[str, str]], n: int) -> None:
    calls = make_calls(models, n)
    pricer = Pricer()
    pricer.price(*calls[0][:5], at=calls[0][5])  # build the first cache entry outside the timing
    cold, _ = bench_pricer(pricer, calls)  # includes building the remaining cache entries
    warm, fast = bench_pricer(pricer, calls)
    raw, slow = bench_calc_price(calls)
    mismatches = sum(
        1 for a, b in zip(fast, slow, strict=True) if not math.isclose(a, b, rel_tol=1e-12)
    )
    us = 1e6 / n
    print(f"{label}: {n:,} calls over {len(models)} models")
    print(f"  Pricer (first pass, fills cache): {cold * us:8.2f} us/call")
    print(f"  Pricer (warm cache)             : {warm * us:8.2f} us/call")
    print(f"  genai_prices.calc_price         : {raw * us:8.2f} us/call")
    print(f"  speed-up (calc_price / Pricer)  : {raw / warm:8.1f}x   mismatches: {mismatches}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"price data: {Pricer().data_version}")
    run("common models", MODELS, n)
    run("tiered models (calc_price fallback)", TIERED, max(n // 10, 1))


if __name__ == "__main__":
    main()
