"""Acceptance of issues 5 and 15: live traffic replayed into a shadow run with another k and template, evaluated.

1. The 20 public questions are answered by the "live" pipeline (three worker processes on topics of the
   test's own prefix, requests without top_k so the retriever's setting decides k).
2. ``ragstream replay --run e<unique>`` copies the live requests into ``rag.eval.e<unique>.rag.requests`` and
   records them in the run's log.
3. ``ragstream shadow --run e<unique> --set retriever.top_k=3 --set retriever.template=concise`` (no bound
   given) answers them with the same worker code on the shadow topics and stops by itself once all 20 are
   answered (issue 15, finding 3). Shadowing the run again with other settings is refused at once, and so is a
   template that does not exist (finding 6).
4. ``ragstream evaluate`` writes the report. The replay ran before the shadow workers started, so the replayed
   requests waited in the topic during the workers' start-up: their end-to-end time is far above the live one,
   yet the latency gate on processing time (``latency.p50``) passes and the report marks end to end as not
   comparable (finding 2). The HTML opens in headless Chromium with its plots and the side-by-side answers
   table (screenshot taken; the table's script ran); a gate the shadow run cannot meet makes it exit 1. The
   live topics and the live groups' committed offsets are unchanged by the shadow run.

Needs Chromium (``scripts/install-chromium.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from devstack.pipeline import Pipeline
from tests.e2e.conftest import wait_trace_rows
from workers.client import RagClient
from workers.contracts.messages import Request
from workers.kafka.reader import committed_offsets
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _cli(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("HF_HUB_OFFLINE", None)  # the shadow generator calls the LLM server through huggingface_hub
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )


def _live_state(bootstrap: str, prefix: str) -> dict[str, Any]:
    """High watermarks of the live topics and the live groups' committed offsets."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:6]}"})
    marks: dict[str, int] = {}
    groups: dict[str, dict[tuple[str, int], int]] = {}
    try:
        for base in ("rag.requests", "rag.prompts", "rag.responses", "rag.dead-letter"):
            topic = prefix + base
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            marks[topic] = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()
    for role, base in (("retriever", "rag.requests"), ("generator", "rag.prompts")):
        gc = Consumer({"bootstrap.servers": bootstrap, "group.id": prefix + role, "enable.auto.commit": False})
        try:
            topic = prefix + base
            parts = gc.list_topics(topic, timeout=10).topics[topic].partitions
            groups[role] = committed_offsets(gc, [TopicPartition(topic, p) for p in parts])
        finally:
            gc.close()
    return {"watermarks": marks, "groups": groups}


