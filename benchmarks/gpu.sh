#!/usr/bin/env bash
# The GPU figures of docs/performance.md (its GPU section), in one go (about 5 minutes on an H100/H200):
#
#     bash benchmarks/gpu.sh [RESULTS_DIR]        # default benchmarks/results
#
# 1. throughput at nanoGPT's shakespeare-char GPU size (6 layers, 384 wide, block 256, batch 64): the plain
#    PyTorch baseline, tinyllm fp32, --amp and --amp --compile, with peak CUDA memory;
# 2. MFU of a GPT-2-small-shaped model (12 layers, 12 heads, 768 wide, block 1024) with --amp --compile;
# 3. time to validation loss 1.47 on tinyshakespeare with config/shakespeare_char_gpu.json;
# 4. generation tokens/s with and without the KV cache, that preset's model (not yet measured).
# The matmul peak that MFU divides by is measured on 8192^3 products (the card's real ceiling, not a datasheet).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
status=0
"$PY" benchmarks/bench_throughput.py --device cuda --batch_size 64 --compile --matmul_n 8192 --steps 20 \
    --rounds 5 --json "$OUT/throughput_gpu.json" || status=1
"$PY" benchmarks/bench_throughput.py --device cuda --n_layer 12 --n_head 12 --n_embd 768 --block_size 1024 \
    --batch_size 16 --compile --no-memory --matmul_n 8192 --steps 10 --rounds 3 \
    --json "$OUT/throughput_gpt2_small_gpu.json" || status=1
"$PY" benchmarks/bench_time_to_loss.py --runs tinyllm --preset config/shakespeare_char_gpu.json --target 1.47 \
    --time_cap 120 --json "$OUT/time_to_loss_gpu.json" || status=1
"$PY" benchmarks/bench_generate.py --device cuda --config config/shakespeare_char_gpu.json \
    --json "$OUT/generate_gpu.json" || status=1
exit $status
