#!/usr/bin/env bash
# The virtualenv of this checkout, in two layers, so that every checkout runs its own code while the pinned
# dependencies (torch and friends) are installed once per machine:
#
# 1. the shared venv (RAG_VENV, default ~/.cache/ragstream/venv-py311): the pins of requirements.lock, made
#    once per machine and brought up to new pins when requirements.lock changes (pip installs the
#    difference). The project itself is not installed into it.
# 2. this checkout's venv (RAG_CHECKOUT_VENV, default <checkout>/.venv): no packages of its own but this
#    checkout, installed editable (the `ragstream` command runs this checkout's code); it sees the shared
#    venv's packages through a .pth line, and the shared venv's commands (pytest, ruff, mypy, lint-imports,
#    ...) are in its bin/ too, started by its own python. Bootstrapping a second checkout makes a second
#    layer and never touches the first.
#
# Several bootstraps may run at once (`make test` and `make test-slow` side by side, `make demo` while tests run):
# they take turns on one lock per machine, and one that finds this checkout's layer up to date (a stamp of the
# pins, pyproject.toml and the checkout's path) changes nothing, so processes already running from the layer never
# see a half-written .pth or script. What is rewritten is written to a temporary file and renamed into place.
#
# Prints the checkout venv's path on its last line: `source "$(bash scripts/bootstrap.sh | tail -1)/bin/activate"`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
shared="${RAG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ragstream/venv-py311}"
layer="${RAG_CHECKOUT_VENV:-$here/.venv}"
hash="$(sha256sum "$here/requirements.lock" | cut -c1-16)"
mkdir -p "$(dirname "$shared")"
exec 9>"$(dirname "$shared")/.bootstrap.lock"
flock 9
if [ "$(cat "$shared/.lock-hash" 2>/dev/null)" != "$hash" ]; then
  if [ ! -x "$shared/bin/python" ]; then
    echo "bootstrap: creating $shared (first time on this machine: downloads torch and friends, a few minutes)" >&2
    "$py" -m venv "$shared"
    "$shared/bin/pip" install -q --upgrade "pip>=24" >&2
  else
    echo "bootstrap: requirements.lock changed; updating $shared" >&2
  fi
  "$shared/bin/pip" install -q -r "$here/requirements.lock" >&2
  "$shared/bin/pip" check >&2
  echo "$hash" > "$shared/.lock-hash"
fi

# This checkout's layer: a venv made from the same Python, seeing the shared packages.
if [ ! -x "$layer/bin/python" ] || [ "$(readlink -f "$layer/bin/python")" != "$(readlink -f "$shared/bin/python")" ]; then
  rm -rf "$layer"
  "$shared/bin/python" -m venv --without-pip "$layer"
fi
stamp="$hash $(sha256sum "$here/pyproject.toml" | cut -c1-16) $here $(readlink -f "$shared/bin/python")"
if [ "$(cat "$layer/.bootstrap-stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$layer"  # up to date: nothing to do
  exit 0
fi
# put FILE: standard input into FILE through a temporary file renamed over it (readers see old or new, never half).
put() { cat > "$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"; }
purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
purelib "$shared" | put "$(purelib "$layer")/_ragstream_shared_venv.pth"

# The shared venv's commands, started by this layer's python (so they import this checkout's code).
for src in "$shared"/bin/*; do
  name="$(basename "$src")"
  case "$name" in python*|pip*|activate*|Activate*|deactivate|ragstream) continue ;; esac
  [ -f "$src" ] || continue
  dst="$layer/bin/$name"
  if head -c 2 "$src" | grep -q '^#!' && head -n 1 "$src" | grep -q "$shared/bin/python"; then
    { echo "#!$layer/bin/python"; tail -n +2 "$src"; } > "$dst.tmp.$$"
    chmod +x "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
  else
    ln -sfn "$src" "$dst.tmp.$$"
    mv -Tf "$dst.tmp.$$" "$dst"
  fi
done

# The project itself: editable into the layer, no dependency resolution (pins above), seconds.
log="$(mktemp)"
if ! "$layer/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here" >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
echo "$stamp" | put "$layer/.bootstrap-stamp"
echo "$layer"
