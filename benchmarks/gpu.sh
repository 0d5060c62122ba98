#!/usr/bin/env bash
# The GPU figures of docs/performance.md (its GPU section) and the CUDA tests, in parts that fit a short lease:
#
#     bash benchmarks/gpu.sh [RESULTS_DIR [PART ...]]     # default benchmarks/results, every part
#     bash benchmarks/gpu.sh "$OUT" ttl throughput         # the first call of a 15-minute lease (see below)
#
# Parts, in the order they run (most wanted first), with rough times on an H100/H200 guessed from the earlier
# H200 figures, not measured for this script: compiling takes most of them.
#   ttl         (~3 min) time to validation loss 1.47 on tinyshakespeare with config/shakespeare_char_gpu.json:
#               as it is, with --compile --compile_mode reduce-overhead, and with that and an 800-step schedule
#   throughput  (~2-3 min) nanoGPT's shakespeare-char GPU size (6 layers, 384 wide, block 256, batch 64): the
#               plain PyTorch baseline, tinyllm fp32, fp32 --tf32, --amp, --amp --compile and --amp --compile
#               with --compile_mode reduce-overhead (CUDA graphs); MFU against the matmul peak measured on
#               8192^3 products in each row's compute (fp32, TF32, bf16), never a datasheet figure
#   baseline    (~3 min) the plain eager fp32 baseline (nanoGPT's shakespeare-char GPU recipe: dropout 0.2, lr
#               1e-3 to 1e-4 over 5,000 steps) to 1.47 on the GPU, beside the preset
#   profile     (~1-2 min) where a step's time goes on the GPU (kernels by GPU time, how busy the GPU is) for
#               tinyllm fp32 at the throughput shape, and for the GPU preset with and without CUDA graphs
#   tests       (~2 min) the test suite's CUDA tests (CUDA graphs and TF32 against eager, no host sync in a step,
#               inductor, fp16 loss scaling, pinned batches, NCCL, 8-bit AdamW where bitsandbytes is installed),
#               which skip on machines without a GPU
#   gpt2        MFU of a GPT-2-small-shaped model (12 layers, 12 heads, 768 wide, block 1024), --amp --compile
#   generate    generation tokens/s with and without the KV cache, the GPU preset's model
# Each part's console output also goes to RESULTS_DIR/gpu_PART.log.
#
# tinyshakespeare is read from ../shared/data/ (the preset's path). On the device machine, which gets the
# checkout alone, copy it into an ignored folder first and carry that: see benchmarks/README.md.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
shift || true
ALL_PARTS="ttl throughput baseline profile tests gpt2 generate"
PARTS=${*:-$ALL_PARTS}
for part in $PARTS; do  # a typo must not spend a GPU lease on nothing
    [[ " $ALL_PARTS " == *" $part "* ]] || { echo "error: unknown part '$part'; the parts are: $ALL_PARTS" >&2; exit 2; }
done
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0
has() { [[ " $PARTS " == *" $1 "* ]]; }
# DRY_RUN=1 prints the commands without running them (tests/test_benchmarks.py checks their flags that way)
# (printed shell-quoted, so that a printed command can be pasted as it is)
run() { echo "== $(printf '%q ' "$@")"; [[ -n ${DRY_RUN:-} ]] || "$PY" "$@" || { echo "FAILED: $*"; status=1; }; }
PRESET=config/shakespeare_char_gpu.json
GRAPHS=(compile=true compile_mode=reduce-overhead)
CLASSIC=(pos_encoding=learned norm=layernorm mlp=gelu qk_norm=false bias=true weight_tying=false optimizer=adamw
         dropout=0.0 amp=false lr_schedule=cosine weight_decay=0.1)

part_ttl() {
    run benchmarks/bench_time_to_loss.py --runs tinyllm --preset "$PRESET" --target 1.47 --time_cap 60 \
        --json "$OUT/time_to_loss_gpu.json"
    run benchmarks/bench_time_to_loss.py --runs tinyllm --preset "$PRESET" --target 1.47 --time_cap 60 \
        --set "${GRAPHS[@]}" --json "$OUT/time_to_loss_gpu_graphs.json"
    # the schedule sized to the ~800 steps the target takes (the 2,000-step WSD is still at its peak there)
    run benchmarks/bench_time_to_loss.py --runs tinyllm --preset "$PRESET" --target 1.47 --time_cap 60 \
        --set "${GRAPHS[@]}" max_steps=800 --json "$OUT/time_to_loss_gpu_graphs_800.json"
    return $status
}
part_throughput() {
    run benchmarks/bench_throughput.py --device cuda --batch_size 64 --compile --no-memory --matmul_n 8192 \
        --steps 20 --rounds 5 --json "$OUT/throughput_gpu.json"
    return $status
}
part_baseline() {
    run benchmarks/bench_time_to_loss.py --runs baseline --baseline_device cuda --target 1.47 --time_cap 240 \
        --baseline_eval_interval 100 \
        --baby n_layer=6 n_head=6 n_embd=384 block_size=256 batch_size=64 decay_steps=5000 dropout=0.2 \
        --json "$OUT/time_to_loss_gpu_baseline.json"
    return $status
}
part_profile() {
    run benchmarks/profile_step.py --preset "$PRESET" --set "${CLASSIC[@]}" --steps 10 \
        --json "$OUT/profile_gpu_fp32_classic.json"
    run benchmarks/profile_step.py --preset "$PRESET" --steps 10 --json "$OUT/profile_gpu_preset.json"
    run benchmarks/profile_step.py --preset "$PRESET" --set "${GRAPHS[@]}" --steps 10 \
        --json "$OUT/profile_gpu_preset_graphs.json"
    return $status
}
part_tests() {
    run -m pytest -q -rs -p no:cacheprovider -k "cuda or nccl" tests/test_training_options.py \
        tests/test_safety.py tests/test_batches.py tests/test_distributed.py
    return $status
}
part_gpt2() {
    run benchmarks/bench_throughput.py --device cuda --n_layer 12 --n_head 12 --n_embd 768 --block_size 1024 \
        --batch_size 16 --compile --no-memory --matmul_n 8192 --steps 10 --rounds 3 \
        --json "$OUT/throughput_gpt2_small_gpu.json"
    return $status
}
part_generate() {
    run benchmarks/bench_generate.py --device cuda --config "$PRESET" --json "$OUT/generate_gpu.json"
    return $status
}

for part in $ALL_PARTS; do
    if has "$part"; then
        if [[ -n ${DRY_RUN:-} ]]; then "part_$part"; continue; fi
        "part_$part" 2>&1 | tee "$OUT/gpu_$part.log"
        [[ ${PIPESTATUS[0]} == 0 ]] || status=1  # (the part ran in tee's subshell: its own status comes back)
    fi
done
exit $status
