#!/usr/bin/env bash
# Installs everything costmesh needs, idempotently: Debian packages (apt-get when root; otherwise a message naming
# them), then .venv with the project (Cython extensions built) and its dev extra. Re-running does nothing unless
# pyproject.toml, setup.py or the Cython sources in native/ changed.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEBIAN_PACKAGES=(${COSTMESH_DEBIAN_PACKAGES:-})
for extra in scripts/debian-packages.d/*.txt; do
  [ -e "$extra" ] || continue
  while read -r pkg; do [ -n "$pkg" ] && [ "${pkg:0:1}" != "#" ] && DEBIAN_PACKAGES+=("$pkg"); done < "$extra"
done

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
for hook in scripts/system.d/*.sh; do
  [ -e "$hook" ] && bash "$hook"
done

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.costmesh-installed
want=$(cat pyproject.toml setup.py native/*.pyx native/*.pxd native/*.pxi 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing costmesh and its dependencies into .venv (log: .venv/pip.log)"
  if ! .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]' > .venv/pip.log 2>&1; then
    tail -40 .venv/pip.log >&2
    exit 1
  fi
  .venv/bin/python -c "import costmesh.cli" # fail here, clearly, if the install did not work
  echo "$want" > "$stamp"
fi
# Per-area hooks that adjust the virtualenv (e.g. make one distribution package importable), run every time: idempotent.
for hook in scripts/venv.d/*.sh; do
  [ -e "$hook" ] && bash "$hook" .venv
done
