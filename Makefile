# The two commands of the README. Each installs what it needs first (scripts/bootstrap.sh, idempotent).
.PHONY: demo test lint deps

deps:
	@scripts/bootstrap.sh

demo: deps
	.venv/bin/costmesh demo --keep

test: deps
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
