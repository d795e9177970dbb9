"""What a shadow run starts: its names, the workers' environment and the checked ``--set`` overrides (no I/O).

``ragstream shadow --run NAME --set retriever.top_k=3 --set retriever.template=concise`` runs the retriever, the
generator and (unless ``--no-monitor``) a monitor as ``ragstream run <worker>`` subprocesses with:

* ``RAG_TOPICS__PREFIX=rag.eval.NAME.``: the topics ``ragstream replay --run NAME`` writes to;
* consumer groups named after the run: the workers' default, prefix + role (``rag.eval.NAME.retriever``,
  ``rag.eval.NAME.generator``); an inherited ``RAG_WORKER__GROUP_ID`` is removed so that no shadow worker can
  join a live group; the monitor's app id (its group) is ``rag.eval.NAME.monitor``;
* its own trace table, ``rag_traces_eval_<NAME>`` (``-`` and ``.`` become ``_``), no metrics or web port;
* its own generator answer store, ``rag_answers_eval_<NAME>``: the store is keyed by request id and a replay
  keeps the live request ids, so with the live store the shadow generator would re-emit the live answers;
* the ``--set SECTION.KEY=VALUE`` overrides as ``RAG_SECTION__KEY=VALUE``, validated here against the settings
  models (and a template name against the registered templates): another LLM server (``llm.url``), template
  (``retriever.template``), k (``retriever.top_k``), index table and chunking (``retriever.table``,
  ``embedding.chunk_tokens``), ...

Overrides of ``topics.*``, ``worker.group_id``, ``monitor.app_id`` and ``generator.answer_table`` are
refused: they would let a shadow worker read live topics, join a live group or reuse live answers.
:mod:`workers.evaluation.shadow` runs the plan.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from workers.contracts.errors import ConfigError
from workers.retriever.prompt import get_template
from workers.settings import Settings
from workers.supervisor import WORKERS

#: Settings a shadow run may not override (they decide which topics and groups it touches).
FORBIDDEN = ("topics.", "worker.group_id", "monitor.app_id", "generator.answer_table")
#: Inherited variables removed from the workers' environment (they could point at live groups).
REMOVED_ENV = ("RAG_WORKER__GROUP_ID", "RAG_MONITOR__APP_ID")
#: Checks of override values the settings models cannot make; each raises ConfigError naming what exists.
VALUE_CHECKS: dict[str, Callable[[str], object]] = {"retriever.template": get_template}

_SET_RE = re.compile(r"^(?P<section>[a-z_]+)\.(?P<key>[a-z_]+)=(?P<value>.*)$", re.DOTALL)


def trace_table_name(run: str) -> str:
    """The shadow run's trace table: ``rag_traces_eval_<run>`` with other characters than letters, digits
    and ``_`` replaced by ``_`` (at most 51 characters, the recorder's limit)."""
    return ("rag_traces_eval_" + re.sub(r"[^A-Za-z0-9_]", "_", run))[:51]


def answer_table_name(run: str) -> str:
    """The shadow run's generator answer store: ``rag_answers_eval_<run>`` (same character rule, at most 63)."""
    return ("rag_answers_eval_" + re.sub(r"[^A-Za-z0-9_]", "_", run))[:63]


def parse_overrides(items: Sequence[str], settings: Settings) -> dict[str, str]:
    """Turn ``SECTION.KEY=VALUE`` items into ``RAG_SECTION__KEY`` environment variables, validated.

    Each value is checked by building the section's settings model with it, and names the settings model
    cannot check (a prompt template) against what exists (:data:`VALUE_CHECKS`), so a typo or a wrong type
    fails here, before any worker starts, rather than in a worker.

    Args:
        items: the ``--set`` items.
        settings: the current settings (the section's other values).

    Returns:
        ``{"RAG_RETRIEVER__TOP_K": "3", ...}``.

    Raises:
        ConfigError: malformed item, unknown section or key, a forbidden key, or an invalid value.
    """
    env: dict[str, str] = {}
    updates: dict[str, dict[str, str]] = {}
    for item in items:
        m = _SET_RE.match(item.strip())
        if m is None:
            raise ConfigError(f"bad --set {item!r}: use SECTION.KEY=VALUE, e.g. retriever.top_k=3")
        section, key, value = m["section"], m["key"], m["value"]
        dotted = f"{section}.{key}"
        if any(dotted == f or (f.endswith(".") and dotted.startswith(f)) for f in FORBIDDEN):
            raise ConfigError(f"--set {dotted} is not allowed: the shadow run sets topics and groups itself")
        sec = getattr(settings, section, None)
        if not isinstance(sec, BaseModel):
            sections = sorted(k for k, v in Settings.model_fields.items() if isinstance(v.default, BaseModel))
            raise ConfigError(f"bad --set {item!r}: unknown section {section!r}; known: {sections}")
        if key not in type(sec).model_fields:
            raise ConfigError(
                f"bad --set {item!r}: {section} has no setting {key!r}; known: {sorted(type(sec).model_fields)}"
            )
        check = VALUE_CHECKS.get(dotted)
        if check is not None:
            try:
                check(value)
            except ConfigError as exc:
                raise ConfigError(f"bad --set {item!r}: {exc}") from None
        updates.setdefault(section, {})[key] = value
        env[f"RAG_{section.upper()}__{key.upper()}"] = value
    for section, vals in updates.items():
        sec = getattr(settings, section)
        data = sec.model_dump()
        data.update(vals)
        try:
            type(sec).model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(
                f"bad --set for {section}.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
            ) from None
    return env


@dataclass(frozen=True)
class ShadowPlan:
    """What a shadow run starts.

    Attributes:
        run: run name.
        prefix: shadow topic prefix (``rag.eval.<run>.``).
        env: variables set for every worker (prefix, monitor identity, overrides).
        trace_table: the shadow monitor's trace table (``None`` without a monitor).
        workers: worker processes to start.
        overrides: the ``--set`` overrides alone, as environment variables (recorded in the run log).
    """

    run: str
    prefix: str
    env: Mapping[str, str]
    trace_table: str | None
    workers: tuple[str, ...]
    overrides: Mapping[str, str] = field(default_factory=dict)


def plan_shadow(
    settings: Settings,
    run: str,
    overrides: Sequence[str] = (),
    *,
    prefix_template: str = "rag.eval.{run}.",
    monitor: bool = True,
) -> ShadowPlan:
    """Check the run and overrides and compute the workers' environment.

    Raises:
        ConfigError: bad run name or prefix, the shadow prefix equals the live one, or a bad override.
    """
    from workers.evaluation.replay_plan import shadow_prefix

    prefix = shadow_prefix(run, prefix_template)
    if prefix == settings.topics.prefix:
        raise ConfigError(f"the shadow prefix {prefix!r} is the live topic prefix; choose another run name")
    env = {
        "RAG_TOPICS__PREFIX": prefix,
        "RAG_WORKER__METRICS_PORT": "0",
    }
    gen = getattr(settings, "generator", None)
    if isinstance(gen, BaseModel) and "answer_table" in type(gen).model_fields:
        # The answer store is keyed by request id and replayed requests keep theirs: never share the live one.
        env["RAG_GENERATOR__ANSWER_TABLE"] = answer_table_name(run)
    table = trace_table_name(run) if monitor else None
    if monitor:
        assert table is not None
        if table == settings.monitor.table:
            raise ConfigError(f"the shadow trace table {table!r} is the live one; choose another run name")
        env.update(
            {
                "RAG_MONITOR__APP_ID": prefix + "monitor",
                "RAG_MONITOR__TABLE": table,
                "RAG_MONITOR__METRICS_PORT": "0",
                "RAG_MONITOR__WEB_PORT": "0",
            }
        )
    checked = parse_overrides(overrides, settings)
    env.update(checked)
    workers = WORKERS if monitor else WORKERS[:2]
    return ShadowPlan(run=run, prefix=prefix, env=env, trace_table=table, workers=workers, overrides=checked)


def worker_env(base_env: Mapping[str, str], plan: ShadowPlan) -> dict[str, str]:
    """The environment of the shadow workers: ``base_env`` without group overrides, plus the plan's variables
    (:func:`workers.supervisor.process_env` then sets ``HF_HUB_OFFLINE`` per worker)."""
    env = {k: v for k, v in base_env.items() if k not in REMOVED_ENV}
    env.update(plan.env)
    return env
