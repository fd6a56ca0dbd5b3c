#!/usr/bin/env bash
# One prepared check for a CUDA machine: at most 8 minutes of steps (GPU_CHECK_BUDGET_S=480), each
# under its own timeout, clipped to what is left of the budget.
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]      (package installed; runs from the repository root)
# Without CUDA it stops at once with one line (exit status 2). Otherwise every step writes its log to
# OUTPUT_DIR (default results/gpu_check/<UTC timestamp>/ in the repository), prints its tail and
# PASS or FAIL; a table of the steps ends the run (also OUTPUT_DIR/summary.txt); the exit status is
# the number of failed steps (a step the budget left no time for counts as failed).
# 1. masks generated on CUDA are bit-identical to CPU ones (same CPU generator seed), all kinds
#    (pytest -k cuda: at least one test must pass and none may be skipped);
# 2. mask throughput on CUDA for every kind/source;
# 3. ViT-B/16 224-px pretraining steps at batch 128 in bf16 for random and every color:
#    images/s, peak memory, color/random ratio, model FLOP utilization;
# 4. a short real run of the pretraining CLI on CUDA (bf16, embedded data, 20 steps) and its summary.json;
# 5. data pipeline: the JPEG paths alone (bytes, decode, files, gpu-decode, dali where installed);
# 6. ViT-B UperNet at 512 px (benchmarks/gpu_segment.py); 7. ViT-B Mask R-CNN at 1024 px (gpu_detect.py);
# 8. the real pretraining loop vs the bare step, ViT-B/16 batch 256 bf16, eager and --compile: img/s,
#    real/bare, MFU; peak memory at batch 256 and 512 (benchmarks/loop.py);
# 9. the real loop on JPEGs (ViT-B/16 batch 256 bf16): files, gpu-decode and, where installed, dali,
#    beside the bare step (benchmarks/loop.py --jpeg-pipelines; step 5's synthetic folder).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
# the benchmarks import colormae from this checkout even where the package is not installed (GPU images)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}  # the tests pass the interpreter that runs them (PYTHON=sys.executable)
BUDGET=${GPU_CHECK_BUDGET_S:-480}

# CUDA first: one line and a non-zero status when there is none (stderr of the probe is dropped so
# that no warning or traceback reaches the terminal).
reason=$("$PY" - 2>/dev/null <<'EOF'
try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"torch does not import ({type(e).__name__}: {e})")
    raise SystemExit(1)
if not torch.cuda.is_available():
    print(f"CUDA is not available (torch {torch.__version__}, torch.cuda.is_available() is False)")
    raise SystemExit(1)
EOF
)
probe=$?
if [ "$probe" -ne 0 ]; then
  echo "gpu_check: ${reason:-$PY could not check for CUDA (exit status $probe)}; nothing was run: run this on a machine with an NVIDIA GPU." >&2
  exit 2
fi

out=${1:-results/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
echo "gpu_check: writing to $out/"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  echo "git $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
} 2>&1 | tee "$out/environment.txt"

results=()
failed=0
start=$SECONDS

# record NAME STATUS: one row of the closing table; STATUS starts with PASS, FAIL or NOT RUN
record() {
  results+=("$(printf '%-38s %s' "$1" "$2")")
  echo "-> $2"
  case $2 in FAIL*) failed=$((failed + 1)) ;; esac
}

# run NAME LIMIT_S LOG CMD...: runs CMD under timeout (LIMIT_S, clipped to what is left of the budget)
# with its output in LOG; sets $rc, $took and $timed_out and prints the tail
run() {
  local name=$1 limit=$2 log=$3; shift 3
  local left=$((BUDGET - (SECONDS - start)))
  [ "$left" -lt "$limit" ] && limit=$left
  echo
  if [ "$limit" -lt 10 ]; then
    echo "== $name: not run, the ${BUDGET}s budget is spent"
    rc=124 took=0 timed_out=2
    return
  fi
  echo "== $name  (timeout ${limit}s, log $log)"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  tail -n "${TAIL:-12}" "$log"
  took=$((SECONDS - t0))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    timed_out=1
  else
    timed_out=0
  fi
}

