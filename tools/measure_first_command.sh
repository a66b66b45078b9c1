#!/usr/bin/env bash
# What README's first command costs on this machine: a fresh virtual environment, `pip install -e
# ".[cpu]"` and `hpcsynth demo`, each timed, in a throw-away copy of the committed tree.
#
#   bash tools/measure_first_command.sh [WORKDIR]      (default: a new temporary directory)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t hpcsynth-first-XXXXXX)}"
mkdir -p "$work/src"
git -C "$repo" archive HEAD | tar -x -C "$work/src"
cd "$work/src"
now() { date +%s.%N; }
t0=$(now); python3 -m venv .venv
t1=$(now); .venv/bin/pip install -q -e ".[cpu]" >"$work/pip.log" 2>&1
t2=$(now); .venv/bin/hpcsynth demo "$work/demo" >"$work/demo.log" 2>&1
t3=$(now)
python3 - "$t0" "$t1" "$t2" "$t3" <<'PY'
import os, sys
t0, t1, t2, t3 = map(float, sys.argv[1:])
print(f"venv {t1 - t0:.0f} s  pip {t2 - t1:.0f} s  demo {t3 - t2:.0f} s  total {t3 - t0:.0f} s  "
      f"(load {os.getloadavg()[0]:.1f})")
PY
du -sh .venv
