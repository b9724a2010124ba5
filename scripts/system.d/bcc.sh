#!/usr/bin/env bash
# System set-up for live capture with bcc (issue 4), idempotent, run as root by scripts/bootstrap.sh:
#  - /lib/modules/$(uname -r)/{build,source}: bcc compiles BPF C at run time against kernel headers. When the running
#    kernel has none, link Debian's newest linux-headers-*-amd64 (build) and its -common twin (source); socket filters
#    and uprobes compiled against them load and run (they use only stable UAPI structures).
#  - tracefs on /sys/kernel/tracing: bcc attaches and detaches uprobes through it.
#  (Making bcc importable from .venv, and nothing else of the distribution path, is scripts/venv.d/bcc.sh.)
# Not root: print what is missing and go on (the live-capture tests then skip with the reason).
set -uo pipefail
shopt -s nullglob

kernel=$(uname -r)
if [ "$(id -u)" != 0 ]; then
  [ -e "/lib/modules/$kernel/build" ] || echo "bcc.sh: not root: /lib/modules/$kernel/build missing (live capture needs it)" >&2
  exit 0
fi

mods=/lib/modules/$kernel
if [ ! -e "$mods/build/include" ]; then
  arch=""
  for dir in /usr/src/linux-headers-*-amd64; do arch=$dir; done # glob order is sorted: the last is the newest
  if [ -n "$arch" ]; then
    common=${arch%-amd64}-common
    mkdir -p "$mods"
    ln -sfn "$arch" "$mods/build"
    [ -d "$common" ] && ln -sfn "$common" "$mods/source"
    echo "bcc.sh: $mods/build -> $arch"
  else
    echo "bcc.sh: no /usr/src/linux-headers-*-amd64: live capture cannot compile BPF programs" >&2
  fi
fi

if [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/uprobe_events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || echo "bcc.sh: cannot mount tracefs on /sys/kernel/tracing" >&2
fi
exit 0
