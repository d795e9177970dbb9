"""The monitor: a faust-streaming app that joins requests, prompts, responses and dead letters by request id.

It writes one trace row per request id to PostgreSQL and serves Prometheus metrics (DESIGN.md §3).

Modules:
    join: pure trace assembly (decoded event → :class:`~workers.monitor.join.TraceUpdate`), no I/O.
    recorder: the PostgreSQL sink (:class:`~workers.adapters.traces.TraceRecorder`).
    metrics: the Prometheus metrics bundle (:func:`~workers.monitor.metrics.build_metrics`).
    app: faust wiring (:func:`~workers.monitor.app.create_app`, :func:`~workers.monitor.app.run`).
"""
