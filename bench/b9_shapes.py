"""B9 monolith vs microservices, measured: the same load against three shapes on the same machine and engines.

Shapes (each started on topics of its own, alone on the machine while it is measured):

* **monolith, engine in-process**: ``ragstream run monolith`` with ``RAG_LLM__ENGINE`` (the engine runs inside the
  monolith's process, as a monolith serving its own model does);
* **monolith, HTTP server**: ``ragstream run monolith`` calling the LLM server over HTTP;
* **split**: ``ragstream run retriever``, ``generator`` and ``monitor``, Kafka between them, the LLM server over HTTP.

Engines: the **simulated** one (TTFT 100 ms, 20 ms per token, 16 generating at once: a GPU server's shape with
no GPU) and, in full runs, the **tiny** real causal LM of the devstack (random weights, transformers on CPU).

Per shape and engine: requests/s at saturation (a backlog of ``n`` requests produced at once, timed to the last
answer), p50/p99 latency of a closed loop of 4 callers (the same load for every shape), the LLM busy fraction
(seconds the engine had at least one generation running ÷ wall seconds of the saturation run, from the
engine's own ``engine_busy_seconds_total``: the server's ``/metrics``, or the monolith's), and CPU-seconds per
request of each process (psutil user + system, during the saturation run).

The run writes ``bench/results/b9.json`` (everything) and ``bench/results/b9-costs.json`` (the per-request costs
``ragstream plan --costs`` reads, from the simulated engine's runs).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.core import CpuMeter, Row, Run, Side, percentile
from bench.env import BenchEnv, questions
from bench.flows import burst, pipeline_loop
from devstack.stack import TINY_LM_DIR
from devstack.tgi.launch import tgi_server
from workers.client import RagClient
from workers.contracts.messages import Response

SERVICES = ("kafka", "postgres", "llm")
NEW_TOKENS = 16
RESULTS = Path(__file__).resolve().parent / "results"
SIM = {"ttft_ms": 100.0, "per_token_ms": 20.0, "capacity": 16}
SIM_ARGS = "--ttft-ms 100 --per-token-ms 20 --capacity 16"
LIMIT_ARGS = "--max-concurrent-requests 256 --max-input-tokens 3072 --max-total-tokens 4096"
TINY_ARGS = f"--tiny-model-dir {TINY_LM_DIR} --generation-threads 4"
SHAPES = ("monolith, engine in-process", "monolith, HTTP server", "split")
CALLERS = 4


@dataclass
class ShapeResult:
    """What one shape measured with one engine (medians over the runs)."""

    engine: str
    shape: str
    req_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    busy_fraction: float = float("nan")
    engine_s_per_request: float = float("nan")
    cpu_s_per_request: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    hop_ms: tuple[float, float] = (float("nan"), float("nan"))
    tokens: tuple[float, float] = (float("nan"), float("nan"))
    runs: list[Run] = field(default_factory=list)


def engine_counters(metrics_url: str) -> tuple[float, float]:
    """``(engine_busy_seconds_total, engine_generations_total)`` from a Prometheus text endpoint."""
    text = httpx.get(metrics_url, timeout=10).text
    values = {"engine_busy_seconds_total": 0.0, "engine_generations_total": 0.0}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name in values:
            values[name] = float(rest.split()[0])
    return values["engine_busy_seconds_total"], values["engine_generations_total"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llm_server(env: BenchEnv, engine: str) -> Iterator[str]:
    """The HTTP LLM server of ``engine``: the bench stack's (simulated) or a transformers server of the tiny model."""
    if engine == "simulated":
        env.llm_config(**SIM, max_concurrent_requests=256)
        yield env.stack.llm_url
        return
    args = ["--engine", "transformers", *TINY_ARGS.split(), *LIMIT_ARGS.split()]
    with tgi_server(args, start_timeout_s=300) as (url, _proc):
        yield url


def _shape_env(shape: str, engine: str, server_url: str, metrics_port: int) -> dict[str, str]:
    if shape == SHAPES[0]:
        args = SIM_ARGS if engine == "simulated" else TINY_ARGS
        return {
            "RAG_LLM__ENGINE": "simulated" if engine == "simulated" else "transformers",
            "RAG_LLM__ENGINE_ARGS": f"{args} {LIMIT_ARGS}",
            "RAG_LLM__URL": "http://127.0.0.1:9",  # nothing there: every LLM call stays in the process
            "RAG_WORKER__METRICS_PORT": str(metrics_port),
        }
    return {"RAG_LLM__URL": server_url}


