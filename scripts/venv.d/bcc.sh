#!/usr/bin/env bash
# Makes Debian's bcc (python3-bpfcc, pure Python over libbcc.so via ctypes) importable from the project's virtualenv
# without adding the whole distribution path (/usr/lib/python3/dist-packages) to it: one symlink of just the package
# into the venv's site-packages. Idempotent; does nothing when python3-bpfcc is not installed. Argument: the venv.
set -euo pipefail
venv=${1:-.venv}
src=/usr/lib/python3/dist-packages/bcc
[ -d "$src" ] || exit 0
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ "$(readlink "$site/bcc" 2>/dev/null)" = "$src" ] || ln -sfn "$src" "$site/bcc"
