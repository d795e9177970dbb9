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
	  && mypy workers devstack && PYTHONPATH=. lint-imports --no-cache

lint:
	@$(VENV_CMD); $(LINT)

# `make test`: lint + every test but those marked slow (about 10 minutes on 2 cores); `make test-slow`: the slow
# ones (about 10 minutes: the demo, chaos, llama.cpp, gateway load, evaluation end to end); `make test-all`: both
# in one session. CI (.ci/run) runs `make test` then `make test-slow`.
test:
	@$(VENV_CMD); $(LINT) && python -m pytest -q -p no:cacheprovider -m "not slow" $(ARGS)

test-slow:
	@$(VENV_CMD); python -m pytest -q -p no:cacheprovider -m slow $(ARGS)

test-all:
	@$(VENV_CMD); $(LINT) && python -m pytest -q -p no:cacheprovider $(ARGS)

test-unit:
	@$(VENV_CMD); python -m pytest -q tests/unit $(ARGS)

schema:
	@$(VENV_CMD); ragstream schema --out schemas

# Benchmarks B1-B7 (BENCHMARKS.md): `make bench`, one of them `make bench ARGS="B4 --quick"`.
bench:
	@$(VENV_CMD); python -m bench $(ARGS)
