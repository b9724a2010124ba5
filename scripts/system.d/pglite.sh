#!/usr/bin/env bash
# Installs the TimescaleDB-in-WASM test server (tests/timescale/package.json) with npm, idempotently.
# Without node/npm it says so and returns: tests/test_timescale.py then skips with that reason.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=tests/timescale
if ! command -v npm >/dev/null 2>&1; then
  echo "bootstrap: npm not found; the TimescaleDB flavour test will be skipped" >&2
  exit 0
fi
stamp=$dir/node_modules/.costmesh-installed
want=$(sha256sum "$dir/package.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing the TimescaleDB (PGlite) test server with npm (log: $dir/npm.log)"
  if ! npm install --prefix "$dir" --no-audit --no-fund --loglevel=error > "$dir/npm.log" 2>&1; then
    tail -20 "$dir/npm.log" >&2
    echo "bootstrap: npm install failed; the TimescaleDB flavour test will be skipped" >&2
    exit 0
  fi
  echo "$want" > "$stamp"
fi
