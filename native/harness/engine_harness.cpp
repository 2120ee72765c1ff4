// The engine without Node: loads a model, runs generations through la::Engine with a sink of its own, and
// prints each result as a line of JSON. It shows that the engine (native/engine.*, and what it includes)
// needs no N-API, and test/engine-harness.test.ts compares its output with the package's.
//
//   llama-addon-engine-harness MODEL PROMPT MAX_TOKENS [PARALLEL] [ABORT_AFTER]
//
// PARALLEL generations (default 1) of the same prompt run at once on sequences 0..PARALLEL-1, greedy; with
// ABORT_AFTER > 0 each is aborted once it has streamed that many tokens. Output, one line per generation:
//   {"seq":0,"stopReason":"maxTokens","tokens":[...],"text":"..."}
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/common.h"
#include "common/sampling.h"
#include "engine.h"
#include "guard.h"
#include "llama.h"

namespace {

// Wakes the main thread on every notification (called with the generation's mu held).
struct WaitSink : la::GenerationSink {
  std::mutex mu;
  std::condition_variable cv;
  void notify(la::GenState&) override {
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
  }
  void release(la::GenState&) override {}
};

std::string jsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += (char)c;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += (char)c;
    }
  }
  return out + "\"";
}

int fail(const std::string& message) {
  std::fprintf(stderr, "engine harness: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return fail("usage: llama-addon-engine-harness MODEL PROMPT MAX_TOKENS [PARALLEL] [ABORT_AFTER]");
  const std::string path = argv[1], prompt = argv[2];
  const int32_t maxTokens = std::atoi(argv[3]);
  const int32_t parallel = argc > 4 ? std::max(1, std::atoi(argv[4])) : 1;
  const int32_t abortAfter = argc > 5 ? std::atoi(argv[5]) : 0;

  la::installAbortHandler();
  llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
  ggml_backend_load_all();
  auto handle = std::make_shared<la::ModelHandle>();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  handle->model = llama_model_load_from_file(path.c_str(), mp);
  if (handle->model == nullptr) return fail("the model did not load: " + path);
  handle->vocab = llama_model_get_vocab(handle->model);

  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 512 * (uint32_t)parallel;
  cp.n_batch = 512;
  cp.n_ubatch = 512;
  cp.n_seq_max = (uint32_t)parallel;
  cp.kv_unified = false;
  cp.n_threads = cp.n_threads_batch = 2;
  cp.no_perf = true;
  llama_context* ctx = llama_init_from_model(handle->model, cp);
  if (ctx == nullptr) return fail("the context could not be made");
  auto engine = std::make_shared<la::Engine>(handle, ctx, 64);  // the engine frees the context
  engine->start();

  auto sink = std::make_shared<WaitSink>();
  std::vector<llama_token> tokens = common_tokenize(handle->vocab, prompt, true, false);
  std::vector<std::shared_ptr<la::GenState>> gens;
  for (int32_t seq = 0; seq < parallel; seq++) {
    auto g = std::make_shared<la::GenState>();
    g->seq = seq;
    g->tokens = tokens;
    g->maxTokens = maxTokens;
    g->capacity = 1u << 20;
    g->stream = abortAfter > 0;
    // Greedy, as native/sampling.cpp builds it for temperature 0.
    common_params_sampling sp;
    sp.no_perf = true;
    sp.temp = 0;
    sp.top_k = 1;
    sp.samplers = {COMMON_SAMPLER_TYPE_TOP_K};
    g->sampler = common_sampler_init(handle->model, sp);
    if (g->sampler == nullptr) return fail("the sampler could not be made");
    g->candidates.setup(handle->vocab, sp);
    g->sink = sink;
    g->engine = engine;
    gens.push_back(g);
    engine->submit(g);
  }

  // Wait for every generation to end, aborting each once it has streamed `abortAfter` tokens.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (auto& g : gens) {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(g->mu);
        if (g->done) break;
        if (abortAfter > 0 && (int32_t)g->queuedTokens >= abortAfter) g->aborted.store(true);
      }
      if (g->aborted.load()) engine->wake();
      std::unique_lock<std::mutex> lock(sink->mu);
      sink->cv.wait_for(lock, std::chrono::milliseconds(5));
      if (std::chrono::steady_clock::now() > deadline) return fail("a generation did not end within 60 s");
    }
  }
  for (auto& g : gens) {
    std::lock_guard<std::mutex> lock(g->mu);
    const la::GenResult& r = g->result;
    std::string line = "{\"seq\":" + std::to_string(g->seq) + ",\"stopReason\":" + jsonString(r.stopReason) + ",\"tokens\":[";
    for (size_t i = 0; i < r.tokens.size(); i++) line += (i ? "," : "") + std::to_string(r.tokens[i]);
    line += "],\"text\":" + jsonString(r.text) + "}";
    std::printf("%s\n", line.c_str());
  }
  engine->stop();
  gens.clear();
  engine.reset();
  return 0;
}