def _png_check(path: Path) -> tuple[int, int, float]:
    """Width, height and the fraction of non-white pixel bytes of an 8-bit RGB(A) PNG (stdlib only)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 4
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    ink = 0
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG row filter
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        ink += sum(1 for i in range(0, stride, bpp) if min(line[i : i + 3]) < 200)
        prev = line
    return width, height, ink / (width * height)


@pytest.mark.slow
def test_replay_shadow_evaluate(
    stack: Any,
    pipeline_env: dict[str, str],
    pipeline_settings: Settings,
    questions: list[dict[str, Any]],
    questions_path: Path,
    drop_prefix: Callable[[str], None],
    unique: str,
    tmp_path: Path,
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/install-chromium.sh")
    assert len(questions) == 20
    live_prefix = pipeline_env["RAG_TOPICS__PREFIX"]
    run = f"e{unique}"
    shadow_prefix = f"rag.eval.{run}."
    shadow_table = f"rag_traces_eval_{run}"
    live_table = pipeline_env["RAG_MONITOR__TABLE"]
    settings = pipeline_settings
    drop_prefix(shadow_prefix)
    try:
        # 1. the live pipeline answers the 20 questions (k from the retriever's setting: 5)
        live = Pipeline(env=pipeline_env, log_dir=tmp_path / "live-logs")
        live.start()
        try:
            live.wait_ready(timeout_s=240)
            with RagClient(settings) as client:
                reqs = [Request(query=q["q"], generation={"max_new_tokens": 24}) for q in questions]  # type: ignore[arg-type]
                answers = client.ask_many(reqs, timeout_s=600)
            assert [a.status for a in answers.values()].count("ok") == 20
            assert wait_trace_rows(stack.database_url, live_table, 20) == 20
        finally:
            codes = live.stop(timeout_s=40)
        assert all(c == 0 for c in codes.values()), codes
        before = _live_state(stack.bootstrap_servers, live_prefix)

        # 2. replay the live requests into the shadow topics
        out = _cli(["replay", "--run", run, "--no-progress"], pipeline_env, 180)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "produced=20 request_ids=20" in out.stdout, out.stdout

        # 3. the shadow run: k=3, concise template, its own groups and trace table; no bound: it knows the 20
        shadow_args = ["shadow", "--run", run, "--set", "retriever.top_k=3", "--set", "retriever.template=concise"]
        t0 = time.monotonic()
        out = _cli(
            [*shadow_args, "--timeout", "600", "--no-progress", "--log-dir", str(tmp_path / "shadow-logs")],
            pipeline_env,
            900,
        )
        print(out.stdout[-1500:])
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "stopped=all_answered answered=20 of 20" in out.stdout, out.stdout
        print(f"shadow answered the 20 replayed requests and stopped by itself in {time.monotonic() - t0:.1f} s")
        after = _live_state(stack.bootstrap_servers, live_prefix)
        assert after == before, "the shadow run touched live topics or live groups"
        # the same run with other settings is refused before any worker starts; so is a template that does not exist
        for args, why in (
            (["shadow", "--run", run, "--set", "retriever.template=concise"], "was answered with"),
            (["shadow", "--run", f"{run}x", "--set", "retriever.template=consise"], "unknown prompt template"),
        ):
            t1 = time.monotonic()
            refused = _cli([*args, "--no-progress", "--log-dir", str(tmp_path / "refused")], pipeline_env, 120)
            assert refused.returncode == 2 and why in refused.stderr, refused.stdout + refused.stderr
            assert refused.stderr.strip().splitlines()[-1].startswith("error (config): "), refused.stderr
            assert time.monotonic() - t1 < 30 and not (tmp_path / "refused").exists()
            print(f"refused in {time.monotonic() - t1:.1f} s: {refused.stderr.strip().splitlines()[-1][:300]}")

        # 4. evaluate: baseline = the live topics, candidate = the shadow run; lenient gates pass
        report_dir = tmp_path / "report"
        out = _cli(
            [
                "evaluate",
                "--candidate",
                f"run:{run}",
                "--baseline",
                "live",
                "--labels",
                str(questions_path),
                "--out",
                str(report_dir),
                "--fail-on",
                "hit@5:-0.5",
                "--fail-on",
                "error_rate:max=0",
                "--fail-on",
                "compare.answer_similarity.mean:min=0",
                "--fail-on",
                "latency.p50:+50%",
            ],
            pipeline_env,
            600,
        )
        print(out.stdout)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        report = json.loads((report_dir / "report.json").read_text())
        b, c = report["baseline"], report["candidate"]
        assert report["requests_compared"] == 20 and report["passed"] is True
        assert b["counts"]["ok"] == 20 and c["counts"]["ok"] == 20
        for sec in (b, c):
            assert sec["retrieval"]["labelled"] == 20
            assert {"hit@1", "hit@5", "mrr"} <= set(sec["retrieval"])
            for p in ("p50", "p90", "p99"):
                assert sec["latency_ms"]["end_to_end_ms"][p] > 0
        assert b["provenance"][0]["provenance"]["top_k"] == 5
        assert c["provenance"][0]["provenance"]["top_k"] == 3
        assert c["provenance"][0]["provenance"]["template_id"] == "concise"
        assert c["replay_runs"] == [run]  # answered by the shadow workers, not re-emitted live answers
        assert all(len(r["candidate"]["sources"]) <= 3 for r in report["requests"])
        assert report["compare"]["both_ok"] == 20 and report["compare"]["answer_similarity"]["n"] == 20
        # replayed requests are timed from the replay, not from the original request an hour ago
        assert c["latency_ms"]["end_to_end_ms"]["p50"] < 600_000
        # finding 2: the replay came before the shadow workers started, so its requests waited in the topic
        # through the start-up: end to end is not comparable (and far above the live one), processing time is
        pb, pc = b["latency_ms"]["processing_ms"]["p50"], c["latency_ms"]["processing_ms"]["p50"]
        eb, ec = b["latency_ms"]["end_to_end_ms"]["p50"], c["latency_ms"]["end_to_end_ms"]["p50"]
        print(f"p50 ms: processing live {pb:.0f} shadow {pc:.0f}; end to end live {eb:.0f} shadow {ec:.0f}")
        assert report["latency_not_comparable"] == ["retriever_queue_ms", "generator_queue_ms", "end_to_end_ms"]
        assert ec > 1.5 * eb and c["replayed"] == 20
        assert next(g for g in report["gates"] if g["gate"] == "latency.p50:+50%")["passed"]
        # finding 5: the k=3 sources are among the k=5 ones, and the report says hit@5 is capped by k
        assert report["compare"]["chunk_overlap"]["mean"] > 0.9 and c["retrieval"]["sources_k"] == 3
        assert report["requests"][0]["changed"] or all(not r["changed"] for r in report["requests"])
        print(
            f"baseline hit@1={b['retrieval']['hit@1']:.2f} hit@5={b['retrieval']['hit@5']:.2f} "
            f"mrr={b['retrieval']['mrr']:.3f} e2e p50/p90/p99="
            + "/".join(f"{b['latency_ms']['end_to_end_ms'][p]:.0f}" for p in ("p50", "p90", "p99"))
            + " ms"
        )
        print(
            f"shadow   hit@1={c['retrieval']['hit@1']:.2f} hit@5={c['retrieval']['hit@5']:.2f} "
            f"mrr={c['retrieval']['mrr']:.3f} e2e p50/p90/p99="
            + "/".join(f"{c['latency_ms']['end_to_end_ms'][p]:.0f}" for p in ("p50", "p90", "p99"))
            + " ms"
        )
        print(
            f"answer similarity mean={report['compare']['answer_similarity']['mean']:.3f} "
            f"chunk overlap mean={report['compare']['chunk_overlap']['mean']:.3f}"
        )

        # the HTML renders offline in headless Chromium, plots included
        png = tmp_path / "report.png"
        shot = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--screenshot={png}",
                "--window-size=1280,2600",
                (report_dir / "report.html").resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
        width, height, ink = _png_check(png)
        print(f"screenshot {png} {width}x{height} {png.stat().st_size} bytes, ink {ink:.1%}")
        assert (width, height) == (1280, 2600)
        assert png.stat().st_size > 40_000
        assert ink > 0.03, "the screenshot is (nearly) blank"
        html_text = (report_dir / "report.html").read_text()
        assert html_text.count("<svg") >= 5
        # the side-by-side answers table, with its script run: sortable, filterable, its row count shown
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--dump-dom",
                (report_dir / "report.html").resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dom.returncode == 0, dom.stderr[-2000:]
        table = dom.stdout[dom.stdout.index('<table id="answers">') :]
        table = table[: table.index("</table>")]
        assert table.count("<tr") == 21, "a header and 20 requests"
        assert "20 of 20 requests shown" in dom.stdout  # written by the table's script
        assert "answers side by side" in dom.stdout.lower() and "hit@5 is hit@3" in dom.stdout

        # a forced regression (a bound the shadow run cannot meet) fails the evaluation; baseline from the
        # live monitor's trace table this time
        out = _cli(
            [
                "evaluate",
                "--candidate",
                f"run:{run}",
                "--baseline",
                f"table:{live_table}",
                "--labels",
                str(questions_path),
                "--out",
                str(tmp_path / "report-gate"),
                "--no-similarity",
                "--fail-on",
                "hit@5:min=1.01",
            ],
            pipeline_env,
            300,
        )
        assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
        gated = json.loads((tmp_path / "report-gate" / "report.json").read_text())
        assert gated["passed"] is False and gated["gates"][0]["passed"] is False
        assert gated["baseline"]["counts"]["ok"] == 20  # joined from the trace table
        assert gated["baseline"]["retrieval"]["hit@5"] == b["retrieval"]["hit@5"]
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {shadow_table}, {shadow_table}_errors, rag_answers_eval_{run}")
