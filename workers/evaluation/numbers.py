"""Numbers for people: how the evaluation report, the gates and the CLI print values and axis ticks.

No scientific notation (``24,650`` rather than ``2.465e+04``), thousands separators, a fixed number of decimals
chosen by magnitude, changes as absolute and percent (``+0.050 (+5.6%)``), and axis ticks on round steps
(1, 2 or 5 times a power of ten).
"""

from __future__ import annotations

import math

#: What an unknown value prints as.
UNKNOWN = "–"


def human(value: float | int | None, digits: int | None = None) -> str:
    """A number as a person reads it.

    Args:
        value: the number (``None``: unknown, printed as ``–``).
        digits: decimals to show; ``None`` chooses by magnitude: whole numbers without decimals, values of
            1,000 and more without decimals, of 100 and more with one, of 1 and more with two, smaller ones
            with three.

    Returns:
        ``24,650``, ``246.5``, ``9.61``, ``0.600``, ``20``.
    """
    if value is None:
        return UNKNOWN
    v = float(value)
    if math.isnan(v):
        return UNKNOWN
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if digits is None:
        a = abs(v)
        if v.is_integer() and a < 1e15:
            digits = 0
        elif a >= 1000:
            digits = 0
        elif a >= 100:
            digits = 1
        elif a >= 1:
            digits = 2
        else:
            digits = 3
    text = f"{v:,.{digits}f}"
    return "0" if text.strip("-0.,") == "" and digits == 0 else text


def signed(value: float, digits: int | None = None) -> str:
    """:func:`human` with an explicit sign (``+0.050``, ``-1,200``)."""
    text = human(abs(value), digits)
    if text in ("0", UNKNOWN) or text.strip("0.,") == "":
        return ("±" if text != UNKNOWN else "") + text
    return ("+" if value > 0 else "-") + text


def percent_change(base: float | None, new: float | None) -> float | None:
    """``(new - base) / |base| * 100``, ``None`` when either is unknown or the base is 0."""
    if base is None or new is None or base == 0:
        return None
    return (new - base) / abs(base) * 100.0


def delta(base: float | None, new: float | None, digits: int | None = None) -> str:
    """The change from ``base`` to ``new``, absolute and in percent of the base: ``+0.050 (+5.6%)``.

    Returns:
        ``""`` when either value is unknown; the absolute change alone when the base is 0.
    """
    if base is None or new is None:
        return ""
    text = signed(new - base, digits)
    pct = percent_change(base, new)
    return text if pct is None or new == base else f"{text} ({pct:+.1f}%)"


def nice_step(span: float, target_ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 × 10^k) that cuts ``span`` into about ``target_ticks`` intervals.

    Raises:
        ValueError: ``span`` is not positive or ``target_ticks`` < 1.
    """
    if not span > 0 or target_ticks < 1:
        raise ValueError(f"nice_step needs a positive span and tick count, got {span}, {target_ticks}")
    raw = span / target_ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag * 1.0000001:
            return m * mag
    return 10 * mag  # pragma: no cover - the loop always returns


def nice_ticks(hi: float, target_ticks: int = 5) -> list[float]:
    """Ticks from 0 to a round top at or above ``hi`` on a round step: ``nice_ticks(23_400) == [0, 5000, ...,
    25000]``; ``[0, 1]`` when ``hi`` is not positive."""
    if not hi > 0:
        return [0.0, 1.0]
    step = nice_step(hi, target_ticks)
    n = math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(n + 1)]
