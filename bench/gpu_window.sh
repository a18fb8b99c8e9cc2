#!/usr/bin/env bash
# One GPU window: the GPU benchmark (bench/gpu.py) in slices, in priority order, on a machine
# with Python, torch and CUDA but no network. Every figure lands in OUT as soon as it is
# measured (gpu.json, merged per model and stage), so a window cut short still returns what
# finished; window.log holds the whole output.
#
#   bench/gpu_window.sh OUT [SLICE]
#     SLICE 1 (the default): sd15 raw and served, then sdxl raw
#     SLICE 2: sdxl raw and served, then flux raw and served
#   DRY_RUN=1 bench/gpu_window.sh OUT [SLICE]   the same on the CPU at tiny shapes: a test of
#                                               this script, not figures
#
# What the machine lacks comes as wheels in wheelhouse/ (bench/wheelhouse.py builds it from the
# machine's pip list); they are installed into a private folder put first on PYTHONPATH, the
# machine's torch and CUDA used as they are. PYTHON picks the interpreter (python3).
set -uo pipefail

out=${1:?usage: bench/gpu_window.sh OUT [SLICE]}
slice=${2:-1}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec > >(tee -a "$out/window.log") 2>&1
export PYTHONUNBUFFERED=1
began=$SECONDS

say() { echo "[window $((SECONDS - began))s] $*"; }

if compgen -G "wheelhouse/*.whl" > /dev/null; then
  site=${TMPDIR:-/tmp}/darkroom-site
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" wheelhouse/*.whl || { say "the wheelhouse did not install"; exit 1; }
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  say "installed $(ls wheelhouse/*.whl | wc -l) wheels into $site"
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
"$python" -c 'import torch, diffusers, transformers; print("torch", torch.__version__,
  "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
  "| diffusers", diffusers.__version__, "| transformers", transformers.__version__)' \
  || { say "the benchmark's imports fail"; exit 1; }

flags=()
if [[ -n ${DRY_RUN:-} ]]; then
  flags=(--device cpu --tiny)
fi
weights=${TMPDIR:-/tmp}/darkroom-gpu-weights

# bench MODEL LIMIT_S [ARGS...]: one model under a time limit; what it measured stays in gpu.json.
bench() {
  local model=$1 limit_s=$2
  shift 2
  say "$model ${*:-raw and served} (at most ${limit_s} s)"
  timeout --signal=TERM --kill-after=20 "$limit_s" "$python" -m bench.gpu --model "$model" \
    --out "$out/gpu.json" --workdir "$weights/$model" "${flags[@]}" "$@"
  local rc=$?
  say "$model: exit $rc"
  rm -rf "${weights:?}/$model"  # the disk holds one full-size checkpoint at a time
  return 0
}

case $slice in
  1)
    bench sd15 330
    bench sdxl 200 --no-served
    ;;
  2)
    bench sdxl 240
    bench flux 320
    ;;
  *)
    say "no slice $slice"
    exit 2
    ;;
esac
say "done"
