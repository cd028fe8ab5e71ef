#!/usr/bin/env bash
# GPU check: prepare -> train -> evaluate -> predict (10,000 images) under KERAS_BACKEND=jax, each stage
# timed, then a breakdown of where predict's time goes (benchmarks/gpu_profile.py). Needs no TensorFlow.
#
#   bash benchmarks/gpu_check.sh DATA REAL_JPEGS WEIGHTS [WHEELS]
#
# DATA        labelled folders (e.g. the xu-liver images: Benign/ Malignant/ Normal/), any size
# REAL_JPEGS  a folder of real-size JPEG frames; predict reads 10,000 links to them
# WEIGHTS     mobilenet_v2_1.0_160_no_top.h5 (the offline ImageNet backbone)
# WHEELS      optional folder of wheels to install first (keras, namex, optree, imagehash, PyWavelets)
#
# N_PREDICT (default 10000) sets how many images predict reads.
# Targets on one H100: the training protocol <= 10 s, evaluate <= 5 s, predict >= 3,000 images/s.
set -euo pipefail
DATA=$1 REAL=$2 WEIGHTS=$3 WHEELS=${4:-}
WORK=${WORK:-$(mktemp -d)}
OUT=${OUT:-$WORK}
cd "$(dirname "$0")/.."
if [ -n "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export KERAS_HOME="$WORK/keras"
export LIVERSCAN_JAX_CACHE="$WORK/jax-cache"  # JAX's compiled programs, reused by every later stage
mkdir -p "$KERAS_HOME/models"
cp "$WEIGHTS" "$KERAS_HOME/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), '| keras', keras.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

stage() {  # stage NAME COMMAND...: run and print its wall time
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  echo "TIME $name $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$t0" "$(date +%s.%N)")"
}

stage prepare python3 -m liverscan prepare "$DATA" --out "$WORK/prep" -q
stage train-linear-single-split python3 -m liverscan train --data "$WORK/prep" --out "$WORK/run" -q \
  --set train.export_runtime=none
stage train-mlp-cached python3 -m liverscan train --data "$WORK/prep" --out "$WORK/run-mlp" --head mlp -q \
  --set train.export_runtime=none
stage train-cv5-linear python3 -m liverscan train --data "$WORK/prep" --out "$WORK/run-cv" --folds 5 -q \
  --set train.export_runtime=none
stage evaluate python3 -m liverscan evaluate "$WORK/run" -q

mkdir -p "$WORK/many"
python3 - "$REAL" "$WORK/many" "${N_PREDICT:-10000}" <<'EOF'
import os, sys
from pathlib import Path
src = sorted(p for p in Path(sys.argv[1]).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
for i in range(int(sys.argv[3])):
    os.symlink(src[i % len(src)].resolve(), Path(sys.argv[2]) / f"img{i:05d}.jpg")
EOF
for workers in 2 16; do
  stage "predict-${N_PREDICT:-10000}-workers-$workers" python3 -m liverscan predict "$WORK/many" -m "$WORK/run" -q \
    --batch-size 256 --workers "$workers" -o "$WORK/pred-$workers.csv"
done
python3 benchmarks/gpu_profile.py "$WORK/run" "$WORK/many" | tee "$OUT/gpu_profile.txt"
