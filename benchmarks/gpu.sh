#!/usr/bin/env bash
# The GPU benchmark run: the step and engine benchmarks at full size, float32
# and bfloat16, one after the other, each table written to $OUT (default
# benchmarks/results). Run from the repository root on a machine with one GPU.
set -u -o pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import jax, optax, flax; print('jax', jax.__version__, 'optax', optax.__version__, 'flax', flax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# First, what decides the per-backend engine defaults: the blocked
# (symmetric) Hermitian products against plain ones
# (ortho_optax.engines.symmetric.SYMMETRIC_DEFAULTS, off on GPU until
# measured). Each table's first line says whether this run would flip it.
timeout 90 $PY benchmarks/orthogonalize.py --symmetric --repeats 10 \
  --shapes 1024x4096,2048x2048,4096x4096 --out "$OUT/orthogonalize_symmetric_gpu_f32.md" 2>&1 | tee "$OUT/orthogonalize_symmetric_gpu_f32.log"
timeout 90 $PY benchmarks/orthogonalize.py --symmetric --dtype bfloat16 --repeats 10 \
  --shapes 1024x4096,2048x2048,4096x4096 --out "$OUT/orthogonalize_symmetric_gpu_bf16.md" 2>&1 | tee "$OUT/orthogonalize_symmetric_gpu_bf16.log"
timeout 170 $PY benchmarks/step.py --repeats 10 --out "$OUT/step_gpu_f32.md" 2>&1 | tee "$OUT/step_gpu_f32.log"
timeout 130 $PY benchmarks/orthogonalize.py --dtype bfloat16 --repeats 10 \
  --shapes 1024x4096,4096x4096,4096x16384 --out "$OUT/orthogonalize_gpu_bf16.md" 2>&1 | tee "$OUT/orthogonalize_gpu_bf16.log"
timeout 110 $PY benchmarks/orthogonalize.py --repeats 10 \
  --shapes 1024x4096,4096x4096,4096x16384 --out "$OUT/orthogonalize_gpu_f32.md" 2>&1 | tee "$OUT/orthogonalize_gpu_f32.log"
timeout 110 $PY benchmarks/step.py --dtype bfloat16 --repeats 10 --out "$OUT/step_gpu_bf16.md" 2>&1 | tee "$OUT/step_gpu_bf16.log"
timeout 60 $PY benchmarks/symmetric_kernel.py --repeats 10 \
  --out "$OUT/symmetric_kernel_gpu_f32.md" 2>&1 | tee "$OUT/symmetric_kernel_gpu_f32.log"
timeout 60 $PY benchmarks/symmetric_kernel.py --dtype bfloat16 --repeats 10 \
  --out "$OUT/symmetric_kernel_gpu_bf16.md" 2>&1 | tee "$OUT/symmetric_kernel_gpu_bf16.log"
echo "== Engine defaults on this backend: what this run says =="
grep -h '^Default `symmetric`' "$OUT"/orthogonalize_symmetric_gpu_*.md "$OUT"/step_gpu_*.md || true
