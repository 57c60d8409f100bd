#!/usr/bin/env bash
# `make run`: build the default image if needed, launch (or reuse) the VM `demo`, run `uname -a` in it, list VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
corral=.venv/bin/corral
$corral daemon start
state=$($corral show demo --json 2>/dev/null | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["state"])' || echo absent)
case "$state" in
  absent) $corral launch demo ;;
  running) ;;
  stopped|crashed) $corral start demo ;;
  *) echo "demo is $state; see: $corral show demo" >&2; exit 1 ;;
esac
$corral exec demo -- uname -a
$corral ls
