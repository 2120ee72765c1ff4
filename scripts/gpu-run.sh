#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, with .device/ made by scripts/device-bundle.mjs.
#   bash .device/gpu-run.sh build   # CUDA build of the addon and llama-bench into build-cuda/ (kept between calls)
#   bash .device/gpu-run.sh bench   # the bench with every layer offloaded; results to $OUT
set -euo pipefail
D="$PWD/.device"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
[ -x "$D/node" ] || { xz -dc "$D/node.xz" > "$D/node"; chmod +x "$D/node"; }
[ -d "$D/llama.cpp" ] || tar -xJf "$D/llama-src.tar.xz" -C "$D"
JOBS=$(nproc)
case "${1:-all}" in
  build|all)
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
    start=$(date +%s)
    cmake -S . -B build-cuda $GEN -DCMAKE_BUILD_TYPE=Release -DLLAMA_CPP_DIR="$D/llama.cpp" \
      -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_NCCL=OFF \
      -DCMAKE_JS_INC="$D/headers/node-api-headers/include;$D/headers/node-addon-api" \
      -DCMAKE_CXX_FLAGS=-DBUILDING_NODE_EXTENSION -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build-cuda/Release" \
      > "$OUT/cmake-configure.log" 2>&1 || { tail -50 "$OUT/cmake-configure.log"; exit 1; }
    cmake --build build-cuda --target llama_addon llama-bench -j "$JOBS" > "$OUT/cmake-build.log" 2>&1 || { tail -60 "$OUT/cmake-build.log"; exit 1; }
    echo "build took $(( $(date +%s) - start )) s" | tee "$OUT/build-time.txt"
    ;;&
  bench|all)
    BIN=build-cuda/tools/llama-bench/llama-bench; [ -x "$BIN" ] || BIN=build-cuda/bin/llama-bench
    export LLAMA_ADDON_BINARY="$PWD/build-cuda/Release/llama_addon.node"
    export LLAMA_BENCH_BIN="$BIN" LLAMA_CPP_DIR="$D/llama.cpp" BENCH_SHARED_MODELS="$D/models" BENCH_MODELS_DIR=/tmp/bench-models
    "$D/node" "$D/bench/run.mjs" --gpu-layers 99 --systems llama-bench,llama-addon --reps "${REPS:-5}" ${MODELS:-} > "$OUT/bench.md" 2> "$OUT/bench.err" || { tail -40 "$OUT/bench.err"; exit 1; }
    cp "$D"/bench/results/latest.json "$OUT/bench.json" 2>/dev/null || true
    cat "$OUT/bench.md"
    ;;
esac
