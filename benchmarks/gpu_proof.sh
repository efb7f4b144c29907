#!/usr/bin/env bash
# The GPU proof on the device machine (issue 20), for one `run` call with carry [".gpu-wheels"]
# (made here by `bash benchmarks/fetch_gpu_wheels.sh`):
#
#     bash benchmarks/gpu_proof.sh [both|smoke|full] [bench_gpu_proof.py options for the full run]
#
# both (default): the smoke run (tiny shapes on the GPU, phi2's compiled; about a minute,
# at most SMOKE_BUDGET_S=85) into /tmp/gpu-proof-smoke, packed as $OUT/smoke.tgz; then,
# only if the smoke run passed, the full run (phi-2 and ~1B) into $OUT, with --budget-s
# what is left of TOTAL_BUDGET_S=560 (at most 480; a --budget-s given here wins). A compile
# that failed (or was too slow to finish) in the smoke run turns compile off for the full
# one. Everything printed also goes to $OUT/log.txt. What comes back from $OUT: env.json,
# matmul.json, phi2.json, phi1b.json, report.md, log.txt, smoke.tgz (7 of the 8 files).
# The machine has no pydantic and no network: the carried wheels go to /tmp, allllm
# runs from src/ (PYTHONPATH), nothing is installed into the image.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-both}
[ $# -gt 0 ] && shift
case "$MODE" in both | smoke | full) ;; *)
    echo "usage: $0 [both|smoke|full] [options for the full run]" >&2
    exit 2
    ;;
esac
OUTDIR=${OUT:-benchmarks/out/gpu-proof}
mkdir -p "$OUTDIR"
exec > >(tee -a "$OUTDIR/log.txt") 2>&1
PY=${PYTHON:-python3}
if ! "$PY" -c "import pydantic" 2>/dev/null; then
    SITE=/tmp/allllm-gpu-site
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .gpu-wheels/*.whl; then
        echo "gpu_proof: installing the carried wheels failed (carry .gpu-wheels, made by" \
            "bash benchmarks/fetch_gpu_wheels.sh)"
        exit 3
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" -c "import allllm, pydantic, torch; print('allllm', allllm.__version__, '| pydantic', \
pydantic.VERSION, '| torch', torch.__version__, '| cuda', torch.version.cuda, \
torch.cuda.is_available())" || exit 3
# the workspace (a phi-2 checkpoint is ~33 GB) on whichever of /tmp and here has more room
WS_PARENT=$("$PY" -c "import os, shutil, tempfile
print(max([tempfile.gettempdir(), os.getcwd()], key=lambda p: shutil.disk_usage(p).free))")
df -h "$WS_PARENT" /tmp . 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null

FULL_EXTRA=()
if [ "$MODE" != full ]; then
    SMOKE_DIR=/tmp/gpu-proof-smoke
    rm -rf "$SMOKE_DIR"
    "$PY" benchmarks/bench_gpu_proof.py --smoke --out "$SMOKE_DIR" \
        --workdir "$WS_PARENT/gpu-proof-smoke-ws" --budget-s "${SMOKE_BUDGET_S:-85}" \
        --set phi2.compile=true phi2.max_s=60 phi2.train_s=45 phi2.steady_s=2
    smoke_rc=$?
    rm -rf "$WS_PARENT/gpu-proof-smoke-ws"
    tar czf "$OUTDIR/smoke.tgz" -C /tmp gpu-proof-smoke
    verdict=$("$PY" benchmarks/bench_gpu_proof.py --verdict "$SMOKE_DIR")
    echo "gpu_proof: smoke run rc $smoke_rc, verdict ${verdict:-none}"
    case "$verdict" in
    ok) ;;
    eager)
        echo "gpu_proof: compile failed or was too slow in the smoke run: the full run is eager"
        FULL_EXTRA=(--no-compile)
        ;;
    *)
        echo "gpu_proof: the smoke run failed: no full run (see smoke.tgz and log.txt)"
        exit 1
        ;;
    esac
fi
[ "$MODE" = smoke ] && exit 0
FULL_BUDGET=$((${TOTAL_BUDGET_S:-560} - SECONDS - 10))
[ "$FULL_BUDGET" -gt 480 ] && FULL_BUDGET=480
echo "gpu_proof: full run, --budget-s $FULL_BUDGET (elapsed ${SECONDS} s)"
"$PY" benchmarks/bench_gpu_proof.py --out "$OUTDIR" --workdir "$WS_PARENT/gpu-proof-ws" \
    --budget-s "$FULL_BUDGET" ${FULL_EXTRA[@]+"${FULL_EXTRA[@]}"} "$@"
rc=$?
rm -rf "$WS_PARENT/gpu-proof-ws"
exit "$rc"
