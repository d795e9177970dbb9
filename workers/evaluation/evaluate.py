"""Compare two runs of the pipeline on the same requests: ``ragstream evaluate``.

:func:`evaluate` reads the candidate run and then the baseline's answers to the same requests
(:mod:`workers.evaluation.runs`), and builds the typed report (:mod:`workers.evaluation.report`) with the
metrics of :mod:`workers.evaluation.analysis` and the gates of :mod:`workers.evaluation.gates`; the CLI writes
it with :func:`workers.evaluation.report.write_report` (HTML by :mod:`workers.evaluation.render`). Reading the
sources and the embedding model are passed in here; everything below is pure and unit-tested.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from workers.contracts.errors import ConfigError
from workers.evaluation.analysis import Embed
from workers.evaluation.gates import Gate
from workers.evaluation.models import Report
from workers.evaluation.report import build_report
from workers.evaluation.runs import RunData, RunSource, evaluation_ids, load_labels, load_run
from workers.settings import Settings

log = logging.getLogger(__name__)


def evaluate(
    settings: Settings,
    baseline: RunSource,
    candidate: RunSource,
    *,
    labels_path: Path | None = None,
    gates: Sequence[Gate] = (),
    embed: Embed | None = None,
    timeout_s: float = 120.0,
) -> Report:
    """Read both runs, compare them and check the gates; returns the report (:func:`build_report`).

    Args:
        settings: Kafka, database and topic settings.
        baseline: the run compared against (usually ``live`` or the live trace table).
        candidate: the shadow run.
        labels_path: labelled questions file (``{"q": ..., "topics": [...]}`` per line).
        gates: release gates.
        embed: texts → vectors for answer similarity (``None`` skips it).
        timeout_s: seconds allowed to read each topic.

    Raises:
        ConfigError: a source does not exist, the labels file is bad, or the candidate run has no requests.
        ServiceUnavailableError: the broker or the database cannot be reached.
    """
    labels = load_labels(labels_path) if labels_path is not None else None
    cand = load_run(settings, candidate, "candidate", timeout_s=timeout_s)
    ids = evaluation_ids(RunData("baseline", ""), cand)
    if not ids:
        raise ConfigError(f"the candidate run {candidate} has no requests or answers")
    base = load_run(settings, baseline, "baseline", ids=ids, timeout_s=timeout_s)
    log.info(
        "evaluate candidate=%s requests=%d answers=%d baseline=%s answers=%d",
        candidate,
        len(ids),
        len(cand.answers),
        baseline,
        len(base.answers),
    )
    return build_report(
        base, cand, labels=labels, embed=embed, gates=gates, labels_path=str(labels_path) if labels_path else None
    )
