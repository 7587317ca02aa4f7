#!/usr/bin/env bash
# The prepared GPU run in one command (see bench/README.md, "GPU run"):
#
#   bash bench/gpu_run.sh [OUTDIR] [gpu_run.py options]     # OUTDIR defaults to $OUT
#   bash bench/gpu_run.sh /tmp/gpu-dry --dry-run              # the same on the CPU, ~1 min
#
# Runs bench/gpu_run.py under a time budget ($GPU_RUN_BUDGET seconds, default 450; 60 for
# --dry-run) with a hard `timeout` 30 s past it as the last guard (the script's own
# watchdog fires 20 s past it), then always writes the report from whatever results.json
# holds. Everything lands in OUTDIR: results.json, report.md, speedup.png, run.log,
# nvidia-smi.txt. The CIFAR-10 tarball is read from .cache/cifar10-jpg.tar.gz when it is
# there (the copy that travels to the GPU machine), else from ../shared/data.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
outdir="${OUT:-}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then outdir="$1"; shift; fi
if [ -z "$outdir" ]; then echo "usage: bash bench/gpu_run.sh OUTDIR [options] (or set \$OUT)" >&2; exit 2; fi
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
cd "$here" || exit 2

budget="${GPU_RUN_BUDGET:-450}"
for arg in "$@"; do [ "$arg" = "--dry-run" ] && budget="${GPU_RUN_BUDGET:-60}"; done
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export FXPRUNE_CACHE="${FXPRUNE_CACHE:-${TMPDIR:-/tmp}/fxprune-cache}"
py="${PYTHON:-python3}"
cifar=()
[ -f .cache/cifar10-jpg.tar.gz ] && cifar=(--cifar .cache/cifar10-jpg.tar.gz)

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi >"$outdir/nvidia-smi.txt" 2>&1 || true
else
  echo "nvidia-smi not found" >"$outdir/nvidia-smi.txt"
fi

timeout -k 10 "$((budget + 30))" "$py" bench/gpu_run.py "$outdir" --budget "$budget" --grace 20 \
  "${cifar[@]}" "$@" 2>&1 | tee "$outdir/run.log"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && echo "gpu_run.py exited with $rc (124/137: killed by timeout; 3: watchdog)" | tee -a "$outdir/run.log"
"$py" bench/gpu_run.py --report "$outdir" 2>&1 | tee -a "$outdir/run.log"
exit "$rc"
