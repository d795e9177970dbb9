"""The LLM concurrency limiters: the adaptive rule on synthetic signals, a discrete-event server, the gate."""

from __future__ import annotations

import asyncio
import heapq

import pytest

from workers.adapters.concurrency import AdaptiveLimiter, FixedLimiter, Ticket


class FakeClock:
    """A settable monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _ok(clock: FakeClock, ttft_s: float) -> Ticket:
    t = Ticket(clock.now)
    t.ok(ttft_s)
    return t


def test_slow_start_grows_while_no_queue_and_demand_is_high() -> None:
    clock = FakeClock()
    lim = AdaptiveLimiter(initial=4, max_limit=64, clock=clock)
    for _ in range(20):
        lim.observe(_ok(clock, 0.05), demand=1000)
    assert lim.limit == 24  # +1 per sample in slow start


def test_no_growth_when_callers_do_not_use_the_limit() -> None:
    clock = FakeClock()
    lim = AdaptiveLimiter(initial=8, max_limit=64, clock=clock)
    for _ in range(50):
        lim.observe(_ok(clock, 0.05), demand=2)
    assert lim.limit == 8


def test_latency_growth_shrinks_the_limit_and_never_below_min() -> None:
    clock = FakeClock()
    lim = AdaptiveLimiter(initial=32, min_limit=3, max_limit=64, min_window=10_000, clock=clock)
    lim.observe(_ok(clock, 0.05), demand=1000)  # no-load TTFT 50 ms
    for _ in range(3000):
        lim.observe(_ok(clock, 0.5), demand=1000)  # 10x slower: deep queue
    assert lim.limit == 3
    assert lim.stats.queue > 0


def test_overload_decreases_multiplicatively_once_per_round() -> None:
    clock = FakeClock()
    lim = AdaptiveLimiter(initial=40, max_limit=64, clock=clock)
    sent = [Ticket(clock.now) for _ in range(10)]
    clock.now = 1.0
    for t in sent:  # a burst of 429s from one round: one decrease
        t.overloaded()
        lim.observe(t)
    assert lim.limit == 30
    assert lim.stats.overloads == 10 and lim.stats.decreases == 1
    clock.now = 2.0
    later = Ticket(clock.now)
    later.overloaded()
    lim.observe(later)  # sent after the decrease: a new event
    assert lim.limit == 22


def test_ignored_outcomes_change_nothing() -> None:
    lim = AdaptiveLimiter(initial=10)
    lim.observe(Ticket(0.0))
    assert lim.limit == 10 and lim.stats.samples == 0


@pytest.mark.parametrize("bad", [{"min_limit": 0}, {"min_limit": 9, "max_limit": 8}, {"backoff_ratio": 1.0}])
def test_invalid_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimiter(**bad)  # type: ignore[arg-type]  # parametrized kwargs


def simulate(
    limiter: AdaptiveLimiter | None,
    fixed: int,
    clock: FakeClock,
    *,
    capacity: int,
    max_concurrent: int,
    ttft_s: float = 0.05,
    gen_s: float = 0.2,
    rtt_s: float = 0.002,
    retry_s: float = 0.5,
    clients: int = 100,
    duration_s: float = 60.0,
) -> float:
    """Discrete-event model of a TGI-like server (``capacity`` batch slots, FIFO queue, 429 above
    ``max_concurrent``) behind a limiter, with ``clients`` closed-loop callers. Returns completions/s."""
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, client)
    seq = 0

    def push(at: float, kind: str, client: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, client))

    in_flight = 0  # held limiter slots
    waiting: list[int] = []  # clients waiting for a limiter slot (FIFO)
    server_gen = 0
    server_queue: list[tuple[int, float]] = []  # (client, arrival)
    tickets: dict[int, Ticket] = {}
    done = 0

    def limit() -> int:
        return limiter.limit if limiter is not None else fixed

    def finish(client: int, ticket: Ticket) -> None:
        nonlocal in_flight
        if limiter is not None:
            limiter.observe(ticket, demand=in_flight + len(waiting))
        in_flight -= 1
        while waiting and in_flight < limit():
            start_call(waiting.pop(0))

    def start_call(client: int) -> None:
        nonlocal in_flight
        in_flight += 1
        tickets[client] = Ticket(clock.now)
        push(clock.now + rtt_s / 2, "arrive", client)

    def want(client: int) -> None:
        if not waiting and in_flight < limit():
            start_call(client)
        else:
            waiting.append(client)

    for c in range(clients):
        push(0.0, "want", c)
    while events:
        at, _, kind, c = heapq.heappop(events)
        if at > duration_s:
            break
        clock.now = at
        if kind == "want":
            want(c)
        elif kind == "arrive":
            if server_gen + len(server_queue) >= max_concurrent:
                tickets[c].overloaded()
                finish(c, tickets[c])
                push(at + retry_s, "want", c)
            elif server_gen < capacity:
                server_gen += 1
                push(at + ttft_s + gen_s, "done", c)
                tickets[c].ok(ttft_s + rtt_s / 2)
            else:
                server_queue.append((c, at))
        elif kind == "done":
            server_gen -= 1
            if server_queue:
                nxt, arrived = server_queue.pop(0)
                server_gen += 1
                tickets[nxt].ok(at - arrived + ttft_s + rtt_s / 2)
                push(at + ttft_s + gen_s, "done", nxt)
            push(at + rtt_s / 2, "reply", c)
        elif kind == "reply":
            done += 1
            finish(c, tickets[c])
            push(at, "want", c)
    return done / duration_s


@pytest.mark.parametrize(("capacity", "max_concurrent"), [(12, 24), (4, 8), (48, 96), (100, 128)])
def test_adaptive_matches_the_best_fixed_setting_on_a_simulated_server(capacity: int, max_concurrent: int) -> None:
    best = max(
        simulate(None, fixed, FakeClock(), capacity=capacity, max_concurrent=max_concurrent)
        for fixed in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
    )
    clock = FakeClock()
    lim = AdaptiveLimiter(initial=16, max_limit=256, clock=clock)
    adaptive = simulate(lim, 0, clock, capacity=capacity, max_concurrent=max_concurrent)
    assert adaptive >= 0.95 * best, (adaptive, best, lim.limit, lim.stats)
    assert lim.limit >= capacity
    assert lim.limit < max_concurrent + 8


def test_fixed_limiter_gate_is_fifo_and_bounded() -> None:
    async def main() -> tuple[int, list[int]]:
        lim = FixedLimiter(3)
        peak = 0
        order: list[int] = []

        async def call(i: int) -> None:
            nonlocal peak
            async with lim.slot():
                order.append(i)
                peak = max(peak, lim.in_flight)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(call(i) for i in range(20)))
        assert lim.in_flight == 0
        return peak, order

    peak, order = asyncio.run(main())
    assert peak == 3
    assert order == list(range(20))


def test_adaptive_gate_releases_on_cancel_and_widens_when_the_limit_grows() -> None:
    async def main() -> None:
        lim = AdaptiveLimiter(initial=1, max_limit=8)
        entered = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with lim.slot() as t:
                entered.set()
                await release.wait()
                t.ok(0.01)

        h = asyncio.create_task(holder())
        await entered.wait()
        waiter = asyncio.create_task(lim.slot().__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        await h
        assert lim.in_flight == 0
        # a sample with full demand grows the limit (slow start): two slots now
        async with lim.slot() as a:
            a.ok(0.01)
        assert lim.limit >= 1

    asyncio.run(main())