def measure_shape(env: BenchEnv, engine: str, shape: str, server_url: str, n: int, runs: int) -> ShapeResult:
    """Start one shape, measure saturation (``runs`` times) and the closed-loop latency, stop it."""
    qs = questions()
    prefix = env.make_topics()
    port = free_port()
    replicas = {"monolith": 1} if shape != "split" else {"retriever": 1, "generator": 1, "monitor": 1}
    metrics_url = f"http://127.0.0.1:{port}/metrics" if shape == SHAPES[0] else f"{server_url}/metrics"
    res = ShapeResult(engine, shape)
    with env.workers(prefix, replicas, **_shape_env(shape, engine, server_url, port)) as pipe:
        services = ["kafka", "postgres"] + (["llm"] if shape != SHAPES[0] and engine == "simulated" else [])
        pids: dict[str, list[int]] = {}
        for wp in pipe.procs:
            pids.setdefault(wp.worker, []).append(wp.proc.pid)
        for name in services:
            pids[name if name != "llm" else "llm server"] = env.service_pids(name)
        meters = {name: CpuMeter(ps, include_self=False) for name, ps in pids.items()}
        with RagClient(env.settings_for(prefix)) as client:
            burst(client, qs, min(n, 40), NEW_TOKENS)  # warm-up: models loaded, connections open
            per_run_cpu: list[dict[str, float]] = []
            busy: list[tuple[float, float]] = []
            responses: list[Response] = []
            for _ in range(runs):
                c0 = {k: m.total() for k, m in meters.items()}
                b0, g0 = engine_counters(metrics_url)
                r = burst(client, qs, n, NEW_TOKENS)
                b1, g1 = engine_counters(metrics_url)
                per_run_cpu.append({k: (m.total() - c0[k]) / max(1, r.count) for k, m in meters.items()})
                busy.append(((b1 - b0) / r.wall_s, (b1 - b0) / max(1.0, g1 - g0)))
                res.runs.append(Run(r.count / r.wall_s, r.count, sum(per_run_cpu[-1].values()) * r.count))
            lat = pipeline_loop(client, qs, CALLERS, CALLERS * (10 if n <= 80 else 40), NEW_TOKENS)
            responses = lat.responses
    res.req_per_s = statistics.median(r.value for r in res.runs)
    res.busy_fraction = statistics.median(b for b, _ in busy)
    res.engine_s_per_request = statistics.median(e for _, e in busy)
    res.cpu_s_per_request = {k: statistics.median(run[k] for run in per_run_cpu) for k in per_run_cpu[0]}
    lat_ms = [x * 1000.0 for x in lat.latencies_s]
    res.p50_ms, res.p99_ms = percentile(lat_ms, 50), percentile(lat_ms, 99)
    keys = ("embed_ms", "search_ms", "prompt_ms", "llm_ttft_ms", "llm_total_ms")
    res.timings_ms = {k: statistics.median(r.timings_ms.get(k, 0.0) for r in responses) for k in keys}
    hops = 3 if shape == "split" else 2
    overhead = [
        (lat_s * 1000.0 - sum(r.timings_ms.get(k, 0.0) for k in keys if k != "llm_ttft_ms")) / hops
        for lat_s, r in zip(lat.latencies_s, responses, strict=True)
    ]
    res.hop_ms = (percentile(overhead, 50), percentile(overhead, 99))
    res.tokens = (
        statistics.median(r.usage.prompt_tokens for r in responses),
        statistics.median(r.usage.completion_tokens for r in responses),
    )
    return res


