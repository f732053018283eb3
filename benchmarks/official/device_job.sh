#!/usr/bin/env bash
# benchmarks/recipe_wall.py as a background job that outlives one device call (a call may last 10 minutes; a held
# machine keeps processes started in their own session until it is given back, so the next call must follow within
# the machine's idle-release time).
#
#   bash benchmarks/official/device_job.sh start [recipe_wall.py options]  # setsid; log and exit code in $RW_DIR
#   bash benchmarks/official/device_job.sh wait SECONDS                    # until the job ends or SECONDS pass
#   bash benchmarks/official/device_job.sh collect DEST                    # result JSON, job log tail, run log tails
#
# Run it from a copy of the repository outside the synced working tree (e.g. /tmp/rwrepo): the next call re-sends the
# working tree and must not change files under a running job.
set -uo pipefail
RW=${RW_DIR:-/tmp/recipe_wall}
mkdir -p "$RW"

case ${1:-} in
  start)
    shift
    rm -f "$RW/job.rc"
    PYTHONUNBUFFERED=1 setsid nohup bash -c 'python benchmarks/recipe_wall.py --work "$0" "$@"; echo $? > "$0/job.rc"' \
      "$RW" "$@" > "$RW/job.log" 2>&1 < /dev/null &
    echo "started recipe_wall.py (log $RW/job.log)" ;;
  wait)
    end=$(( $(date +%s) + ${2:-540} ))
    while [ ! -f "$RW/job.rc" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
    grep -E '^\[|^\|' "$RW/job.log" | tail -n 40
    if [ -f "$RW/job.rc" ]; then echo "finished: exit code $(cat "$RW/job.rc")"; else echo "still running"; fi ;;
  collect)
    dest=${2:?collect needs a destination folder}
    mkdir -p "$dest"
    cp benchmarks/results/recipe_wall_*.json "$dest/" 2>/dev/null || true
    tail -c 20000 "$RW/job.log" > "$dest/recipe_wall_job.log" 2>/dev/null || true
    for f in "$RW"/*.log; do
      [ "$(basename "$f")" = job.log ] && continue
      echo "== $(basename "$f")"; tail -c 3000 "$f" | tr '\r' '\n' | tail -n 25
    done > "$dest/recipe_wall_runs.log" 2>/dev/null || true
    ls -la "$dest" ;;
  *) echo "usage: $0 start [options] | wait SECONDS | collect DEST" >&2; exit 2 ;;
esac
