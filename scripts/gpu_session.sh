#!/usr/bin/env bash
# One lent-GPU session: every cine model (train_cine_gpu.py) and the EMIDEC fibrosis models that need no DenseCRF
# (myocardium U-Net, slice and stack classifiers, pixel U-Net), in parallel, within a fixed wall-clock budget.
#
# Needs, beside the repository: .whl/ (MONAI wheel), work_data/cine/ (train_acdc_cine.py --stage prepare) and
# work_data/fibrosis/prepared/ (train_emidec_fibrosis.py --stage split prepare). Results go to $OUT (at most
# 8 files): main_a.pt, main_b.pt, sampler4.pt, sampler20.pt, aux.pt, cine.log, fibrosis.tar.gz.
# Then, here:  python scripts/train_acdc_cine.py --stage import-gpu --gpu-results DIR --work work_data/cine
#              tar xzf DIR/fibrosis.tar.gz -C work_data/fibrosis   (then the pseudo, weak_unet, register stages)
# Smoke run on a CPU: OUT=/tmp/out CINE_ARGS="--epochs 1 --limit 40 --budget 60" FIB_ARGS="--tiny --max-patients 3"
#                     FIB_EPOCHS="1 1 1 1" bash scripts/gpu_session.sh
set -uo pipefail
OUT=${OUT:?set OUT to the results folder}
mkdir -p "$OUT"
BUDGET=${BUDGET:-400}
CINE_ARGS=${CINE_ARGS:-"--budget $BUDGET"}
FIB_ARGS=${FIB_ARGS:-""}
read -r E_MYO E_CLS E_STACK E_UNET <<< "${FIB_EPOCHS:-120 120 40 120}"
FIB_TIMEOUT=${FIB_TIMEOUT:-$((BUDGET + 50))}
export PYTHONUNBUFFERED=1
if ! python3 -c "import monai" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/CardiacAI"
python3 -c "import torch, monai, numpy; print('torch', torch.__version__, 'monai', monai.__version__, 'numpy',
numpy.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))" || exit 1
DEVICE=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")

(
  timeout "$FIB_TIMEOUT" python3 scripts/train_emidec_fibrosis.py --work work_data/fibrosis --device "$DEVICE" \
    --stage myocardium classifier_slice classifier_stack pixel_unet --num-workers 6 $FIB_ARGS \
    --epochs-myocardium "$E_MYO" --epochs-classifier "$E_CLS" --epochs-stack "$E_STACK" --epochs-unet "$E_UNET" \
    > work_data/fibrosis/train.log 2>&1
  echo "fibrosis exit $?" >> work_data/fibrosis/train.log
  python3 scripts/pack_runs.py work_data/fibrosis "$OUT/fibrosis.tar.gz" --include predicted timings.json train.log
) &
FIB_PID=$!

python3 scripts/train_cine_gpu.py --data work_data/cine --out "$OUT" $CINE_ARGS 2>&1 | tee "$OUT/cine.log"
wait $FIB_PID
tail -n 25 work_data/fibrosis/train.log
ls -la "$OUT"
# the tool brings back at most 8 files and 64 MB in all: say so here rather than lose a file silently
total_kb=$(du -sk "$OUT" | cut -f1)
[ "$total_kb" -gt 62000 ] && echo "WARNING: $OUT holds ${total_kb} kB; over 64 MB some files will not come back"
[ "$(ls "$OUT" | wc -l)" -gt 8 ] && echo "WARNING: more than 8 files in $OUT"
find "$OUT" -type f -size +16M -exec echo "WARNING: {} is over the 16 MB a returned file may have" \;
true
