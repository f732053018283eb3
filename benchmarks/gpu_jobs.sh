#!/usr/bin/env bash
# Long GPU trainings as background jobs that outlive one device call (a call may last 10 minutes; a held machine
# keeps running processes started in their own session until it is given back).
#
#   bash benchmarks/gpu_jobs.sh start JOB...   # snapshot src/ + benchmarks/ + the caches, start each JOB (setsid)
#   bash benchmarks/gpu_jobs.sh status         # one line per job: running/exit code, last log line
#   bash benchmarks/gpu_jobs.sh wait SECONDS   # wait until no job runs (or SECONDS pass), then status
#   bash benchmarks/gpu_jobs.sh stop JOB...    # end a running job with every process it started (its process
#                                              # group: a cv job's --parallel-folds workers do not name the job in
#                                              # their command line, so pkill -f misses them); its finished folds stay
#   bash benchmarks/gpu_jobs.sh collect DEST   # DEST/gpujobs.tgz: result JSONs, run logs/histories, job logs;
#                                              # + each cv_* job's finished folds (cvstate_*.tgz, no checkpoints)
#
# Jobs (each reads its cache from .gpucache/, built here beforehand, see the scripts' docstrings):
#   ph2_vmunet ph2_vmbunet ph2_dermomamba  full-length PH2 recipes  (train_skin_ph2_gpu.py --full)
#   slicemamba                             supernet + search + 3 retrainings on EndoTect (slicemamba_gpu.py run)
#   acdc                                   MSVM-UNet and HeteroMedSeg on ACDC, side by side (acdc_gpu.py)
#   cv_NAME                                PH2 5-fold cross-validation (cv_ph2_gpu.py) with the arguments in the
#                                          variable CV_NAME (the job name upper-cased), e.g.
#     CV_STABLE='--recipes vmbunet_ph2_stable --seeds 0 --parallel-folds 5' bash benchmarks/gpu_jobs.sh start cv_stable
#   (one cv job at a time: ten folds side by side ran at 6.8 s per epoch each, the paper recipe's folds alone at
#   0.70-0.81 s, so two jobs take as long as one after the other, and a 5-fold VMB-UNet job alone ~18 minutes of an
#   H100)
#   (all cv_* jobs share runs/cv, so a job started again on the same machine resumes its unfinished folds);
#   back here: cat DEST/cvstate_<root>.tgz* | tar xz -C /tmp/r, then cv_ph2_gpu.py with the job's arguments and
#   --runs /tmp/r/cv --score-only (tests/test_gpu_jobs.py does exactly this); folds that did not finish come back
#   as their history.json in gpujobs.tgz (runs/cv/...), which cv_ph2_gpu.py --stability-only reads
# Budgets (seconds) via the environment: SM_BUDGET (default 1200), ACDC_BUDGET (900, per model; more acdc_gpu.py
# options in ACDC_ARGS, e.g. ACDC_ARGS='--validations 15 --hard-stop 1.04 --tag _full'),
# PH2_SAFETY_MIN (26, a stop for runs that would not finish).
# All jobs share one GPU: the wall times and img/s they report include that sharing.
set -euo pipefail
ROOT=${GPUJOBS_DIR:-/tmp/gpujobs}
mkdir -p "$ROOT/logs" "$ROOT/results" "$ROOT/runs"

start_job() {
  local job=$1 snap cmd
  snap="$ROOT/snap_${job}"
  rm -rf "$snap" && mkdir -p "$snap/.gpucache"
  cp -r src benchmarks "$snap/"
  case $job in
    ph2_vmunet|ph2_vmbunet|ph2_dermomamba)
      local cache=ph2_256.npz
      [ "$job" = ph2_dermomamba ] && cache=ph2_192x256.npz  # DermoMamba's recipe trains at 192x256
      cp ".gpucache/$cache" "$snap/.gpucache/"
      cmd="${PYTHON:-python} benchmarks/train_skin_ph2_gpu.py --full --models ${job#ph2_} --minutes ${PH2_SAFETY_MIN:-26} \
--set train.checkpoint_every=50 --set data.persistent_workers=true --set data.num_workers=3 \
--out-dir $ROOT/runs --results-dir $ROOT/results" ;;
    slicemamba)
      cp .gpucache/endotect_256.npz "$snap/.gpucache/"
      cmd="${PYTHON:-python} benchmarks/slicemamba_gpu.py run --cache .gpucache/endotect_256.npz --budget-s ${SM_BUDGET:-1200} \
--population 20 --workers 3 --out $ROOT/results/slicemamba --work $ROOT/runs/slicemamba" ;;
    acdc)
      cp .gpucache/acdc_224.npz "$snap/.gpucache/"
      cmd="${PYTHON:-python} benchmarks/acdc_gpu.py --cache .gpucache/acdc_224.npz --budget-s ${ACDC_BUDGET:-900} --workers 3 \
--runs $ROOT/runs --copy-to $ROOT/results/acdc ${ACDC_ARGS:-}" ;;
    cv_*)
      local var args
      if [[ ! $job =~ ^cv_[A-Za-z0-9_]+$ ]]; then
        echo "job $job: a cv job is named cv_ and letters, digits and '_' (its arguments are in \$CV_...)" >&2; return 2
      fi
      var=$(echo "$job" | tr '[:lower:]' '[:upper:]')
      args=${!var:-}
      if [ -z "$args" ]; then echo "job $job: set $var to its cv_ph2_gpu.py arguments (see the header)" >&2; return 2; fi
      for c in .gpucache/ph2_256.npz .gpucache/ph2_192x256.npz; do [ -f "$c" ] && cp "$c" "$snap/.gpucache/"; done
      echo "$args" > "$ROOT/logs/$job.args"
      cmd="${PYTHON:-python} benchmarks/cv_ph2_gpu.py $args --runs $ROOT/runs/cv --results-dir $ROOT/results" ;;
    *) echo "unknown job '$job' (ph2_vmunet ph2_vmbunet ph2_dermomamba slicemamba acdc cv_NAME)" >&2; return 2 ;;
  esac
  echo "$cmd" > "$ROOT/logs/$job.cmd"
  rm -f "$ROOT/logs/$job.rc" "$ROOT/logs/$job.pgid"
  # own session (setsid): the job survives the end of the device call that started it; the session's first shell
  # leads its process group, whose id (its pid) 'stop' signals. The subshell becomes that shell (exec), so no
  # process is left holding this script's output open (a caller reading it to the end would wait for the job)
  ( cd "$snap" && PYTHONPATH="$snap/src" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 \
      exec setsid nohup bash -c "echo \$\$ > $ROOT/logs/$job.pgid; $cmd; echo \$? > $ROOT/logs/$job.rc" ) \
      > "$ROOT/logs/$job.log" 2>&1 < /dev/null &
  echo "started $job: $cmd"
}

