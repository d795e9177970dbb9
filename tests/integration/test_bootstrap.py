"""Every checkout runs its own code, the pinned dependencies stay shared (scripts/bootstrap.sh).

Two copies of this checkout are bootstrapped against the machine's shared venv, one after the other. Each gets
its own layer (``<checkout>/.venv``) whose ``ragstream`` and ``python`` import that checkout's ``workers``;
bootstrapping the second repoints nothing in the first, and the shared venv is left as it was. ``make venv``
prints the layer. Needs the shared venv at the pins of requirements.lock (``make venv`` once); it is never
modified here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _shared_venv() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "ragstream" / "venv-py311"
    return Path(os.environ.get("RAG_VENV", str(default)))


def _state(venv: Path) -> dict[str, bytes]:
    """The shared venv's site-packages entries that an install into it would change (.pth files, finders)."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    return {
        p.name: p.read_bytes()
        for p in sorted(site.iterdir())
        if p.is_file() and (p.suffix == ".pth" or p.name.startswith("__editable__"))
    } | {"bin/ragstream": (venv / "bin" / "ragstream").read_bytes() if (venv / "bin" / "ragstream").exists() else b""}


def _copy_checkout(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, files):
        src = ROOT / rel.decode()
        if src.is_file():
            (dst / rel.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel.decode())


def _bootstrap(checkout: Path, shared: Path) -> Path:
    env = {**os.environ, "RAG_VENV": str(shared)}
    env.pop("RAG_CHECKOUT_VENV", None)
    out = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=checkout, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def _where(layer: Path) -> tuple[str, str]:
    """What the layer's ``ragstream --version`` says and where its python imports ``workers`` from (cwd /)."""
    version = subprocess.run([layer / "bin" / "ragstream", "--version"], capture_output=True, text=True, cwd="/")
    assert version.returncode == 0, version.stderr
    imported = subprocess.run(
        [layer / "bin" / "python", "-c", "import workers; print(workers.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert imported.returncode == 0, imported.stderr
    return version.stdout.strip(), imported.stdout.strip()


def test_each_checkout_runs_its_own_code_and_shares_the_pinned_dependencies(tmp_path: Path) -> None:
    shared = _shared_venv()
    want = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()[:16]
    have = (shared / ".lock-hash").read_text().strip() if (shared / ".lock-hash").exists() else ""
    if have != want:
        pytest.skip(f"the shared venv {shared} is not at this checkout's pins (run `make venv` first)")
    before = _state(shared)
    a, b = tmp_path / "checkout-a", tmp_path / "checkout-b"
    for c in (a, b):
        _copy_checkout(c)
    layer_a = _bootstrap(a, shared)
    assert layer_a == a / ".venv"
    assert _where(layer_a) == (f"ragstream 0.1.0 ({a})", str(a / "workers" / "__init__.py"))
    layer_b = _bootstrap(b, shared)
    assert _where(layer_b) == (f"ragstream 0.1.0 ({b})", str(b / "workers" / "__init__.py"))
    # the first checkout still runs its own code, and the shared venv did not change
    assert _where(layer_a) == (f"ragstream 0.1.0 ({a})", str(a / "workers" / "__init__.py"))
    assert _state(shared) == before
    # the shared venv's tools are in the layer, started by the layer's python
    pytest_script = (layer_a / "bin" / "pytest").read_text()
    assert pytest_script.startswith(f"#!{layer_a}/bin/python")
    ruff = subprocess.run([layer_a / "bin" / "ruff", "--version"], capture_output=True, text=True)
    assert ruff.returncode == 0 and ruff.stdout.startswith("ruff ")
    # `make venv` (what `make demo` and `make test` run first) prints this checkout's layer; a second run is idle
    make = subprocess.run(
        ["make", "-s", "venv"], cwd=a, capture_output=True, text=True, env={**os.environ, "RAG_VENV": str(shared)}
    )
    assert make.returncode == 0, make.stderr[-2000:]
    assert make.stdout.strip().splitlines()[-1] == str(layer_a)


def test_bootstraps_side_by_side_take_turns_and_leave_running_processes_alone(tmp_path: Path) -> None:
    """`make test` and `make test-slow` side by side (as `.ci/run` runs them) each bootstrap first: two first-time
    bootstraps of one checkout at once both end with a working layer, and bootstrapping again while the checkout's
    python starts over and over rewrites nothing (the .pth that makes the shared packages visible was once
    rewritten every time: a process starting at that moment could not import psutil)."""
    shared = _shared_venv()
    want = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()[:16]
    have = (shared / ".lock-hash").read_text().strip() if (shared / ".lock-hash").exists() else ""
    if have != want:
        pytest.skip(f"the shared venv {shared} is not at this checkout's pins (run `make venv` first)")
    c = tmp_path / "checkout-c"
    _copy_checkout(c)
    env = {**os.environ, "RAG_VENV": str(shared)}
    env.pop("RAG_CHECKOUT_VENV", None)

    def start_bootstrap() -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "scripts/bootstrap.sh"], cwd=c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first = [start_bootstrap() for _ in range(2)]
    for p in first:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == str(c / ".venv")
    layer = c / ".venv"
    assert _where(layer) == (f"ragstream 0.1.0 ({c})", str(c / "workers" / "__init__.py"))
    pth = next((layer / "lib").glob("python3*/site-packages/_ragstream_shared_venv.pth"))
    written = pth.stat().st_mtime_ns

    again = [start_bootstrap() for _ in range(3)]
    for _ in range(10):  # the checkout's python sees the shared packages and its own code throughout
        imported = subprocess.run(
            [layer / "bin" / "python", "-c", "import psutil, workers"], capture_output=True, text=True, cwd="/"
        )
        assert imported.returncode == 0, imported.stderr[-2000:]
    for p in again:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert pth.stat().st_mtime_ns == written, "an up-to-date layer was rewritten"
