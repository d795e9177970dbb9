#!/usr/bin/env bash
# Make (once per machine) the virtualenv with the pinned dev install, then install this checkout into it.
# The venv lives outside the checkout so fresh clones and CI reuse it: torch is installed once per machine,
# not per run. When requirements.lock changes, the same venv is brought up to the new pins (pip only
# installs the difference). Prints the venv path on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
venv="${RAG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ragstream/venv-py311}"
hash="$(sha256sum "$here/requirements.lock" | cut -c1-16)"
if [ "$(cat "$venv/.lock-hash" 2>/dev/null)" != "$hash" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv (first time on this machine: downloads torch and friends, a few minutes)" >&2
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade "pip>=24" >&2
  else
    echo "bootstrap: requirements.lock changed; updating $venv" >&2
  fi
  "$venv/bin/pip" install -q -r "$here/requirements.lock" >&2
  "$venv/bin/pip" check >&2
  echo "$hash" > "$venv/.lock-hash"
fi
# The project itself: editable, no dependency resolution (pins above), seconds.
log="$(mktemp)"
if ! "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$here" >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
echo "$venv"
