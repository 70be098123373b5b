#!/usr/bin/env bash
# Sourced by every bench/ script: prints when and where the figures were measured (the docs
# quote figures only with this header: docs/design/performance.md), to stdout, before the figures.
#   machine_header ORGCTL_BINARY
machine_header() {
  local bin=$1 cpu pg profile
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null)
  pg=$({ pg_config --version 2>/dev/null || "$(ls -d /usr/lib/postgresql/*/bin | tail -1)/postgres" --version; } | head -1)
  case "$bin" in *release*) profile=release ;; *debug*) profile=debug ;; *) profile=unknown ;; esac
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(uname -srm), $(nproc) CPU(s)${cpu:+ ($cpu)}, $(awk '{printf "%.1f GiB", $2/1048576}' <(grep MemTotal /proc/meminfo))"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, at start)"
  echo "server:  $pg"
  echo "orgctl:  $bin ($profile build; checkout at $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
}