job_state() {  # running, exit N, or stopped (by 'stop')
  local rc
  [ -f "$ROOT/logs/$1.rc" ] || { echo running; return; }
  rc=$(cat "$ROOT/logs/$1.rc")
  if [ "$rc" = stopped ]; then echo stopped; else echo "exit $rc"; fi
}

status() {
  for f in "$ROOT"/logs/*.cmd; do
    [ -e "$f" ] || continue
    local job; job=$(basename "$f" .cmd)
    echo "== $job [$(job_state "$job")] $(tail -c 300 "$ROOT/logs/$job.log" | tr '\n' ' ' | tail -c 240)"
  done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true
}

running() {
  for f in "$ROOT"/logs/*.cmd; do
    [ -e "$f" ] || continue
    [ "$(job_state "$(basename "$f" .cmd)")" = running ] && return 0
  done
  return 1
}

group_alive() {  # any process of group $1 that is not a zombie (an unreaped zombie cannot be signalled away)
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

wait_gone() {  # wait up to $2 seconds for group $1 to end; true once it has
  local i
  for i in $(seq 1 "$2"); do group_alive "$1" || return 0; sleep 1; done
  ! group_alive "$1"
}

stop_job() {
  local job=$1 pgid i state
  if [ ! -f "$ROOT/logs/$job.cmd" ]; then echo "stop: no job '$job' was started here" >&2; return 2; fi
  state=$(job_state "$job")
  if [ "$state" != running ]; then echo "stop: $job has already ended ($state)"; return 0; fi
  for i in $(seq 1 10); do [ -s "$ROOT/logs/$job.pgid" ] && break; sleep 1; done  # a job started a moment ago
  pgid=$(cat "$ROOT/logs/$job.pgid" 2>/dev/null || true)
  if [[ ! $pgid =~ ^[0-9]+$ ]]; then
    echo "stop: $job has no process group on record ($ROOT/logs/$job.pgid; started by an older gpu_jobs.sh?)" >&2
    return 1
  fi
  kill -TERM -- "-$pgid" 2>/dev/null || true
  wait_gone "$pgid" 30 || kill -KILL -- "-$pgid" 2>/dev/null || true
  if ! wait_gone "$pgid" 10; then echo "stop: processes of $job (group $pgid) are still there" >&2; return 1; fi
  echo stopped > "$ROOT/logs/$job.rc"
  echo "stopped $job (process group $pgid)"
}

case ${1:-status} in
  start) shift; for j in "$@"; do start_job "$j"; done ;;
  stop) shift; rc=0; for j in "$@"; do stop_job "$j" || rc=$?; done; exit $rc ;;
  status) status ;;
  wait)
    end=$(( $(date +%s) + ${2:-540} ))
    while running && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
    status ;;
  collect)
    dest=${2:?collect needs a destination folder}
    mkdir -p "$dest"
    failed=""
    for f in "$ROOT"/logs/cv_*.args; do  # finished folds of the cross-validations, packed as cv_ph2_gpu.py does
      [ -e "$f" ] || continue
      job=$(basename "$f" .args)
      ( cd "$ROOT/snap_$job" && PYTHONPATH=src bash -c "${PYTHON:-python} benchmarks/cv_ph2_gpu.py \
          $(cat "$f") --runs $ROOT/runs/cv --pack $dest --pack-part-mib ${PACK_PART_MIB:-15}" ) || failed="$failed $job"
    done
    ( cd "$ROOT" && find runs -maxdepth 4 \( -name 'history.json' -o -name 'metrics.json' -o -name 'train.log' \
        -o -name 'config.yaml' -o -name '*.jsonl' -o -name 'arch.json' \) -print0 \
      | tar czf "$dest/gpujobs.tgz" --null -T - results logs )
    ls -la "$dest"
    if [ -n "$failed" ]; then  # the rest is collected; say what is missing and fail
      echo "collect: could not pack the folds of:$failed (see the messages above); gpujobs.tgz holds their logs" >&2
      exit 1
    fi ;;
  *) echo "usage: $0 start JOB... | stop JOB... | status | wait SECONDS | collect DEST" >&2; exit 2 ;;
esac
