#!/usr/bin/env bash
# The whole ERA5 model chain (README "How the models are made") on one machine, each step timed:
# training, basis, fine-tuning, coders, then the encoder's ARM rate, the previous-field
# predictor and the stored poles. On a GPU (cuda when present) it takes minutes; on this
# 2-core CPU about an hour. `gpu_throughput.py --grid-model <final> --variable VAR` times the result.
#
#   benchmarks/gpu_chain.sh VAR [OUT]        # VAR: t2m | msl | u10 | v10; OUT: benchmarks/results
#
# Rate weights (fine-tuning, coders) come from FT_WEIGHTS / CODER_WEIGHTS (defaults: the msl
# recipe of session 24 shifted to u10's range). Writes OUT/chain_VAR.log and the models under
# OUT/models/ (file name = SHA-256); the last line names the final model.
set -euo pipefail
var=${1:?usage: gpu_chain.sh VAR [OUT]}
out=${2:-benchmarks/results}
py=${PYTHON:-python3}
ft_weights=${FT_WEIGHTS:-0.1 0.3 1 3 10}
coder_weights=${CODER_WEIGHTS:-0.1 0.3 1 3}
steps=${STEPS:-4000}
encode_steps=${ENCODE_STEPS:-400}   # (STEPS, ENCODE_STEPS, ARM_STEPS small: a smoke test)
arm_steps=${ARM_STEPS:-3000}
mkdir -p "$out"
log="$out/chain_$var.log"
: > "$log"

elapsed() { $py -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$EPOCHREALTIME"; }

step() {  # step NAME ARGS... : run grid_train.py, print its time, echo the model path it saved
    local name=$1; shift
    local t0=$EPOCHREALTIME
    $py benchmarks/grid_train.py --dataset "era5:$var" --out "$out" "$@" >> "$log" 2>&1
    echo "$name $(elapsed "$t0") s  $(tail -1 "$log")" | tee -a "$out/chain_$var.times" >&2
    tail -1 "$log"
}

: > "$out/chain_$var.times"
start=$EPOCHREALTIME
m=$(step train --steps "$steps" --ste-fraction 0 --sga-fraction 0.3 --encode-lr 0.08 --encode-steps "$encode_steps")
m=$(step basis --basis 16 --from-model "$m")
# shellcheck disable=SC2086
m=$(step finetune --from-model "$m" --basis-finetune-steps "$steps" --lr 1e-3 --ste-fraction 0 \
    --sga-fraction 0.3 --cross-fit-gaps 2 6 --rate-weights $ft_weights)
# shellcheck disable=SC2086
m=$(step coders --from-model "$m" --table-sets $coder_weights --cross-fit-gaps 6 --arm --arm-chunk-items 7 \
    --arm-steps "$arm_steps")
m=$(step final --from-model "$m" --encode-rate arm --predict-previous --constant-rows)
echo "chain $(elapsed "$start") s" | tee -a "$out/chain_$var.times" >&2
echo "$m"
