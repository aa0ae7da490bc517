#!/usr/bin/env bash
# The benchmark suite on a lent GPU machine, as one prepared call (issue #8's GPU column).
#
# The lent NVIDIA H200 image has jax (CUDA), flax, optax, orbax-checkpoint, chex and numpy, but
# not ml_collections, and nothing can be fetched there. So, here, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
# then one call of the device tool's `run`:
#   command: bash benchmarks/device_run.sh     carry: [".whl"]     timeout_s: 400
# It runs `python -m benchmarks.run` for at most $BUDGET_S seconds (default 285). The target
# rows and their loop rows come first, and results are rewritten after each group of rows,
# so a run cut short keeps what it measured. Results: $OUT/gpu.json (benchmarks.run's
# format) and $OUT/gpu.log. Back here:
#   cp FILES_AT/gpu.json benchmarks/machines/nvidia_h200.json && python -m benchmarks.report
#
# Environment: OUT (default /tmp/device_run), BUDGET_S, ROWS (a benchmarks.run --only list;
# default all rows), PYTHON (default python3). Without a GPU it runs on the CPU, which is how
# it was checked here: it has not yet run on a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/device_run}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/device_run_site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/device_run_site:${PYTHONPATH:-}"
fi
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
{
  echo "== $(date -u +%FT%TZ) $(uname -m)"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  "$py" -c "import jax; print('jax', jax.__version__, jax.devices())"
} 2>&1 | tee "$out/gpu.log"
only=()
[ -n "${ROWS:-}" ] && only=(--only "$ROWS")
timeout "${BUDGET_S:-285}" "$py" -m benchmarks.run "${only[@]}" --out "$out/gpu.json" 2>&1 \
  | grep -v "^WARNING\|Warn" | tee -a "$out/gpu.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "stopped at the ${BUDGET_S:-285} s budget; gpu.json keeps the rows done" \
  | tee -a "$out/gpu.log"
[ -s "$out/gpu.json" ] || exit 1
exit 0
