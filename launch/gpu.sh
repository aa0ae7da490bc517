#!/usr/bin/env bash
# Trains on one multi-GPU host: this machine or a remote one over ssh.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [options] [--] [--config.KEY=VALUE ...]

Runs `python -m tsgen_jax.main` as one process that uses every visible GPU (the batch is
split over them on the mesh's 'data' axis). With --host the repository is first copied to
the remote machine with rsync, the run happens there over ssh and the workdir is copied back.

Options:
  --host [USER@]HOST   run on this machine over ssh (default: here)
  --remote-dir DIR     repository copy on the host (default tsgen_jax, in the remote home)
  --install            pip install -r requirements.txt and jax[cuda12] (and the package) first
  --jax-version V      jax[cuda12] version for --install (default 0.10.2)
  --gpus LIST          CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: all GPUs)
  --python PY          Python on the host (default python3)
  --config FILE        config file, relative to the repository (default configs/vqvae.py)
  --workdir DIR        run directory on the host (default runs/gpu, relative to the
                       repository on the host)
  --local-dir DIR      with --host: where the workdir is copied back (default runs/gpu)
  --dry-run            print every command that would run, run nothing
  -h, --help           this help

Arguments after the options are passed to tsgen_jax.main as config overrides, e.g.
  launch/gpu.sh --host gpu-box --install -- --config.stage1.batch_size=512
EOF
}

HOST=""
REMOTE_DIR=tsgen_jax
INSTALL=0
JAX_VERSION=0.10.2
GPUS=""
PY=python3
CONFIG=configs/vqvae.py
WORKDIR=runs/gpu
LOCAL_DIR=""
DRY_RUN=0
OVERRIDES=()

need() { [[ $# -ge 2 && -n "$2" ]] || { echo "error: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) need "$@"; HOST="$2"; shift 2 ;;
    --remote-dir) need "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --jax-version) need "$@"; JAX_VERSION="$2"; shift 2 ;;
    --gpus) need "$@"; GPUS="$2"; shift 2 ;;
    --python) need "$@"; PY="$2"; shift 2 ;;
    --config) need "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need "$@"; WORKDIR="$2"; shift 2 ;;
    --local-dir) need "$@"; LOCAL_DIR="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    --config.*) OVERRIDES+=("$1"); shift ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL_DIR="${LOCAL_DIR:-$REPO/runs/gpu}"

q() {  # a command's words, shell-quoted for reading and pasting
  local out=() w
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$w"); else out+=("'${w//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
run() {  # prints a command, then runs it (unless --dry-run)
  echo "+ $(q "$@")"
  [[ $DRY_RUN == 1 ]] || "$@"
}
on_host() {  # $1: a shell command, run in the repository (here or on --host)
  if [[ -n "$HOST" ]]; then
    run ssh "$HOST" "cd $(q "$REMOTE_DIR") && $1"
  else
    run bash -c "cd $(q "$REPO") && $1"
  fi
}

if [[ -n "$HOST" ]]; then
  run ssh "$HOST" "mkdir -p $(q "$REMOTE_DIR")"
  run rsync -az --delete --exclude=.git --exclude=venv --exclude=.venv --exclude=results \
      --exclude=runs --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis \
      "$REPO/" "$HOST:$REMOTE_DIR/"
fi

if [[ $INSTALL == 1 ]]; then
  on_host "$(q "$PY") -m pip install -q -r requirements.txt && $(q "$PY") -m pip install -q -U $(q "jax[cuda12]==$JAX_VERSION") && $(q "$PY") -m pip install -q --no-deps -e ."
fi

ENV_PREFIX=""
[[ -n "$GPUS" ]] && ENV_PREFIX="CUDA_VISIBLE_DEVICES=$(q "$GPUS") "
on_host "${ENV_PREFIX}$(q "$PY") -c 'import jax; print(jax.device_count(), \"devices:\", jax.devices())' && ${ENV_PREFIX}$(q "$PY") -m tsgen_jax.main $(q "--config=$CONFIG" "--workdir=$WORKDIR" ${OVERRIDES[@]+"${OVERRIDES[@]}"})"

if [[ -n "$HOST" ]]; then
  run mkdir -p "$LOCAL_DIR"
  case "$WORKDIR" in /*) SRC="$WORKDIR" ;; *) SRC="$REMOTE_DIR/$WORKDIR" ;; esac
  run rsync -az "$HOST:$SRC/" "$LOCAL_DIR/"
  [[ $DRY_RUN == 1 ]] || echo "results in $LOCAL_DIR"
fi
