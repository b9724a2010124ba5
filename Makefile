# The two commands of the README. Each installs what it needs first (scripts/bootstrap.sh, idempotent).
.PHONY: demo test lint deps

deps:
	@scripts/bootstrap.sh

demo: deps
	.venv/bin/costmesh demo --keep

# The suite runs twice: on the compiled build, then on the pure-Python twins (COSTMESH_NO_EXTENSIONS=1, inherited by
# every service the tests start), so that no path is tested on one build only.
test: deps
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q
	COSTMESH_NO_EXTENSIONS=1 .venv/bin/python -m pytest -q

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
