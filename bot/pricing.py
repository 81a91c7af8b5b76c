"""Price model calls from the price data bundled inside `genai-prices`.

`Pricer.price()` turns one model call (provider, model, OpenAI-style token counts, time of the
call) into a `Price` for the cost ledger.

Token conventions (the OpenAI ``usage`` shape our agents send):

* ``prompt_tokens`` is the whole prompt and INCLUDES ``cached_tokens``; ``cached_tokens`` is the
  part of the prompt that was read from the provider's prompt cache.
* ``completion_tokens`` is the whole completion (reasoning tokens included).

genai-prices uses the same convention: its ``input_tokens`` is the total input and
``cache_read_tokens`` (a more specific unit: input + cache_read) is a part of it. When it prices a
call it subtracts the cache reads from ``input_tokens`` before applying the input rate, and
charges them at the cache-read rate (or at the input rate when the model has no cache-read price).
So the mapping is one to one::

    Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens,
          cache_read_tokens=cached_tokens)

and cached tokens are neither charged twice nor dropped. Counts must be ints >= 0 and
``cached_tokens <= prompt_tokens`` (else `ValueError`; non-integers raise `TypeError`).

Time: ``at`` is when the call was made (aware datetime, UTC preferred; a naive datetime is read as
UTC, as genai-prices does; ``None`` means now). Prices that change over time (start dates) or
with the time of day (e.g. DeepSeek off-peak) are taken as in force at ``at``.

Lookup: provider and model are matched by genai-prices itself (provider id or its provider
aliases, model match rules, fallback providers such as Azure -> OpenAI). An empty provider lets
genai-prices infer the provider from the model name. An unknown provider or model, an empty model,
or a model that genai-prices only prices in units other than tokens (audio hours, characters,
pages...) gives ``Price(None, False, None)``: a price is never invented. A model whose price entry
is explicitly empty (free / subscription models) is priced at $0.

Speed: `genai_prices.calc_price` costs ~170 us. The Pricer caches the resolved model per
(provider, model) and, per price period (the `ModelPrice` object genai-prices resolves for ``at``),
the exact affine price function ``const + a*prompt + b*cached + c*completion`` as integers over a
common denominator, derived from genai-prices' own calculation and checked against it. A plain
call is then a couple of dict look-ups and integer arithmetic, and ``dollars`` is the correctly
rounded float of the exact decimal total. Periods whose prices are tiered (the rate depends on the
prompt size) go through genai-prices' own calculation on every call (the lookup is still cached).

Only the bundled data is used: the Pricer keeps its own snapshot of ``genai_prices.data``, so an
``UpdatePrices`` background fetch started elsewhere in the process never affects it, and it never
fetches anything itself.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import math
import numbers
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Literal

import genai_prices
from genai_prices import Usage
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices

__all__ = ("Price", "Pricer", "PricingMode")

logger = logging.getLogger(__name__)

PricingMode = Literal["fast", "calc_price", "unpriced"]

_MTOK = 1_000_000
# Most (provider, model) look-up results kept; beyond this, new unknown names are not cached.
_MAX_CACHED_LOOKUPS = 10_000


@dataclass(frozen=True, slots=True)
class Price:
    dollars: float | None
    """Cost in USD (full float precision of the exact decimal price), None when not priced."""
    priced: bool
    price_version: str | None
    """Which price data priced it (see `Pricer.data_version`), None when not priced."""


UNPRICED = Price(None, False, None)


class _Period:
    """How to price calls falling in one price period (one resolved `ModelPrice`)."""

    __slots__ = ("model_price", "mode", "a", "b", "c", "k", "den")

    def __init__(
        self,
        model_price: ModelPrice,
        mode: PricingMode,
        coefficients: tuple[int, int, int, int, int] = (0, 0, 0, 0, 1),
    ) -> None:
        self.model_price = model_price
        self.mode: PricingMode = mode
        # dollars = (a*prompt_tokens + b*cached_tokens + c*completion_tokens + k) / den, exactly.
        self.a, self.b, self.c, self.k, self.den = coefficients


class _Model:
    """A resolved (provider, model) with its per-period pricing cache."""

    __slots__ = ("provider", "info", "static_price", "periods")

    def __init__(self, provider: Provider, info: ModelInfo) -> None:
        self.provider = provider
        self.info = info
        # Prices that never change with time: no need to resolve a period per call.
        self.static_price = info.prices if isinstance(info.prices, ModelPrice) else None
        # id(ModelPrice) -> _Period; the _Period keeps the ModelPrice alive, and it is compared by
        # identity on read, so an id can never be confused with another object's.
        self.periods: dict[int, _Period] = {}


def _data_version() -> str:
    """``genai-prices <version> data:<sha256 prefix of the bundled price data>``.

    genai-prices 0.2.x exposes no snapshot date for its bundled data, so the content hash of
    ``genai_prices/data.py`` identifies it (it changes whenever the prices do).
    """
    try:
        data = importlib.resources.files("genai_prices").joinpath("data.py").read_bytes()
    except OSError:  # pragma: no cover - zipped / stripped installs
        return f"genai-prices {genai_prices.__version__}"
    return f"genai-prices {genai_prices.__version__} data:{hashlib.sha256(data).hexdigest()[:12]}"


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    # genai-prices' input_tokens INCLUDES cache_read_tokens, exactly like OpenAI's prompt_tokens.
    return Usage(
        input_tokens=prompt_tokens,
        output_tokens=completion_tokens,
        cache_read_tokens=cached_tokens,
    )


def _prices_tokens(model_price: ModelPrice) -> bool:
    """True if the price entry can price token counts (or is explicitly empty, i.e. free)."""
    keys = [key for key, value in vars(model_price).items() if value is not None]
    return not keys or any(key.endswith("_mtok") for key in keys)


class Pricer:
    """Prices model calls from genai-prices' bundled data, with a per-(provider, model, period) cache.

    See the module docstring for token conventions, time handling and lookup rules. Thread-safe:
    cache entries are built and added under a lock, never changed once added; reads take no lock.
    """

    def __init__(self) -> None:
        from genai_prices.data import providers

        # Our own snapshot of the bundled data: immune to UpdatePrices swapping the global one,
        # and its internal look-up caches are only touched under self._lock.
        self._snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        self._version = _data_version()
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _Model | None] = {}

    @property
    def data_version(self) -> str:
        """Identifier of the price data, recorded as `Price.price_version`."""
        return self._version

    def price(
        self,
        provider: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        at: datetime | None = None,
    ) -> Price:
        """Price one call; `prompt_tokens` includes `cached_tokens` (see module docstring)."""
        if type(prompt_tokens) is not int:
            prompt_tokens = _count("prompt_tokens", prompt_tokens)
        if type(completion_tokens) is not int:
            completion_tokens = _count("completion_tokens", completion_tokens)
        if type(cached_tokens) is not int:
            cached_tokens = _count("cached_tokens", cached_tokens)
        if prompt_tokens < 0 or completion_tokens < 0 or cached_tokens < 0:
            raise ValueError(
                "token counts must be >= 0, got "
                f"prompt_tokens={prompt_tokens}, completion_tokens={completion_tokens}, "
                f"cached_tokens={cached_tokens}"
            )
        if cached_tokens > prompt_tokens:
            raise ValueError(
                f"cached_tokens ({cached_tokens}) cannot exceed prompt_tokens ({prompt_tokens}): "
                "prompt_tokens must include the cached tokens"
            )

        entry = self._models.get((provider, model), False)
        if entry is False:
            entry = self._resolve(provider, model)
        if entry is None:
            return UNPRICED

        if at is None:
            at = datetime.now(UTC)
        elif at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        model_price = entry.static_price
        if model_price is None:
            model_price = entry.info.get_prices(at)
        period = entry.periods.get(id(model_price))
        if period is None or period.model_price is not model_price:
            period = self._period(entry, model_price, at)

        if period.mode == "fast":
            # int / int is correctly rounded: the float nearest to the exact decimal price.
            dollars = (
                period.a * prompt_tokens
                + period.b * cached_tokens
                + period.c * completion_tokens
                + period.k
            ) / period.den
            return Price(dollars, True, self._version)
        if period.mode == "unpriced":
            return UNPRICED
        try:
            calc = entry.info.calc_price(
                _usage(prompt_tokens, completion_tokens, cached_tokens),
                entry.provider,
                genai_request_timestamp=at,
            )
        except ValueError:
            # Counts were validated above, so this is price data genai-prices cannot apply.
            logger.warning(
                "genai-prices cannot price %s/%s", entry.provider.id, entry.info.id, exc_info=True
            )
            return UNPRICED
        return Price(float(calc.total_price), True, self._version)

    def pricing_mode(self, provider: str, model: str, at: datetime | None = None) -> PricingMode:
        """How a call to this model at `at` is priced: cached linear rates, calc_price, or not."""
        entry = self._models.get((provider, model), False)
        if entry is False:
            entry = self._resolve(provider, model)
        if entry is None:
            return "unpriced"
        at = datetime.now(UTC) if at is None else at
        at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        model_price = entry.static_price
        if model_price is None:
            model_price = entry.info.get_prices(at)
        period = entry.periods.get(id(model_price))
        if period is None or period.model_price is not model_price:
            period = self._period(entry, model_price, at)
        return period.mode

    # -- cache building (rare, under the lock) ---------------------------------------------------

    def _resolve(self, provider: str, model: str) -> _Model | None:
        key = (provider, model)
        with self._lock:
            if key in self._models:
                return self._models[key]
            entry: _Model | None = None
            if isinstance(model, str) and model.strip():
                provider_id = provider.strip() if isinstance(provider, str) else None
                try:
                    found_provider, info = self._snapshot.find_provider_model(
                        model.strip(), None, provider_id or None, None
                    )
                except LookupError:
                    pass
                else:
                    entry = _Model(found_provider, info)
            if entry is not None or len(self._models) < _MAX_CACHED_LOOKUPS:
                self._models[key] = entry
            return entry

    def _period(self, entry: _Model, model_price: ModelPrice, at: datetime) -> _Period:
        with self._lock:
            period = entry.periods.get(id(model_price))
            if period is None or period.model_price is not model_price:
                period = self._build_period(entry, model_price, at)
                entry.periods[id(model_price)] = period
            return period

    def _build_period(self, entry: _Model, model_price: ModelPrice, at: datetime) -> _Period:
        if not _prices_tokens(model_price):
            return _Period(model_price, "unpriced")
        if any(isinstance(value, TieredPrices) for value in vars(model_price).values()):
            return _Period(model_price, "calc_price")
        try:
            coefficients = self._linear_coefficients(entry, model_price, at)
        except (ValueError, ArithmeticError):
            logger.warning(
                "no fast path for %s/%s", entry.provider.id, entry.info.id, exc_info=True
            )
            coefficients = None
        if coefficients is None:
            return _Period(model_price, "calc_price")
        return _Period(model_price, "fast", coefficients)

    @staticmethod
    def _linear_coefficients(
        entry: _Model, model_price: ModelPrice, at: datetime
    ) -> tuple[int, int, int, int, int] | None:
        """Exact (a, b, c, k, den) so that genai-prices' total is (a*p + b*q + c*o + k) / den.

        Without tiers, genai-prices' price is a sum of rate * count over priced units, where the
        counts are the usage minus more specific priced usage (input minus cache reads), plus
        per-request prices: affine in (prompt, cached, completion). The coefficients are read off
        genai-prices' own calculation at a few points, then checked at another one.
        """

        def total(prompt: int, cached: int, completion: int) -> Fraction:
            calc = entry.info.calc_price(
                _usage(prompt, completion, cached),
                entry.provider,
                genai_request_timestamp=at,
            )
            if calc.model_price is not model_price:
                raise ValueError("genai-prices resolved a different price period")
            value = calc.total_price
            if not isinstance(value, Decimal) or not value.is_finite():
                raise ValueError(f"unexpected total_price {value!r}")
            return Fraction(value)

        const = total(0, 0, 0)
        per_prompt = (total(_MTOK, 0, 0) - const) / _MTOK
        per_cached = (total(_MTOK, _MTOK, 0) - const) / _MTOK - per_prompt
        per_completion = (total(0, 0, _MTOK) - const) / _MTOK
        fractions = (per_prompt, per_cached, per_completion, const)
        den = math.lcm(*(f.denominator for f in fractions))
        a, b, c, k = (int(f * den) for f in fractions)

        probe = (1_234_567, 345_679, 891_011)
        expected = total(*probe)
        if Fraction(a * probe[0] + b * probe[1] + c * probe[2] + k, den) != expected:
            return None
        return a, b, c, k, den
