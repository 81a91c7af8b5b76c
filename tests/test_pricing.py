from __future__ import annotations

import math
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import Usage, calc_price, data_snapshot
from genai_prices.data import providers as BUNDLED_PROVIDERS
from genai_prices.types import (
    ClauseAnd,
    ClauseEquals,
    ClauseOr,
    ClauseStartsWith,
    ModelPrice,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.pricing import UNPRICED, Price, Pricer


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


def reference(provider: str, model: str, prompt: int, completion: int, cached: int, at: datetime):
    """genai-prices' own answer; input_tokens includes cache_read_tokens, like prompt_tokens."""
    return calc_price(
        Usage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached),
        model,
        provider_id=provider or None,
        genai_request_timestamp=at,
    )


def assert_matches_calc_price(
    pricer: Pricer,
    provider: str,
    model: str,
    prompt: int,
    completion: int,
    cached: int,
    at: datetime,
) -> None:
    got = pricer.price(provider, model, prompt, completion, cached, at=at)
    try:
        calc = reference(provider, model, prompt, completion, cached, at)
    except LookupError:
        assert got == UNPRICED
        return
    if not got.priced:
        # Only models that genai-prices prices in non-token units (audio hours, pages...): it
        # reports $0 for token usage there; we refuse to invent that price.
        assert got == UNPRICED
        assert pricer.pricing_mode(provider, model, at) == "unpriced"
        priced_keys = [k for k, v in vars(calc.model_price).items() if v is not None]
        assert priced_keys and not any(k.endswith("_mtok") for k in priced_keys)
        assert calc.total_price == 0
        return
    assert got.price_version == pricer.data_version
    expected = float(calc.total_price)
    assert math.isclose(got.dollars, expected, rel_tol=1e-12, abs_tol=0), (got, calc.total_price)


# -- the bundled data ----------------------------------------------------------------------------


def _literal_refs(clause) -> list[str]:
    if isinstance(clause, ClauseEquals):
        return [clause.equals]
    if isinstance(clause, ClauseStartsWith):
        return [clause.starts_with]
    if isinstance(clause, ClauseOr):
        return [ref for sub in clause.or_ for ref in _literal_refs(sub)]
    if isinstance(clause, ClauseAnd):
        return _literal_refs(clause.and_[0]) if clause.and_ else []
    return []


def _model_prices(model) -> list[ModelPrice]:
    if isinstance(model.prices, ModelPrice):
        return [model.prices]
    return [conditional.prices for conditional in model.prices]


MODEL_REFS: list[tuple[str, str]] = sorted(
    {
        (provider.id, ref)
        for provider in BUNDLED_PROVIDERS
        for model in provider.models
        for ref in [model.id, *_literal_refs(model.match)[:2]]
    }
)
TIERED_REFS = sorted(
    {
        (provider.id, model.id)
        for provider in BUNDLED_PROVIDERS
        for model in provider.models
        if any(
            isinstance(value, TieredPrices)
            for model_price in _model_prices(model)
            for value in vars(model_price).values()
        )
    }
)
START_DATES = sorted(
    {
        conditional.constraint.start_date
        for provider in BUNDLED_PROVIDERS
        for model in provider.models
        if not isinstance(model.prices, ModelPrice)
        for conditional in model.prices
        if isinstance(conditional.constraint, StartDateConstraint)
    }
)
TIME_OF_DAY_BOUNDS = sorted(
    {
        bound
        for provider in BUNDLED_PROVIDERS
        for model in provider.models
        if not isinstance(model.prices, ModelPrice)
        for conditional in model.prices
        if isinstance(conditional.constraint, TimeOfDateConstraint)
        for bound in (conditional.constraint.start_time, conditional.constraint.end_time)
    },
    key=lambda t: (t.hour, t.minute, t.second),
)


def test_bundled_data_has_the_cases_we_care_about():
    assert len(MODEL_REFS) > 1000
    assert ("anthropic", "claude-sonnet-4-5") in TIERED_REFS
    assert date(2025, 6, 10) in START_DATES
    assert TIME_OF_DAY_BOUNDS


# -- known models --------------------------------------------------------------------------------

AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_gpt_4o_by_hand(pricer: Pricer):
    # $2.5/M input, $1.25/M cached input, $10/M output. 300 of the 1000 prompt tokens were cached.
    got = pricer.price("openai", "gpt-4o", 1000, 200, 300, at=AT)
    assert got == Price((700 * 2.5 + 300 * 1.25 + 200 * 10) / 1e6, True, pricer.data_version)
    assert got.dollars == 0.004125
    assert pricer.pricing_mode("openai", "gpt-4o", AT) == "fast"


def test_claude_sonnet_4_by_hand(pricer: Pricer):
    # $3/M input, $0.3/M cache read, $15/M output.
    got = pricer.price("anthropic", "claude-sonnet-4-20250514", 50_000, 2_000, 40_000, at=AT)
    assert got.dollars == pytest.approx((10_000 * 3 + 40_000 * 0.3 + 2_000 * 15) / 1e6, rel=1e-15)
    assert got.dollars == float(
        reference("anthropic", "claude-sonnet-4-20250514", 50_000, 2_000, 40_000, AT).total_price
    )


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4o-2024-08-06"),
        ("anthropic", "claude-sonnet-4-0"),
        ("anthropic", "claude-sonnet-4-5"),  # tiered
        ("google", "gemini-2.5-flash"),
        ("deepseek", "deepseek-chat"),  # time-of-day prices
        ("mistral", "mistral-large-4"),  # start-date prices
        ("azure", "gpt-4o"),  # falls back to OpenAI's prices
        ("", "gpt-4o"),  # provider inferred from the model
        ("", "claude-sonnet-4-0"),
    ],
)
@pytest.mark.parametrize(
    ("prompt", "completion", "cached"),
    [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 1), (1234, 567, 89), (250_000, 8_000, 200_000)],
)
def test_known_models_priced_exactly_as_calc_price(
    pricer: Pricer, provider: str, model: str, prompt: int, completion: int, cached: int
):
    got = pricer.price(provider, model, prompt, completion, cached, at=AT)
    assert got.priced
    assert got.price_version == pricer.data_version
    assert got.dollars == float(
        reference(provider, model, prompt, completion, cached, AT).total_price
    )


def test_empty_provider_infers_it_from_the_model(pricer: Pricer):
    assert pricer.price("", "gpt-4o", 1000, 10, at=AT) == pricer.price(
        "openai", "gpt-4o", 1000, 10, at=AT
    )
    assert pricer.price("", "claude-sonnet-4-0", 1000, 10, at=AT) == pricer.price(
        "anthropic", "claude-sonnet-4-0", 1000, 10, at=AT
    )


def test_tiered_model_falls_back_to_calc_price(pricer: Pricer):
    assert pricer.pricing_mode("anthropic", "claude-sonnet-4-5", AT) == "calc_price"
    below = pricer.price("anthropic", "claude-sonnet-4-5", 200_000, 1000, at=AT)
    above = pricer.price("anthropic", "claude-sonnet-4-5", 200_001, 1000, at=AT)
    assert below.dollars == pytest.approx((200_000 * 3 + 1000 * 15) / 1e6)
    assert above.dollars == pytest.approx((200_001 * 6 + 1000 * 22.5) / 1e6)


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-0"), ("anthropic", "claude-sonnet-4-5")],
)
def test_cached_tokens_are_cheaper_and_not_double_charged(pricer: Pricer, provider: str, model):
    uncached = pricer.price(provider, model, 10_000, 500, 0, at=AT).dollars
    half = pricer.price(provider, model, 10_000, 500, 5_000, at=AT).dollars
    full = pricer.price(provider, model, 10_000, 500, 10_000, at=AT).dollars
    assert full < half < uncached
    # Each cached token costs the cache-read rate instead of (not on top of) the input rate.
    model_price = reference(provider, model, 10_000, 500, 0, AT).model_price
    rate_in = model_price.input_mtok
    rate_cached = model_price.cache_read_mtok
    if isinstance(rate_in, TieredPrices):
        rate_in, rate_cached = rate_in.base, rate_cached.base
    assert uncached - half == pytest.approx(float(5_000 * (rate_in - rate_cached) / 1_000_000))


