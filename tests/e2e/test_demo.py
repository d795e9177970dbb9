"""The demo as a newcomer runs it (issue 12, input 6): its own stack on free ports, Python's docs ingested, three
questions through the three workers, answered in English by SmolLM2-135M-Instruct, each source marked cited or not.

It runs ``python -m devstack.demo`` as ``make demo`` does (a subprocess, its own devstack home) and reads what it
prints. SmolLM2 is de-quantized into the devstack cache the first time on a machine (about 45 s), then loads in
seconds; three answers of at most 100 tokens take about a minute on two cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devstack._proc import free_port
from devstack.stack import REPO_ROOT

#: Common English words: an English answer of a dozen words holds several of them, random tokens none.
_ENGLISH = {"the", "a", "an", "is", "of", "to", "in", "and", "it", "that", "this", "when", "with", "be", "are", "for"}


def _answers(out: str) -> list[tuple[str, list[str]]]:
    """(answer text, cited column of its sources table) for each answer block the demo printed."""
    blocks = re.split(r"^answer \(", out, flags=re.M)[1:]
    found = []
    for block in blocks:
        head, _, rest = block.partition("sources")
        answer = head.split("\n", 1)[1] if "\n" in head else ""
        cited = []
        for line in rest.splitlines():
            if line.startswith("groundedness"):
                break
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if len(cells) == 5 and cells[0].isdigit():
                cited.append(cells[4])
        found.append((answer, cited))
    return found


@pytest.mark.slow
def test_demo_answers_three_questions_in_english_with_sources_marked(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "devstack.demo",
        "--home",
        str(home),
        "--kafka-port",
        str(free_port(pair=True)),
        "--pg-port",
        str(free_port()),
        "--llm-port",
        str(free_port()),
    ]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO_ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("RAG_")}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    print(out[-6000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "answer (HuggingFaceTB/SmolLM2-135M-Instruct" in out
    answers = _answers(out)
    assert len(answers) == 3, out
    for text, cited in answers:
        words = re.findall(r"[a-z']+", text.lower())
        assert len(words) >= 3, text
        assert len(_ENGLISH.intersection(words)) >= 2, f"not English: {text!r}"
        assert len(cited) == 5, f"sources without a cited column: {cited}"
        assert all(c in ("no", "model", "attribution") for c in cited), cited
    # three questions through the Python client and one through the gateway: every one has its trace row
    rows = re.search(r"monitor trace rows for these requests: (\d+) of (\d+)", out)
    assert rows is not None and rows.group(1) == rows.group(2) and int(rows.group(2)) >= 3, out
    assert "'gateway-0': 0" in out, "the gateway replica did not exit 0 after SIGTERM"
    assert "SmolLM2-135M-Instruct on this CPU" in out