# verdict: FAIL text for a non-zero/timeout status, else empty
verdict() {
  if [ "$timed_out" -eq 2 ]; then echo "FAIL (not run: the ${BUDGET}s budget was spent)"
  elif [ "$timed_out" -eq 1 ]; then echo "FAIL (timed out after ${took}s)"
  elif [ "$rc" -ne 0 ]; then echo "FAIL (exit status $rc, ${took}s; see log)"
  fi
}

# 1. CUDA masks == CPU masks (pytest: all selected tests must pass; any skip is a failure here)
name="1. CUDA masks == CPU masks"
log="$out/1_masks_cuda_eq_cpu.txt"
run "$name" 60 "$log" "$PY" -m pytest -q -rs -p no:cacheprovider -o addopts= tests/test_masking.py -k cuda
v=$(verdict)
last=$(grep -E '(passed|failed|skipped|error|no tests ran|deselected)' "$log" | tail -n 1)
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p; s/^([0-9]+) passed.*/\1/p' <<<"$last" | head -n 1)
if [ -n "$v" ]; then record "$name" "$v"
elif [ -z "$passed" ] || [ "$passed" -eq 0 ]; then record "$name" "FAIL (no test passed: $last)"
elif grep -qE '[0-9]+ skipped' <<<"$last"; then record "$name" "FAIL (some tests were skipped: $last)"
else record "$name" "PASS ($last)"
fi

# 2. mask throughput on CUDA
name="2. mask throughput on CUDA"
log="$out/2_masking_cuda.txt"
TAIL=30 run "$name" 60 "$log" "$PY" benchmarks/masking.py --device cuda --repeats 10 --rounds 3
v=$(verdict)
record "$name" "${v:-PASS (${took}s)}"

# 3. ViT-B/16 pretraining steps, batch 128, bf16
name="3. ViT-B/16 steps, batch 128, bf16"
log="$out/3_pretrain_vitb_cuda.txt"
TAIL=20 run "$name" 120 "$log" "$PY" benchmarks/pretrain.py --device cuda --skip-cpu-preset --vit-b-batch 128 \
  --rounds 3 --steps 3
v=$(verdict)
if [ -z "$v" ] && ! grep -q "color/random step-time ratio" "$log"; then v="FAIL (no summary line in the log)"; fi
record "$name" "${v:-PASS (${took}s; $(grep -o 'model FLOP utilization: [0-9.]*%' "$log" || echo 'MFU not printed'))}"

# 4. the pretraining CLI on CUDA, 20 steps, and its summary.json
name="4. pretraining CLI on CUDA (20 steps)"
log="$out/4_pretrain_cli_cuda.txt"
TAIL=6 run "$name" 60 "$log" bash -c '
  "$0" -m colormae pretrain --device cuda --preset mae_vit_tiny_patch4_64 --max-steps 20 --epochs 1 \
    --output-dir "$1" --log-every 5 || exit
  "$0" - "$1" <<EOF
import json, math, pathlib, sys
run = pathlib.Path(sys.argv[1])
s = json.loads((run / "summary.json").read_text())
# 20 steps are less than an epoch, so final_loss in the summary (a last-epoch mean) is None: check the log
last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
print({k: s.get(k) for k in ("steps", "images_per_s", "peak_memory_bytes")}, "last logged", last)
ok = s.get("steps") == 20 and last.get("step") == 20 and math.isfinite(last.get("loss", math.nan))
sys.exit(0 if ok else "expected steps == 20 in summary.json and a finite loss logged at step 20")
EOF' "$PY" "$out/cli_run"
v=$(verdict)
record "$name" "${v:-PASS (${took}s)}"

# 5. data pipeline: the JPEG paths alone, no model (benchmarks/pipeline.py --gpu-decode)
name="5. data pipeline, CPU vs GPU decode"
if [ -f benchmarks/pipeline.py ]; then
  log="$out/5_pipeline_cuda.txt"
  TAIL=20 run "$name" 90 "$log" "$PY" benchmarks/pipeline.py --device cuda --gpu-decode
  v=$(verdict)
  if [ -z "$v" ] && ! grep -q "^pipeline summary" "$log"; then v="FAIL (no summary line in the log)"; fi
  record "$name" "${v:-PASS (${took}s; $(grep '^pipeline summary' "$log" | cut -c 18-170))}"