def test_cached_tokens_without_a_cache_price_cost_the_input_rate(pricer: Pricer):
    provider_id, model_id = next(
        (provider.id, model.id)
        for provider in BUNDLED_PROVIDERS
        if provider.id == "openrouter"
        for model in provider.models
        if isinstance(model.prices, ModelPrice)
        and isinstance(model.prices.input_mtok, Decimal)
        and model.prices.input_mtok > 0
        and model.prices.cache_read_mtok is None
        and (provider.id, model.id) in MODEL_REFS
        and pricer.pricing_mode(provider.id, model.id, AT) == "fast"
    )
    cached = pricer.price(provider_id, model_id, 10_000, 0, 10_000, at=AT)
    assert cached == pricer.price(provider_id, model_id, 10_000, 0, 0, at=AT)
    assert_matches_calc_price(pricer, provider_id, model_id, 10_000, 0, 10_000, AT)


def test_unknown_model_or_provider_is_unpriced(pricer: Pricer):
    assert pricer.price("openai", "no-such-model-xyz", 100, 100) == Price(None, False, None)
    assert pricer.price("no-such-provider", "gpt-4o", 100, 100) == Price(None, False, None)
    assert pricer.price("", "no-such-model-xyz", 100, 100) == UNPRICED
    assert pricer.price("openai", "", 100, 100) == UNPRICED
    assert pricer.price("", "", 0, 0) == UNPRICED
    assert pricer.pricing_mode("openai", "no-such-model-xyz") == "unpriced"


def test_models_priced_only_in_other_units_are_unpriced(pricer: Pricer):
    # Whisper is priced per audio hour: genai-prices says $0 for token usage, we don't invent it.
    assert reference("groq", "whisper-large-v3", 1000, 10, 0, AT).total_price == 0
    assert pricer.price("groq", "whisper-large-v3", 1000, 10, at=AT) == UNPRICED


def test_explicitly_free_models_cost_zero(pricer: Pricer):
    # An empty price entry in the data means "no per-token charge" (e.g. subscription models).
    assert reference("github-copilot", "gpt-4o", 1000, 10, 0, AT).model_price == ModelPrice()
    assert pricer.price("github-copilot", "gpt-4o", 1000, 10, at=AT) == Price(
        0.0, True, pricer.data_version
    )


@pytest.mark.parametrize(
    ("prompt", "completion", "cached", "message"),
    [
        (-1, 0, 0, "must be >= 0"),
        (0, -1, 0, "must be >= 0"),
        (10, 0, -1, "must be >= 0"),
        (10, 0, 11, r"cached_tokens \(11\) cannot exceed prompt_tokens \(10\)"),
    ],
)
def test_invalid_counts_are_rejected(pricer: Pricer, prompt, completion, cached, message):
    with pytest.raises(ValueError, match=message):
        pricer.price("openai", "gpt-4o", prompt, completion, cached)
    with pytest.raises(ValueError, match=message):  # even when the model is unknown
        pricer.price("openai", "no-such-model-xyz", prompt, completion, cached)


@pytest.mark.parametrize("bad", [1.5, "10", None, True])
def test_non_integer_counts_are_rejected(pricer: Pricer, bad):
    with pytest.raises(TypeError, match="must be an int"):
        pricer.price("openai", "gpt-4o", bad, 0)


def test_data_version(pricer: Pricer):
    assert pricer.data_version.startswith(f"genai-prices {genai_prices.__version__} data:")
    assert pricer.price("openai", "gpt-4o", 1, 1).price_version == pricer.data_version
    assert Pricer().data_version == pricer.data_version


# -- prices that change over time ----------------------------------------------------------------


