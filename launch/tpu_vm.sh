#!/usr/bin/env bash
# Trains on a Cloud TPU VM (one host or a multi-host pod slice) with gcloud.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] [--] [--config.KEY=VALUE ...]

Creates (or reuses) a Cloud TPU VM, copies this repository to every worker, installs it with
jax[tpu], runs `python -m tsgen_jax.main` on all workers at once (TSGEN_DISTRIBUTED=1: one
JAX process per worker, joined by jax.distributed) and copies the workdir back from worker 0.

Options:
  --name NAME              TPU VM name (default tsgen-tpu)
  --zone ZONE              zone (default us-central2-b)
  --project PROJECT        GCP project (default: gcloud's configured one)
  --accelerator-type TYPE  e.g. v4-8 (1 worker), v4-32 (4 workers), v5litepod-8, v6e-8
                           (default v4-8)
  --version VERSION        TPU software version / image (default tpu-ubuntu2204-base)
  --spot                   create a Spot VM (preemptible; SIGTERM saves a checkpoint and
                           rerunning this script resumes)
  --config FILE            config file, relative to the repository (default configs/vqvae.py)
  --workdir DIR            run directory on the workers (default tsgen_runs/run, relative to
                           the remote home). A multi-worker slice needs a directory all
                           workers share: use --bucket
  --bucket BUCKET          mount gs://BUCKET with gcsfuse at /gcs/BUCKET on every worker and
                           default the workdir to /gcs/BUCKET/tsgen_runs/run
  --local-dir DIR          where the workdir is copied back to (default runs/<name>)
  --jax-version V          jax[tpu] version to install (default 0.10.2)
  --steps LIST             comma-separated subset of create,copy,install,run,fetch,delete
                           (default create,copy,install,run,fetch; delete removes the VM)
  --dry-run                print every command that would run, run nothing
  -h, --help               this help

Arguments after the options are passed to tsgen_jax.main as config overrides, e.g.
  launch/tpu_vm.sh --accelerator-type v4-32 --bucket my-bucket -- \
      --config.run=stage1,stage2 --config.stage1.batch_size=512
EOF
}

NAME=tsgen-tpu
ZONE=us-central2-b
PROJECT=""
ACCEL=v4-8
VERSION=tpu-ubuntu2204-base
SPOT=0
CONFIG=configs/vqvae.py
WORKDIR=""
BUCKET=""
LOCAL_DIR=""
JAX_VERSION=0.10.2
STEPS=create,copy,install,run,fetch
DRY_RUN=0
OVERRIDES=()

need() { [[ $# -ge 2 && -n "$2" ]] || { echo "error: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need "$@"; NAME="$2"; shift 2 ;;
    --zone) need "$@"; ZONE="$2"; shift 2 ;;
    --project) need "$@"; PROJECT="$2"; shift 2 ;;
    --accelerator-type) need "$@"; ACCEL="$2"; shift 2 ;;
    --version) need "$@"; VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --config) need "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need "$@"; WORKDIR="$2"; shift 2 ;;
    --bucket) need "$@"; BUCKET="${2#gs://}"; shift 2 ;;
    --local-dir) need "$@"; LOCAL_DIR="$2"; shift 2 ;;
    --jax-version) need "$@"; JAX_VERSION="$2"; shift 2 ;;
    --steps) need "$@"; STEPS="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    --config.*) OVERRIDES+=("$1"); shift ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for s in ${STEPS//,/ }; do
  case "$s" in create|copy|install|run|fetch|delete) ;;
    *) echo "error: unknown step '$s' in --steps" >&2; exit 2 ;; esac
done
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_REPO=tsgen_jax  # relative to the remote home
if [[ -z "$WORKDIR" ]]; then
  WORKDIR=tsgen_runs/run
  [[ -n "$BUCKET" ]] && WORKDIR="/gcs/$BUCKET/tsgen_runs/run"
fi
LOCAL_DIR="${LOCAL_DIR:-$REPO/runs/$NAME}"
CHIPS="${ACCEL##*-}"
if [[ "$CHIPS" =~ ^[0-9]+$ && "$CHIPS" -gt 8 && -z "$BUCKET" && "$WORKDIR" != /gcs/* ]]; then
  echo "warning: $ACCEL has several workers; its checkpoints need a --workdir every worker" \
       "shares (--bucket BUCKET), else each worker holds only its own part" >&2
fi
TARBALL="${TMPDIR:-/tmp}/tsgen_jax_src.tgz"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

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
on_workers() {  # $1: worker(s), $2: remote shell command
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker="$1" --command="$2"
}

if has_step create; then
  DESCRIBE=("${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" "--format=value(state)")
  CREATE=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCEL"
          --version="$VERSION")
  [[ $SPOT == 1 ]] && CREATE+=(--spot)
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $(q "${DESCRIBE[@]}") || $(q "${CREATE[@]}")"
  elif state=$("${DESCRIBE[@]}" 2>/dev/null); then
    echo "+ $(q "${DESCRIBE[@]}")"
    echo "reusing TPU VM $NAME ($state)"
  else
    run "${CREATE[@]}"
  fi
fi

if has_step copy; then
  # The working tree without VCS data, caches and local results.
  run tar -czf "$TARBALL" -C "$REPO" --exclude=.git --exclude=venv --exclude=.venv \
      --exclude=results --exclude=runs --exclude=__pycache__ --exclude=.pytest_cache \
      --exclude=.hypothesis .
  run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:tsgen_jax_src.tgz" "${WHERE[@]}" --worker=all
  on_workers all "rm -rf $REMOTE_REPO && mkdir -p $REMOTE_REPO && tar -xzf tsgen_jax_src.tgz -C $REMOTE_REPO"
fi

if has_step install; then
  INSTALL="cd $REMOTE_REPO && python3 -m pip install -q -r requirements.txt"
  INSTALL+=" && python3 -m pip install -q -U $(q "jax[tpu]==$JAX_VERSION")"
  INSTALL+=" && python3 -m pip install -q --no-deps -e ."
  if [[ -n "$BUCKET" ]]; then
    # gcsfuse: orbax commits a checkpoint by renaming its folder, hence --rename-dir-limit.
    INSTALL+=" && (command -v gcsfuse >/dev/null || (export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s)"
    INSTALL+=" && echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list"
    INSTALL+=" && curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null"
    INSTALL+=" && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse))"
    INSTALL+=" && sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET"
    INSTALL+=" && (mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $BUCKET /gcs/$BUCKET)"
  fi
  on_workers all "$INSTALL"
fi

if has_step run; then
  # From the remote home, so a relative --workdir is where `fetch` looks for it.
  [[ "$CONFIG" == /* ]] || CONFIG="$REMOTE_REPO/$CONFIG"
  MAIN="TSGEN_DISTRIBUTED=1 python3 -m tsgen_jax.main $(q "--config=$CONFIG" "--workdir=$WORKDIR" ${OVERRIDES[@]+"${OVERRIDES[@]}"})"
  on_workers all "$MAIN"
fi

if has_step fetch; then
  run mkdir -p "$LOCAL_DIR"
  # Process 0 writes the logs, results and plots; checkpoints are complete only on shared
  # storage (--bucket), where they stay.
  run "${GCLOUD[@]}" scp --recurse "$NAME:$WORKDIR" "$LOCAL_DIR" "${WHERE[@]}" --worker=0
  [[ $DRY_RUN == 1 ]] || echo "results in $LOCAL_DIR"
fi

if has_step delete; then
  run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
fi
