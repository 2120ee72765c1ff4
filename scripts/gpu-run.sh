#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, with .device/ made by scripts/device-bundle.mjs:
#   bash .device/gpu-run.sh   CUDA build (build-cuda/, kept between calls), a GPU smoke check, the GPU and
#                             backend tests, the bench with every layer offloaded, then the whole test suite;
#                             everything lands in $OUT as it is made, so a cut-off run still reports.
# Environment: STEPS (default "build smoke gpu-tests bench suite"; also "profile": bench/profile.ts after the bench), GPU_TESTS (test files of gpu-tests),
# EXTRA_CMAKE (more -D flags), BUILD_TARGETS (default "llama_addon llama-bench"), REPS (bench rounds, default 3),
# MODELS (bench --model flags), BENCH_TIMEOUT, PROFILE_TIMEOUT and SUITE_TIMEOUT (seconds), PROFILE_TOKENS, PROFILE_ARGS
# (more bench/profile.ts flags).
set -uo pipefail
D="$PWD/.device"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT" "$D/bin"
[ -x "$D/node" ] || { xz -dc "$D/node.xz" > "$D/node"; chmod +x "$D/node"; }
ln -sf "$D/node" "$D/bin/node"
export PATH="$D/bin:$PATH"
[ -d "$D/llama.cpp" ] || tar -xJf "$D/llama-src.tar.xz" -C "$D"
[ -d node_modules/vitest ] || tar -xJf "$D/node_modules.tar.xz"
# The tests look for the shared models beside the repository.
if mkdir -p ../shared/models 2>/dev/null; then cp -n "$D"/models/* ../shared/models/ 2>/dev/null || true; fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LLAMA_CPP_DIR="$D/llama.cpp"
export LLAMA_ADDON_BINARY="$PWD/build-cuda/Release/llama_addon.node"
JOBS=$(nproc)
STEPS="${STEPS:-build smoke gpu-tests bench suite}"
want() { [[ " $STEPS " == *" $1 "* ]]; }
step() { echo "== $1 ($(date +%T))" | tee -a "$OUT/steps.txt"; }

if want build; then
step build
nvidia-smi > "$OUT/steps.txt" 2>&1 || true
if [ ! -f "$LLAMA_ADDON_BINARY" ] || [ ! -f build-cuda/Release/gpu/libggml-cuda.so ]; then
  GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
  start=$(date +%s)
  cmake -S . -B build-cuda $GEN -DCMAKE_BUILD_TYPE=Release -DLLAMA_CPP_DIR="$D/llama.cpp" \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_NCCL=OFF -DLLAMA_ADDON_PORTABLE=OFF \
    -DCMAKE_JS_INC="$D/headers/node-api-headers/include;$D/headers/node-addon-api" \
    -DCMAKE_CXX_FLAGS=-DBUILDING_NODE_EXTENSION -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build-cuda/Release" ${EXTRA_CMAKE:-} \
    > "$OUT/cmake-configure.log" 2>&1 || { tail -50 "$OUT/cmake-configure.log"; exit 1; }
  cmake --build build-cuda --target ${BUILD_TARGETS:-llama_addon llama-bench} -j "$JOBS" > "$OUT/cmake-build.log" 2>&1 || { tail -60 "$OUT/cmake-build.log"; exit 1; }
  echo "build took $(( $(date +%s) - start )) s" | tee "$OUT/build-time.txt"
fi
{ ls -la build-cuda/Release build-cuda/Release/gpu; ldd build-cuda/Release/gpu/libggml-cuda.so; } > "$OUT/build-files.txt" 2>&1
fi

if want smoke; then
step smoke
node --import tsx lib/cli.ts backends --json > "$OUT/backends.json" 2>> "$OUT/steps.txt"
cat "$OUT/backends.json" | head -40
fi

if want gpu-tests; then
step gpu-tests
timeout 150 node node_modules/vitest/vitest.mjs run ${GPU_TESTS:-test/gpu.test.ts test/backends.test.ts test/rpc.test.ts test/worker.test.ts} > "$OUT/test-gpu.txt" 2>&1
echo "gpu tests exit $?" | tee -a "$OUT/steps.txt"; grep -E "Tests |Test Files|FAIL|×" "$OUT/test-gpu.txt" | head -20
fi

if want bench; then
step bench
BIN=build-cuda/Release/llama-bench
GGML_BACKEND_PATH="$PWD/build-cuda/Release/gpu/libggml-cuda.so" LLAMA_BENCH_BIN="$BIN" BENCH_SHARED_MODELS="$D/models" BENCH_MODELS_DIR=/tmp/bench-models \
  timeout "${BENCH_TIMEOUT:-200}" node --import tsx bench/run.ts --gpu-layers 99 --systems llama-bench,llama-addon --reps "${REPS:-3}" --scenario models ${MODELS:-} > "$OUT/bench.md" 2> "$OUT/bench-err.txt"
echo "bench exit $?" | tee -a "$OUT/steps.txt"
cp bench/results/latest.json "$OUT/bench.json" 2>/dev/null || true
cat "$OUT/bench.md"
fi

if want profile; then
step profile
# The engine's per-step profile for greedy generation, sampling over a subset and over the whole vocabulary
# (bench/profile.ts), on the bench's models (the synthetic ones as the bench step wrote them).
timeout "${PROFILE_TIMEOUT:-120}" node --import tsx bench/profile.ts --gpu-layers max --tokens "${PROFILE_TOKENS:-256}" --rounds 2 ${PROFILE_ARGS:-} \
  "$D/models/stories260k.gguf" "$D/models/tinystories-656k-q8_0.gguf" /tmp/bench-models/*.gguf > "$OUT/profile.txt" 2>&1
echo "profile exit $?" | tee -a "$OUT/steps.txt"; cat "$OUT/profile.txt"
fi

if want suite; then
step suite
timeout "${SUITE_TIMEOUT:-200}" node node_modules/vitest/vitest.mjs run --exclude test/page.test.ts --exclude test/pack.test.ts --exclude test/bench.test.ts > "$OUT/test-all.txt" 2>&1
echo "suite exit $?" | tee -a "$OUT/steps.txt"; grep -E "Tests |Test Files|FAIL" "$OUT/test-all.txt" | head -30
fi
step done
