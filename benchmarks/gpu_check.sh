#!/usr/bin/env bash
# One prepared check for a CUDA machine; finishes in ~5 minutes on one H100.
#   bash benchmarks/gpu_check.sh            (from the repository root, package installed)
# 1. masks generated on CUDA are bit-identical to CPU ones (same CPU generator seed), all kinds;
# 2. mask throughput on CUDA for every kind/source;
# 3. ViT-B/16 224-px pretraining steps at batch 128 in bf16 for random and every color:
#    images/s, peak memory, color/random ratio, model FLOP utilization;
# 4. a short real run of the pretraining CLI on CUDA (bf16, embedded data) to see the engine work.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia_smi.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

echo "== 1. CUDA masks == CPU masks"
timeout 120 python -m pytest -q -p no:cacheprovider -o addopts= tests/test_masking.py -k cuda 2>&1 | tail -3

echo "== 2. mask throughput on CUDA"
timeout 90 python benchmarks/masking.py --device cuda 2>&1 | tee "$out/masking_cuda.txt"

echo "== 3. ViT-B/16 pretraining steps, batch 128, bf16"
timeout 240 python benchmarks/pretrain.py --device cuda --skip-cpu-preset --vit-b-batch 128 --rounds 3 --steps 3 \
  2>&1 | tee "$out/pretrain_cuda.txt"

echo "== 4. pretraining CLI on CUDA (20 steps)"
timeout 90 python -m colormae.pretrain --device cuda --preset mae_vit_tiny_patch4_64 --max-steps 20 --epochs 1 \
  --output-dir "$out/cli_run" --log-every 5 2>&1 | tail -3
python -c "import json,sys; s=json.load(open('$out/cli_run/summary.json')); print({k: s[k] for k in ('steps','final_loss','images_per_s','peak_memory_bytes')})"
