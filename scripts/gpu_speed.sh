#!/usr/bin/env bash
# Inference speed of the segmenting commands on a lent GPU, file to written outputs (model loading apart):
# TASKS="map qc" or TASKS="cine" (or all three), each the benchmark that times it on the CPU, with --device cuda;
# TASKS="map-batch" times `cardiacai batch --task map --workers N` (N in $WORKERS) over 34 map files of 3 slices.
#
# Why two calls: one device call carries at most 64 MiB, and SimpleITK (the I/O of every command) is a 53 MB wheel;
# the cine models alone are 44 MB. So the first call installs SimpleITK (carried xz-compressed, 28 MB) into /tmp/site
# with the map and QC models, and the second, on the same warm machine, carries the cine models and reuses /tmp/site.
#
# Staged here first (ignored folders; scripts/stage_gpu_speed.py): .whl/ (MONAI), .whl_io/ (SimpleITK as a tar.xz
# of its installed package, nibabel, slicerio, pynrrd wheels), work_data/gpu/speed/ (three ACDC test patients, three
# mapping validation cases), work_data/gpu/models_mq/ (map_myocardium + QC) and work_data/gpu/models_cine/
# (cine + QC). The tracked weights must be out of the working tree during the calls (the tree alone would be 65 MB).
# Results: $OUT/speed_<task>.md. The runbook, with the order of the calls and their carry lists: docs/gpu_sessions.md.
set -uo pipefail
OUT=${OUT:?set OUT to the results folder}
TASKS=${TASKS:-"map qc"}
MODELS=${MODELS:?set MODELS to the registry folder of the models}
DEVICE=${DEVICE:-cuda}
SPEED=${SPEED:-work_data/gpu/speed}
export PYTHONUNBUFFERED=1 CARDIACAI_MODELS="$MODELS"
if ! python3 -c "import SimpleITK, monai, nibabel, slicerio" 2>/dev/null; then
  if [ -d /tmp/site/SimpleITK ]; then
    export PYTHONPATH=/tmp/site
  elif [ -f .whl_io/simpleitk.tar.xz ]; then
    mkdir -p /tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      .whl_io/*.whl || exit 1
    tar xJf .whl_io/simpleitk.tar.xz -C /tmp/site || exit 1
    export PYTHONPATH=/tmp/site
  else
    echo "SimpleITK is neither installed nor carried (.whl_io/): the machine is a fresh one; see the header"; exit 3
  fi
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/CardiacAI"
python3 -c "import torch, monai, SimpleITK, numpy, cv2, skimage, scipy; print('torch', torch.__version__, 'monai',
monai.__version__, 'SimpleITK', SimpleITK.Version_VersionString(), 'numpy', numpy.__version__, 'cuda',
torch.cuda.is_available() and torch.cuda.get_device_name(0))" || exit 1
nproc; grep -m1 "model name" /proc/cpuinfo
for task in $TASKS; do
  case $task in
    cine) python3 benchmarks/cine_speed.py --data "$SPEED/acdc" --models "$MODELS" --device "$DEVICE" --limit 3 \
            --repeats 5 --threads 4 ;;
    map) python3 benchmarks/mapping_segmentation.py --dataset "$SPEED/mapping" --models "$MODELS" --device "$DEVICE" \
           --speed-only --speed-slices 100 --speed-workers ${SPEED_WORKERS:-4 8 12} ;;
    qc) python3 benchmarks/qc_speed.py --data "$SPEED/acdc" --qc-models "$MODELS" --device "$DEVICE" --limit 3 \
          --threads 4 ;;
    map-batch) python3 -c "import sys; sys.path.insert(0, 'scripts'); from pathlib import Path; \
from stage_gpu_speed import write_map_batch; write_map_batch(Path('$SPEED/mapping/validation'), Path('/tmp/map_batch'))"
               for workers in ${WORKERS:-1 4 8}; do  # 34 files x 3 slices = 102 map slices, whole command + QC
                 rm -rf /tmp/map_batch_out; start=$(date +%s.%N)
                 python3 -m cardiac_ai batch /tmp/map_batch --task map --kind t1 --out /tmp/map_batch_out \
                   --workers "$workers" --device "$DEVICE" --models-dir "$MODELS" -q
                 echo "| $workers | $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s |" \
                      "$(grep -c ',ok,' /tmp/map_batch_out/summary.csv) cases ok |"
               done ;;
    *) echo "unknown task $task"; continue ;;
  esac > "$OUT/speed_$task.md" 2> "$OUT/speed_$task.log"
  echo "== $task (exit $?)"; cat "$OUT/speed_$task.md"; tail -n 3 "$OUT/speed_$task.log"
done
true
