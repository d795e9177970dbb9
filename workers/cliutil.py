"""What every ``ragstream`` command shares: the console, settings read once with logging configured, the
default topics.yaml, and the program's version.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from rich.console import Console

from workers.logs import configure_logging
from workers.settings import Settings, load_settings

console = Console()
#: The checkout (or installed tree) this code runs from: the folder holding the ``workers`` package.
CODE_ROOT = Path(__file__).resolve().parent.parent


def command_settings() -> Settings:
    """The settings of this command (environment ``RAG_*``), logging configured from them.

    Raises:
        pydantic.ValidationError: a setting has a bad value.
    """
    s = load_settings()
    configure_logging(s.log_level, s.log_json)
    return s


def default_topics_file() -> Path:
    """``./topics.yaml`` when the current folder has one, else the one next to the ``workers`` package."""
    here = Path.cwd() / "topics.yaml"
    if here.exists():
        return here
    return CODE_ROOT / "topics.yaml"


def version_text() -> str:
    """``ragstream <version> (<where the code runs from>)``: the version of the installed distribution and the
    folder the ``workers`` package is imported from (which checkout answers, when several are installed)."""
    try:
        version = metadata.version("ragstream")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return f"ragstream {version} ({CODE_ROOT})"