def side_by_side(results: list[ShapeResult]) -> str:
    """The three shapes of each engine side by side (Markdown)."""
    out: list[str] = []
    for engine in dict.fromkeys(r.engine for r in results):
        rs = [r for r in results if r.engine == engine]
        procs = list(dict.fromkeys(k for r in rs for k in r.cpu_s_per_request))
        head = ["engine: " + engine, *(r.shape for r in rs)]
        rows = [
            ["req/s at saturation", *(f"{r.req_per_s:.1f}" for r in rs)],
            [f"latency p50 / p99 ms ({CALLERS} callers)", *(f"{r.p50_ms:.0f} / {r.p99_ms:.0f}" for r in rs)],
            ["LLM busy fraction (engine)", *(f"{r.busy_fraction:.2f}" for r in rs)],
            ["engine s per request", *(f"{r.engine_s_per_request:.3f}" for r in rs)],
            ["added per Kafka hop p50 ms", *(f"{r.hop_ms[0]:.1f}" for r in rs)],
        ]
        for p in procs:
            vals = [r.cpu_s_per_request.get(p) for r in rs]
            rows.append([f"CPU-s/req {p}", *("-" if v is None else f"{v:.4f}" for v in vals)])
        rows.append(["CPU-s/req all processes", *(f"{sum(r.cpu_s_per_request.values()):.4f}" for r in rs)])
        widths = [max(len(line[i]) for line in [head, *rows]) for i in range(len(head))]
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)) + " |")
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out.extend("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows)
        out.append("")
    return "\n".join(out)


def costs_for_plan(results: list[ShapeResult], mode: str) -> dict[str, Any]:
    """The per-request costs ``ragstream plan --costs`` reads, from the simulated engine's split and HTTP monolith."""
    by = {(r.engine, r.shape): r for r in results}
    split, mono = by[("simulated", "split")], by[("simulated", SHAPES[1])]
    return {
        "source": f"B9 {mode}, {datetime.now(UTC).date()}, 2-core polyglot box, simulated engine "
        f"(TTFT {SIM['ttft_ms']:.0f} ms, {SIM['per_token_ms']:.0f} ms/token, capacity {SIM['capacity']}), "
        f"{NEW_TOKENS} new tokens",
        "retrieval_cpu_s": split.cpu_s_per_request.get("retriever", float("nan")),
        "generator_cpu_s": split.cpu_s_per_request.get("generator", float("nan")),
        "monolith_cpu_s": mono.cpu_s_per_request.get("monolith", float("nan")),
        "engine_s": split.engine_s_per_request,
        "generation_latency_s": split.timings_ms["llm_total_ms"] / 1000.0,
        "generation_latency_p99_s": split.p99_ms / 1000.0,
        "retrieval_latency_s": sum(split.timings_ms[k] for k in ("embed_ms", "search_ms", "prompt_ms")) / 1000.0,
        "hop_latency_s": split.hop_ms[0] / 1000.0,
        "hop_latency_p99_s": split.hop_ms[1] / 1000.0,
        "prompt_tokens": split.tokens[0],
        "completion_tokens": split.tokens[1],
    }


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B9; print the shapes side by side; write ``bench/results/b9*.json``; one row per engine and pair."""
    env.ensure_corpus()
    engines = ["simulated"] if quick else ["simulated", "tiny"]
    n = 60 if quick else 240
    runs = 1 if quick else min(runs, 3)
    results: list[ShapeResult] = []
    for engine in engines:
        with ExitStack() as stack:
            url = stack.enter_context(llm_server(env, engine))
            for shape in SHAPES:
                t0 = time.monotonic()
                results.append(measure_shape(env, engine, shape, url, n if engine == "simulated" else n // 2, runs))
                print(f"B9 {engine} / {shape}: {results[-1].req_per_s:.1f} req/s ({time.monotonic() - t0:.0f} s)")
    print("\nB9: the three shapes side by side (medians; CPU during the saturation runs)\n")
    print(side_by_side(results))
    RESULTS.mkdir(exist_ok=True)
    mode = "quick" if quick else "full"
    (RESULTS / "b9.json").write_text(
        json.dumps([{k: v for k, v in asdict(r).items() if k != "runs"} for r in results], indent=2) + "\n"
    )
    (RESULTS / "b9-costs.json").write_text(json.dumps(costs_for_plan(results, mode), indent=2) + "\n")
    rows: list[Row] = []
    for engine in engines:
        by = {r.shape: r for r in results if r.engine == engine}
        http = Side(SHAPES[1], "req/s", by[SHAPES[1]].runs)
        split, inproc = by["split"], by[SHAPES[0]]
        busy = f"busy fraction split {split.busy_fraction:.2f}, monolith {by[SHAPES[1]].busy_fraction:.2f}"
        rows.append(Row(f"B9 {engine}", "req/s split / monolith (HTTP)", Side("split", "req/s", split.runs), http,
                        note=busy))  # fmt: skip
        rows.append(Row(f"B9 {engine}", "req/s monolith engine in-process / HTTP",
                        Side(SHAPES[0], "req/s", inproc.runs), http,
                        note=f"busy fraction in-process {inproc.busy_fraction:.2f}"))  # fmt: skip
    return rows
