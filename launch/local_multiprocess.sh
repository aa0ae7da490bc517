#!/usr/bin/env bash
# Runs tsgen_jax.main as N cooperating processes on this machine (CPU, gloo collectives): the
# same multi-process code path as a TPU pod slice or several GPU hosts, testable anywhere.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [options] [--] [--config.KEY=VALUE ...]

Starts N processes of `python -m tsgen_jax.main` on this machine, joined by
jax.distributed over localhost with CPU (gloo) collectives, waits for all of them and exits
non-zero if any fails (the others are then stopped). Process 0's output is shown; every
process logs to LOG_DIR/process_<i>.log.

Options:
  -n, --num-processes N    processes to start (default 2)
  -d, --devices K          CPU devices per process (default 1)
  -c, --config FILE        config file (default configs/vqvae.py)
  -w, --workdir DIR        run directory (default /tmp/tsgen_local)
  -p, --port PORT          coordinator port on localhost (default: a free port)
      --log-dir DIR        per-process logs (default WORKDIR/logs)
      --python PY          Python interpreter (default $PYTHON or python3)
      --dry-run            print every command that would run, run nothing
  -h, --help               this help

Arguments after the options (e.g. --config.run=stage1 --config.stage1.num_steps=100) are
passed to tsgen_jax.main as config overrides.

Example:
  launch/local_multiprocess.sh -n 2 -w /tmp/run -- --config.run=stage1
EOF
}

NPROC=2
DEVICES=1
CONFIG=configs/vqvae.py
WORKDIR=/tmp/tsgen_local
PORT=""
LOG_DIR=""
PY="${PYTHON:-python3}"
DRY_RUN=0
OVERRIDES=()

need() { [[ $# -ge 2 && -n "$2" ]] || { echo "error: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--num-processes) need "$@"; NPROC="$2"; shift 2 ;;
    -d|--devices) need "$@"; DEVICES="$2"; shift 2 ;;
    -c|--config) need "$@"; CONFIG="$2"; shift 2 ;;
    -w|--workdir) need "$@"; WORKDIR="$2"; shift 2 ;;
    -p|--port) need "$@"; PORT="$2"; shift 2 ;;
    --log-dir) need "$@"; LOG_DIR="$2"; shift 2 ;;
    --python) need "$@"; PY="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    --config.*) OVERRIDES+=("$1"); shift ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || { echo "error: --num-processes must be >= 1" >&2; exit 2; }
[[ "$DEVICES" =~ ^[1-9][0-9]*$ ]] || { echo "error: --devices must be >= 1" >&2; exit 2; }
LOG_DIR="${LOG_DIR:-$WORKDIR/logs}"
# Runs the repository's code whatever the current directory is.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$CONFIG" || ! -f "$REPO/$CONFIG" ]] || CONFIG="$REPO/$CONFIG"

if [[ -z "$PORT" ]]; then
  if [[ $DRY_RUN == 1 ]]; then
    PORT=12355
  else
    PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
  fi
fi

q() {  # a command's words, shell-quoted for reading and pasting
  local out=() w
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$w"); else out+=("'${w//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

command_for() {  # the command line of process $1, as words
  CMD=(env "TSGEN_COORDINATOR=localhost:$PORT" "TSGEN_NUM_PROCESSES=$NPROC"
       "TSGEN_PROCESS_ID=$1" JAX_PLATFORMS=cpu "JAX_NUM_CPU_DEVICES=$DEVICES"
       JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo "PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}"
       "$PY" -m tsgen_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" ${OVERRIDES[@]+"${OVERRIDES[@]}"})
}

if [[ $DRY_RUN == 1 ]]; then
  echo "+ $(q mkdir -p "$LOG_DIR")"
  for ((i = 0; i < NPROC; i++)); do
    command_for "$i"
    echo "+ $(q "${CMD[@]}") > $(q "$LOG_DIR/process_$i.log") 2>&1 &"
  done
  echo "+ wait  # for all $NPROC processes; exit non-zero if any fails"
  exit 0
fi

mkdir -p "$LOG_DIR"
PIDS=()
for ((i = 0; i < NPROC; i++)); do
  command_for "$i"
  LOG="$LOG_DIR/process_$i.log"
  echo "+ $(q "${CMD[@]}") > $(q "$LOG") 2>&1 &" >&2
  if [[ $i == 0 ]]; then
    "${CMD[@]}" > >(tee "$LOG") 2>&1 &
  else
    "${CMD[@]}" > "$LOG" 2>&1 &
  fi
  PIDS+=($!)
done

stop_all() {  # $1: signal
  for pid in "${PIDS[@]}"; do kill "-$1" "$pid" 2>/dev/null || true; done
}
# Ctrl-C / SIGTERM reach every process, which save a checkpoint together and exit.
trap 'stop_all TERM' INT TERM

STATUS=0
declare -A RC=()
while [[ ${#RC[@]} -lt $NPROC ]]; do
  for ((i = 0; i < NPROC; i++)); do
    [[ -n "${RC[$i]+x}" ]] && continue
    pid=${PIDS[$i]}
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0; wait "$pid" || rc=$?
      RC[$i]=$rc
      if [[ $rc != 0 && $STATUS == 0 ]]; then
        STATUS=$rc
        echo "process $i failed (exit $rc); last lines of $LOG_DIR/process_$i.log:" >&2
        tail -n 20 "$LOG_DIR/process_$i.log" >&2 || true
        # The others would wait for it forever in a collective: stop them.
        stop_all TERM
        ( sleep 10; stop_all KILL ) >/dev/null 2>&1 &
        KILLER=$!
      fi
    fi
  done
  [[ ${#RC[@]} -lt $NPROC ]] && sleep 0.5
done
[[ -n "${KILLER:-}" ]] && kill "$KILLER" 2>/dev/null || true
wait 2>/dev/null || true
if [[ $STATUS != 0 ]]; then
  echo "exit codes by process: $(for ((i = 0; i < NPROC; i++)); do printf '%s ' "${RC[$i]}"; done)" >&2
fi
exit "$STATUS"
