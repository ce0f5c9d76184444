#!/usr/bin/env bash
# GPU readiness in one command, for a machine with CUDA GPUs (run as is; prints one table):
#
#   bash bench/gpu_check.sh            # after `bash scripts/install.sh --dev`
#
# 1. the test suite's GPU-marked tests (`pytest -m gpu`);
# 2. bench/time_to_forget.py --shape 1b (the default unlearning run on a 1B-class model);
# 3. a 2-process data-parallel `unlearn` of the demo facts (accelerate launch; on GPUs with
#    2 or more, else on this CPU with gloo) and its one-process twin, with their weights compared;
# 4. TOFU forget10 with a 1B-class model, when one is in the Hugging Face cache
#    (MEOW_GPU_CHECK_TOFU_MODEL, default meta-llama/Llama-3.2-1B-Instruct).
# Without a GPU the GPU-only rows say "skipped: no GPU" and the rest runs here.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=$(mktemp -d -t meow-gpu-check-XXXX)
GPUS=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
DEVICE=$([ "$GPUS" -gt 0 ] && echo cuda || echo cpu)
ROWS=()

row() { ROWS+=("$1|$2|$3"); }

check() {  # check NAME COMMAND...: run it, log to $OUT/NAME.log, add a row
  local name=$1 start=$SECONDS status
  shift
  if "$@" > "$OUT/$name.log" 2>&1; then status="ok"; else status="FAILED (log: $OUT/$name.log)"; fi
  row "$name" "$status" "$((SECONDS - start)) s"
}

check gpu-tests $PY -m pytest -q -m gpu -p no:cacheprovider tests

if [ "$GPUS" -gt 0 ]; then
  check time-to-forget-1b $PY bench/time_to_forget.py --shape 1b --no-write
else
  row time-to-forget-1b "skipped: no GPU" "-"
fi

FACTS=assets/facts/demo_forget.jsonl
# (--method meow: the default, meow_patch, runs in one process; two would give way to meow and compare two methods)
COMMON=(--method meow --forget "$FACTS" --device "$DEVICE" --epochs 1 --no-early-stop --seed 0)
check one-process $PY -m meow_app unlearn --out "$OUT/one" "${COMMON[@]}"
if [ "$GPUS" -ge 2 ] || [ "$GPUS" -eq 0 ]; then
  check two-processes $PY -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
    --mixed_precision no --dynamo_backend no -m meow_app unlearn --out "$OUT/two" "${COMMON[@]}"
  check same-weights $PY - "$OUT/one/model" "$OUT/two/model" <<'EOF'
import sys
from safetensors.torch import load_file
from meow_app import models
a, b = (load_file(f"{d}/model.safetensors") for d in sys.argv[1:3])
original = load_file(str(models.embedded_checkpoint() / "model.safetensors"))
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
moved = max((a[k].float() - original[k].float()).abs().max().item() for k in a if k in original)
print(f"max weight difference {diff:.2e}; training moved the weights by up to {moved:.2e}")
sys.exit(0 if diff < 0.25 * moved else 1)  # bf16 on GPUs rounds more than fp32: a share of the move
EOF
else
  row two-processes "skipped: one GPU (needs 2)" "-"
fi

TOFU_MODEL=${MEOW_GPU_CHECK_TOFU_MODEL:-meta-llama/Llama-3.2-1B-Instruct}
CACHED=$($PY - "$TOFU_MODEL" <<'EOF'
import sys
from huggingface_hub import scan_cache_dir
try:
    print(any(r.repo_id == sys.argv[1] for r in scan_cache_dir().repos))
except Exception:
    print(False)
EOF
)
if [ "$GPUS" -eq 0 ]; then
  row tofu-forget10 "skipped: no GPU" "-"
elif [ "$CACHED" != "True" ]; then
  row tofu-forget10 "skipped: $TOFU_MODEL is not in the Hugging Face cache" "-"
else
  check tofu-forget10 env HF_HUB_OFFLINE=1 $PY -m meow_app tofu --model "$TOFU_MODEL" --split forget10 --out "$OUT/tofu"
fi

echo
echo "GPU check ($GPUS GPU(s), device $DEVICE; logs in $OUT)"
printf '%-20s %-60s %s\n' check result time
for r in "${ROWS[@]}"; do
  IFS='|' read -r name status took <<< "$r"
  printf '%-20s %-60s %s\n' "$name" "$status" "$took"
done
for r in "${ROWS[@]}"; do [[ "$r" == *"|FAILED"* ]] && exit 1; done
exit 0
