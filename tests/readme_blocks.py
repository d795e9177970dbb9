"""The README's shell blocks that use the evaluation commands, and the examples of the commands' help texts:
what the README-commands tests run (``tests/e2e/test_readme_commands.py``) and check statically
(``tests/unit/test_readme_examples.py``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Commands whose README examples must run as pasted.
EVALUATION_COMMANDS = ("replay", "shadow", "evaluate", "runs", "dlq")

_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
_USES = re.compile(r"^\s*ragstream (" + "|".join(EVALUATION_COMMANDS) + r")\b", re.M)


def readme_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    """The ```bash blocks of the README that run an evaluation command, in README order."""
    return [b for b in _BLOCK.findall(readme.read_text(encoding="utf-8")) if _USES.search(b)]


def commands_of(block: str) -> list[str]:
    """The commands of a shell block: comments dropped, ``\\`` continuations joined, blank lines skipped."""
    out: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        code = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment (no '#' inside our commands' words)
        if code:
            out.append(code)
    return out


def help_examples(text: str) -> list[str]:
    """The example command lines of a command's docstring (the lines under ``Examples:`` / ``Example:``)."""
    if "Example" not in text:
        return []
    tail = text.split("Example", 1)[1]
    lines = [ln.strip() for ln in tail.splitlines()]
    joined = commands_of("\n".join(ln for ln in lines if ln.startswith("ragstream") or ln.startswith("--")))
    return [c for c in joined if c.startswith("ragstream ")]
