#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (issue 20: its image has torch 2.11 on Python 3.12
# but no pydantic, and no network there) into .gpu-wheels/ (gitignored), to be carried:
#
#     bash benchmarks/fetch_gpu_wheels.sh            # here, where pip reaches the registry
#     run(carry=[".gpu-wheels"], command="bash benchmarks/gpu_proof.sh ...")
#
# The versions are this venv's (tested with), else the newest; --no-deps, so every package
# the image lacks is named here. typing-extensions too: pydantic needs a recent one and the
# image's version is not known (a newer one is backward compatible).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu-wheels}
PY=${PYTHON:-python3}
pinned() {  # NAME -> NAME==VERSION when this interpreter has it installed, else NAME
    local v
    v=$("$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1" 2>/dev/null || true)
    if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}
PKGS=()
for name in pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
    PKGS+=("$(pinned "$name")")
done
rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" "${PKGS[@]}"
ls -l "$DEST"
du -sh "$DEST"