def test_price_change_at_a_start_date():
    # o3: $10/$40 per M until 2025-06-10 (UTC), then $2/$8.
    pricer = Pricer()
    before = datetime(2025, 6, 9, 23, 59, 59, tzinfo=UTC)
    after = datetime(2025, 6, 10, 0, 0, 0, tzinfo=UTC)
    # Price the new period first so a cache keyed only by model would give the wrong old price.
    assert pricer.price("openai", "o3", 1_000_000, 1_000_000, at=after).dollars == 10.0
    assert pricer.price("openai", "o3", 1_000_000, 1_000_000, at=before).dollars == 50.0
    assert pricer.price("openai", "o3", 1_000_000, 1_000_000, at=after).dollars == 10.0
    # A non-UTC offset is converted: 2025-06-10 01:00+02:00 is still the 9th in UTC.
    local = datetime(2025, 6, 10, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert pricer.price("openai", "o3", 1_000_000, 1_000_000, at=local).dollars == 50.0
    # Naive datetimes are read as UTC.
    assert pricer.price("openai", "o3", 1_000_000, 0, at=before.replace(tzinfo=None)).dollars == 10
    for at in (before, after, local):
        assert_matches_calc_price(pricer, "openai", "o3", 123_456, 7_890, 100_000, at)


def test_three_price_periods():
    # mistral-large-4: $0.68 in, $1.36 from 2026-10-20, $0.7 from 2026-10-29.
    pricer = Pricer()
    expected = {
        datetime(2026, 10, 19, 23, 59, tzinfo=UTC): 0.68,
        datetime(2026, 10, 20, 0, 0, tzinfo=UTC): 1.36,
        datetime(2026, 10, 28, 23, 59, tzinfo=UTC): 1.36,
        datetime(2026, 10, 29, 0, 0, tzinfo=UTC): 0.7,
        datetime(2030, 1, 1, tzinfo=UTC): 0.7,
    }
    for at, rate in reversed(expected.items()):
        assert pricer.price("mistral", "mistral-large-4", 1_000_000, 0, at=at).dollars == rate
        assert pricer.pricing_mode("mistral", "mistral-large-4", at) == "fast"
        assert_matches_calc_price(pricer, "mistral", "mistral-large-4", 999_999, 5, 3, at)


def test_period_changes_from_tiered_to_flat():
    # claude-opus-4-6 had 200k-token tiers until 2026-03-13, flat prices from then on.
    pricer = Pricer()
    before = datetime(2026, 3, 12, 12, tzinfo=UTC)
    after = datetime(2026, 3, 13, 12, tzinfo=UTC)
    assert pricer.pricing_mode("anthropic", "claude-opus-4-6", after) == "fast"
    assert pricer.pricing_mode("anthropic", "claude-opus-4-6", before) == "calc_price"
    assert pricer.price("anthropic", "claude-opus-4-6", 300_000, 0, at=after).dollars == 1.5
    assert pricer.price("anthropic", "claude-opus-4-6", 300_000, 0, at=before).dollars == 3.0


def test_time_of_day_prices():
    # deepseek-chat: $0.27 in 00:30-16:30 UTC, $0.135 off-peak.
    pricer = Pricer()
    day = datetime(2026, 11, 2, tzinfo=UTC)
    peak = day.replace(hour=16, minute=29, second=59)
    off_peak = day.replace(hour=16, minute=30)
    assert pricer.price("deepseek", "deepseek-chat", 1_000_000, 0, at=off_peak).dollars == 0.135
    assert pricer.price("deepseek", "deepseek-chat", 1_000_000, 0, at=peak).dollars == 0.27
    assert pricer.price("deepseek", "deepseek-chat", 1_000_000, 0, at=day).dollars == 0.135
    for at in (peak, off_peak, day):
        assert_matches_calc_price(pricer, "deepseek", "deepseek-chat", 50_000, 2_000, 30_000, at)


def test_at_defaults_to_now(pricer: Pricer):
    # o3 has cost $2/M input since 2025-06-10; a default of e.g. the epoch would give $10.
    assert pricer.price("openai", "o3", 1_000_000, 0).dollars == 2.0


# -- fast path == calc_price ---------------------------------------------------------------------


def test_every_bundled_model_matches_calc_price_in_every_period():
    pricer = Pricer()
    instants = [datetime(2023, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, 20, 0, tzinfo=UTC)]
    for start in START_DATES:
        midnight = datetime.combine(start, time(0), tzinfo=UTC)
        instants += [midnight - timedelta(seconds=1), midnight]
    for bound in TIME_OF_DAY_BOUNDS:
        instants.append(datetime.combine(date(2026, 11, 2), bound).astimezone(UTC))
    for i, (provider, model) in enumerate(MODEL_REFS):
        at = instants[i % len(instants)]
        assert_matches_calc_price(pricer, provider, model, 345_678, 12_345, 300_001, at)
        assert_matches_calc_price(pricer, provider, model, 1_999_999, 1_000_003, 7, at)


@st.composite
def timestamps(draw) -> datetime:
    if draw(st.booleans()):
        return draw(
            st.datetimes(
                min_value=datetime(2023, 1, 1),
                max_value=datetime(2028, 12, 31),
                timezones=st.just(UTC),
            )
        )
    # Close to a start date: either side of the boundary.
    start = datetime.combine(draw(st.sampled_from(START_DATES)), time(0), tzinfo=UTC)
    return start + timedelta(seconds=draw(st.integers(-2 * 86_400, 2 * 86_400)))


@st.composite
def usages(draw) -> tuple[int, int, int]:
    prompt = draw(st.integers(0, 2_000_000))
    cached = draw(st.one_of(st.just(0), st.just(prompt), st.integers(0, prompt)))
    completion = draw(st.integers(0, 2_000_000))
    return prompt, completion, cached


PROVIDER_MODELS = st.one_of(
    st.sampled_from(MODEL_REFS),
    st.sampled_from(TIERED_REFS),
    st.sampled_from(MODEL_REFS).map(lambda ref: ("", ref[1])),  # infer the provider
    st.tuples(st.sampled_from(["openai", "anthropic", "", "nope"]), st.text(max_size=12)),
)
SHARED_PRICER = Pricer()


@settings(max_examples=300, deadline=None, database=None)
@given(provider_model=PROVIDER_MODELS, usage=usages(), at=timestamps())
@example(("anthropic", "claude-sonnet-4-5"), (200_001, 10, 150_000), AT)
@example(("anthropic", "claude-opus-4-6"), (300_000, 10, 0), datetime(2026, 3, 12, tzinfo=UTC))
@example(("deepseek", "deepseek-v4-pro"), (1_000, 10, 500), datetime(2026, 11, 2, 17, tzinfo=UTC))
@example(("groq", "whisper-large-v3"), (1_000, 10, 500), AT)
def test_fast_path_matches_calc_price(provider_model, usage, at):
    provider, model = provider_model
    prompt, completion, cached = usage
    assert_matches_calc_price(SHARED_PRICER, provider, model, prompt, completion, cached, at)


# -- isolation and concurrency -------------------------------------------------------------------


def test_uses_bundled_data_even_if_global_snapshot_is_replaced(monkeypatch: pytest.MonkeyPatch):
    expected = float(reference("openai", "gpt-4o", 1000, 10, 0, AT).total_price)
    # What UpdatePrices does after a fetch: swap the global snapshot (here: one with no data).
    monkeypatch.setattr(
        data_snapshot, "_custom_snapshot", data_snapshot.DataSnapshot([], from_auto_update=True)
    )
    with pytest.raises(LookupError):
        reference("openai", "gpt-4o", 1000, 10, 0, AT)
    assert Pricer().price("openai", "gpt-4o", 1000, 10, at=AT).dollars == expected


def test_never_touches_the_network(monkeypatch: pytest.MonkeyPatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    pricer = Pricer()
    assert pricer.price("openai", "gpt-4o", 1000, 10).priced
    assert pricer.price("anthropic", "claude-sonnet-4-5", 300_000, 10).priced


def test_thread_safe():
    calls = [
        (provider, model, 1000 * i, 10 * i, 500 * i, AT + timedelta(hours=i))
        for i in range(1, 9)
        for provider, model in [
            ("openai", "gpt-4o"),
            ("anthropic", "claude-sonnet-4-5"),
            ("deepseek", "deepseek-chat"),
            ("mistral", "mistral-large-4"),
            ("openai", "unknown-model"),
        ]
    ] * 25
    sequential = Pricer()
    expected = [sequential.price(*call[:5], at=call[5]) for call in calls]
    pricer = Pricer()
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(lambda call: pricer.price(*call[:5], at=call[5]), calls))
    assert got == expected
