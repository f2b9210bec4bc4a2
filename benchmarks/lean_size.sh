#!/usr/bin/env bash
# The realtime runner's install size, for the README: site-packages of the lean venv (`make venv-lean`, no
# TensorFlow) next to the full one (`make venv`), plus the lean venv's largest packages.
set -euo pipefail
cd "$(dirname "$0")/.."

site_packages() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

for venv in .venv-lean .venv; do
  if [ -x "$venv/bin/python" ]; then
    printf '%-10s %6s MiB  (%s)\n' "$venv" "$(du -sm "$(site_packages "$venv")" | cut -f1)" "$(site_packages "$venv")"
  else
    printf '%-10s not built: make %s\n' "$venv" "${venv#.}"
  fi
done
if [ -x .venv-lean/bin/python ]; then
  echo "largest in .venv-lean:"
  # awk rather than head: head would close the pipe early, and pipefail would turn that into a failure
  du -sm "$(site_packages .venv-lean)"/* | sort -rn | awk -v root="$(site_packages .venv-lean)/" \
    'NR <= 8 { sub(root, "", $2); printf "  %5s MiB  %s\n", $1, $2 }'
fi
