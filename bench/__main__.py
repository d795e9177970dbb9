"""``python -m bench [B1 ... B7] [--quick]``: run the benchmarks and print the table of ratios.

Each benchmark starts what it needs on the bench stack (``.devstack/bench``, ports 29092/25432/28080,
simulated LLM engine), measures both of its sides alternately after a warm-up, and stops it all afterwards.
``--quick`` makes every run short (development and CI smoke); the default is the full runs recorded in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from bench.core import Row, format_table
from bench.env import bench_env

#: Benchmark id → module (each has ``SERVICES`` and ``run(env, quick=, runs=, options=) -> list[Row]``).
BENCHMARKS: dict[str, str] = {
    "B1": "bench.b1_pipeline",
    "B2": "bench.b2_hops",
    "B3": "bench.b3_retriever",
    "B4": "bench.b4_vector",
    "B5": "bench.b5_monitor",
    "B6": "bench.b6_composition",
    "B7": "bench.b7_saturation",
    "B8": "bench.b8_gateway",
    "B9": "bench.b9_shapes",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all): " + " ".join(BENCHMARKS))
    p.add_argument("--quick", action="store_true", help="short runs (development, CI smoke)")
    p.add_argument("--runs", type=int, default=5, help="measured runs per side after the warm-up (default 5)")
    p.add_argument("--vectors", type=int, default=0, help="B4: vectors in the table (default 100000; quick 20000)")
    p.add_argument("--keep-stack", action="store_true", help="leave the bench stack running afterwards")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks; print the table; return 0, or 1 when a benchmark failed to run."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    names = [n.upper() for n in args.names] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmarks {unknown}; known: {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    if args.runs < 1:
        print("--runs must be >= 1", file=sys.stderr)
        return 2
    modules: dict[str, Any] = {}
    missing: list[str] = []
    for n in names:
        try:
            modules[n] = importlib.import_module(BENCHMARKS[n])
        except ModuleNotFoundError as exc:
            if exc.name != BENCHMARKS[n]:
                raise
            missing.append(n)  # not written yet (see BENCHMARKS.md)
    services = tuple(s for s in ("kafka", "postgres", "llm") if any(s in m.SERVICES for m in modules.values()))
    options: dict[str, Any] = {"vectors": args.vectors}
    rows: list[Row] = []
    failed: list[str] = []
    t_all = time.monotonic()
    with bench_env(services, keep_stack=args.keep_stack) as env:
        for name, module in modules.items():
            t0 = time.monotonic()
            print(f"running {name} ({'quick' if args.quick else 'full'}) ...", file=sys.stderr, flush=True)
            try:
                rows.extend(module.run(env, quick=args.quick, runs=args.runs, options=options))
            except Exception:  # noqa: BLE001 - report and go on with the next benchmark
                traceback.print_exc()
                failed.append(name)
            print(f"{name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    mode = "quick" if args.quick else "full"
    print(f"\nragstream benchmarks ({mode}, medians of {args.runs} alternating runs after a warm-up)\n")
    print(format_table(rows))
    print(f"\ntotal {time.monotonic() - t_all:.0f} s" + (f"; FAILED to run: {', '.join(failed)}" if failed else ""))
    if missing:
        print(f"not implemented yet: {', '.join(missing)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
