"""BusyClock with a fake clock, its Prometheus counters, and the server's /metrics showing them."""

from __future__ import annotations

import threading

import httpx
import pytest
from prometheus_client import CollectorRegistry

from devstack.tgi.busy import BusyClock, register_busy_metrics
from devstack.tgi.server import ServerLimits, create_app
from devstack.tgi.simulated_engine import SimulatedConfig, SimulatedEngine


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_busy_time_counts_overlaps_once_and_skips_idle_gaps() -> None:
    t = FakeClock()
    busy = BusyClock(clock=t)
    assert busy.busy_seconds() == 0 and busy.in_flight == 0 and busy.generations == 0
    busy.begin()  # t=100: busy from here
    t.now = 101
    busy.begin()  # overlapping
    t.now = 102
    busy.end()
    t.now = 103
    busy.end()  # idle from here: 3 s busy
    assert busy.busy_seconds() == 3
    t.now = 110  # idle gap: no change
    assert busy.busy_seconds() == 3
    with busy.running():
        t.now = 111.5
        assert busy.in_flight == 1
        assert busy.busy_seconds() == 4.5  # the open period counts while it lasts
        t.now = 112
    assert busy.busy_seconds() == 5
    assert busy.in_flight == 0 and busy.generations == 3


def test_running_ends_on_error_and_unbalanced_end_is_refused() -> None:
    t = FakeClock()
    busy = BusyClock(clock=t)
    with pytest.raises(ValueError), busy.running():
        t.now += 2
        raise ValueError("engine failed")
    assert busy.in_flight == 0 and busy.busy_seconds() == 2
    with pytest.raises(RuntimeError):
        busy.end()


def test_threads_begin_and_end_consistently() -> None:
    busy = BusyClock()

    def work() -> None:
        for _ in range(2000):
            with busy.running():
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert busy.in_flight == 0
    assert busy.generations == 16000


def test_counters_are_read_at_scrape_time() -> None:
    t = FakeClock()
    busy = BusyClock(clock=t)
    registry = CollectorRegistry()
    register_busy_metrics(registry, busy)
    busy.begin()
    t.now += 1.25
    assert registry.get_sample_value("engine_busy_seconds_total") == 1.25
    assert registry.get_sample_value("engine_generations_total") == 1
    with pytest.raises(ValueError):  # one clock per registry
        register_busy_metrics(registry, BusyClock())


async def test_server_metrics_show_engine_busy_time() -> None:
    engine = SimulatedEngine(SimulatedConfig(ttft_ms=30, per_token_ms=5))
    app = create_app(engine, ServerLimits(max_input_tokens=32, max_total_tokens=64))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tgi") as c:
        body = {"inputs": "What is a generator?", "parameters": {"max_new_tokens": 4}}
        assert (await c.post("/generate", json=body)).status_code == 200
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
        assert (await c.post("/v1/chat/completions", json=chat)).status_code == 200
        text = (await c.get("/metrics")).text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(("engine_busy", "engine_generations"))
    )
    assert float(samples["engine_generations_total"]) == 2
    assert 2 * (0.03 + 0.005) <= float(samples["engine_busy_seconds_total"]) < 1.0