else
  echo
  echo "== $name"
  record "$name" "NOT RUN (benchmarks/pipeline.py does not exist in this checkout)"
fi

# 6. ViT-B UperNet segmentation steps at 512 px (img/s, peak memory) and one sliding-window inference
name="6. ViT-B UperNet, 512 px"
log="$out/6_segment_vitb_cuda.txt"
TAIL=12 run "$name" 120 "$log" "$PY" benchmarks/gpu_segment.py
v=$(verdict)
if [ -z "$v" ] && ! grep -q "^segmentation summary:" "$log"; then v="FAIL (no summary line in the log)"; fi
record "$name" "${v:-PASS (${took}s; $(grep '^segmentation summary:' "$log" | cut -c 23-120))}"

# 7. ViTDet Mask R-CNN steps at 1024 px (img/s, peak memory)
name="7. ViT-B Mask R-CNN, 1024 px"
log="$out/7_detect_vitb_cuda.txt"
TAIL=12 run "$name" 120 "$log" "$PY" benchmarks/gpu_detect.py --device cuda --batches 2,8 --steps 5
v=$(verdict)
if [ -z "$v" ] && ! grep -q "^detection summary:" "$log"; then v="FAIL (no summary line in the log)"; fi
record "$name" "${v:-PASS (${took}s; $(grep '^detection summary:' "$log" | cut -c 20-120))}"

# 8. real loop vs bare step, ViT-B/16 batch 256 bf16, eager and compiled; peak memory at 256 and 512
name="8. real loop vs bare, ViT-B b256"
log="$out/8_loop_vitb_cuda.txt"
TAIL=16 run "$name" 240 "$log" "$PY" benchmarks/loop.py --device cuda --preset mae_vit_base_patch16 --batch 256 \
  --amp bf16 --data embedded --compile --rounds 2 --steps 20 --warmup 20 --log-every 10 --memory-batches 256,512
v=$(verdict)
if [ -z "$v" ] && [ "$(grep -c '^loop summary' "$log")" -ne 2 ]; then v="FAIL (no eager and compiled summary lines)"; fi
record "$name" "${v:-PASS (${took}s; $(grep '^loop summary' "$log" | sed -E 's/.*\((.*)\): real ([0-9.]+) img.*real\/bare ([0-9.]+), MFU real ([^;]*).*/\1 \2 img\/s x\3 MFU \4/' | paste -sd ';' -))}"

# 9. the real loop fed by JPEGs through each pipeline (one epoch of the 4096-image folder: 16 steps)
name="9. real loop on JPEGs, ViT-B b256"
log="$out/9_loop_jpeg_cuda.txt"
pipelines=files,gpu-decode
"$PY" -c "from colormae.data import dali; raise SystemExit(not dali.dali_available())" 2>/dev/null && pipelines+=,dali
TAIL=12 run "$name" 150 "$log" "$PY" benchmarks/loop.py --device cuda --preset mae_vit_base_patch16 --batch 256 \
  --amp bf16 --data embedded --jpeg-pipelines "$pipelines" --jpeg-images 4096 --num-workers 14 --rounds 1 --steps 10 \
  --warmup 5 --log-every 5
v=$(verdict)
if [ -z "$v" ] && ! grep -q '^jpeg loop summary' "$log"; then v="FAIL (no jpeg loop summary lines)"; fi
record "$name" "${v:-PASS (${took}s; $(grep '^jpeg loop summary' "$log" | sed -E 's/jpeg loop summary \(([^,]*),.*real ([0-9.]+) img\/s, real\/bare ([0-9.]+)/\1 \2 img\/s x\3/' | paste -sd ';' -))}"

{ echo
  echo "gpu_check summary: $failed failed, $((SECONDS - start))s of steps (budget ${BUDGET}s); logs in $out/"
  printf '%s\n' "${results[@]}"
} | tee "$out/summary.txt"
exit "$failed"
