#!/usr/bin/env bash
# One GPU window: the GPU benchmarks (bench/gpu.py, gpu_families.py, previews.py) in slices, in
# priority order, on a machine with Python, torch and CUDA but no network. Every figure lands in
# OUT as soon as it is measured (gpu.json, merged per model and stage; gpu_families.json;
# previews.json), so a window cut short still returns what finished; window.log holds the whole
# output.
#
#   bench/gpu_window.sh OUT [SLICE]
#     SLICE 1 (the default): sd15 raw and served, then sdxl raw
#     SLICE 2: sdxl raw and served, then flux raw and served
#     SLICE 3: every family's production path (bench/gpu_families.py: dtypes, compile, video),
#              then what live previews cost per step at 1024² (bench/previews.py)
#   DRY_RUN=1 bench/gpu_window.sh OUT [SLICE]   the same on the CPU at tiny shapes: a test of
#                                               this script, not figures
#
# What the machine lacks comes as wheels in wheelhouse/ (bench/wheelhouse.py builds it from the
# machine's pip list; slice 3 needs its --for families set, which has PyAV); they are installed into a private folder put first on PYTHONPATH, the
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

gpu_flags=() families_flags=() previews_flags=(--device cuda --side 1024 --runs 3)
if [[ -n ${DRY_RUN:-} ]]; then
  gpu_flags=(--device cpu --tiny) families_flags=(--device cpu --quick --renders 1)
  previews_flags=(--device cpu --side 64 --runs 1)
fi
weights=${TMPDIR:-/tmp}/darkroom-gpu-weights

# step NAME LIMIT_S COMMAND...: one step under a time limit; what it measured stays in OUT.
step() {
  local name=$1 limit_s=$2
  shift 2
  say "$name (at most ${limit_s} s)"
  timeout --signal=TERM --kill-after=20 "$limit_s" "$@"
  say "$name: exit $?"
}

# bench MODEL LIMIT_S [ARGS...]: bench/gpu.py for one model, its figures merged into gpu.json.
bench() {
  local model=$1 limit_s=$2
  shift 2
  step "$model ${*:-raw and served}" "$limit_s" "$python" -m bench.gpu --model "$model" \
    --out "$out/gpu.json" --workdir "$weights/$model" "${gpu_flags[@]}" "$@"
  rm -rf "${weights:?}/$model"  # the disk holds one full-size checkpoint at a time
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
  3)
    step "every family's production path" 400 "$python" -m bench.gpu_families \
      --out "$out/gpu_families.json" "${families_flags[@]}"
    step "live previews at 1024²" 140 "$python" -m bench.previews --routes sd,sdxl,flux \
      --out "$out/previews.json" "${previews_flags[@]}"
    ;;
  *)
    say "no slice $slice"
    exit 2
    ;;
esac
say "done"
