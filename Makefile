# The two commands of README.md: `make demo` (the pipeline on Python's reference docs) and `make test`.
# Both bootstrap the pinned virtualenv once per machine (scripts/bootstrap.sh) and start what they need.
SHELL := /bin/bash
.ONESHELL:
.PHONY: venv demo test test-slow test-all test-unit lint schema bench

VENV_CMD = venv="$$(bash scripts/bootstrap.sh | tail -n 1)"; export PATH="$$venv/bin:$$PATH"

venv:
	@$(VENV_CMD); echo "$$venv"

demo:
	@$(VENV_CMD); python -m devstack.demo $(ARGS)

LINT = ruff check workers devstack tests bench && ruff format --check -q workers devstack tests bench \
	  && mypy --cache-dir "$${XDG_CACHE_HOME:-$$HOME/.cache}/ragstream/mypy" workers devstack \
	  && PYTHONPATH=. lint-imports --no-cache

lint:
	@$(VENV_CMD); $(LINT)

# `make test`: lint + every test but those marked slow (about 11 minutes on 2 cores); `make test-slow`: the slow
# ones (about 8 minutes: the demo, chaos, llama.cpp, kill -9 mid-call, evaluation end to end); `make test-all`:
# both in one session. CI (.ci/run) runs `make test` and `make test-slow` side by side (one shared test stack).
# mypy's cache is per machine (keyed by file hashes), so a fresh clone checks in seconds rather than 40 s.
test:
	@$(VENV_CMD); $(LINT) && python -m pytest -q -p no:cacheprovider --durations=15 -m "not slow" $(ARGS)

test-slow:
	@$(VENV_CMD); python -m pytest -q -p no:cacheprovider --durations=10 -m slow $(ARGS)

test-all:
	@$(VENV_CMD); $(LINT) && python -m pytest -q -p no:cacheprovider $(ARGS)

test-unit:
	@$(VENV_CMD); python -m pytest -q tests/unit $(ARGS)

schema:
	@$(VENV_CMD); ragstream schema --out schemas

# Benchmarks B1-B7 (BENCHMARKS.md): `make bench`, one of them `make bench ARGS="B4 --quick"`.
bench:
	@$(VENV_CMD); python -m bench $(ARGS)
