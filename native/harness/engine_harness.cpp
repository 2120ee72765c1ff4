// The engine without Node: loads a model, runs generations through la::Engine with a sink of its own, and
// prints each result as a line of JSON. It shows that the engine (native/engine.*, and what it includes)
// needs no N-API, and test/engine-harness.test.ts compares its output with the package's.
//
//   llama-addon-engine-harness MODEL PROMPT MAX_TOKENS [PARALLEL] [ABORT_AFTER]
//
// PARALLEL generations (default 1) of the same prompt run at once on sequences 0..PARALLEL-1, greedy; with
// ABORT_AFTER > 0 each is aborted once it has streamed that many tokens. Output, one line per generation:
//   {"seq":0,"stopReason":"maxTokens","tokens":[...],"text":"...","evaluated":9,"discarded":0,
//    "sequence":[...],"mediaDecodes":0}
//
// Prompts with media (native/prompt.h), set by the environment:
//   HARNESS_MEDIA=FROM:TO    prompt positions FROM..TO-1 go as one media chunk: a stand-in that decodes those
//                            tokens itself, in its own llama_decode, as an image's embeddings would be
//   HARNESS_KEEP2=K          then a second generation of the same prompt on each sequence, keeping K positions
//   HARNESS_SHIFT=KEEP:DROP  a full sequence drops DROP positions after the first KEEP (context shift)
//   HARNESS_CTX=N            cells per sequence (default 512)
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
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

// A media chunk for tests: it fills its positions with these tokens, decoded in a llama_decode of its own
// (a real one decodes an image's or a sound's embeddings), and counts its decodes.
struct TokenMedia : la::MediaChunk {
  std::vector<llama_token> tokens;
  int32_t decodes = 0;
  explicit TokenMedia(std::vector<llama_token> t) : tokens(std::move(t)) {}
  int32_t positions() const override { return (int32_t)tokens.size(); }
  int32_t decode(llama_context* ctx, llama_seq_id seq, llama_pos pos) override {
    decodes++;
    llama_batch b = llama_batch_init((int32_t)tokens.size(), 0, 1);
    for (size_t i = 0; i < tokens.size(); i++) {
      b.token[i] = tokens[i];
      b.pos[i] = pos + (llama_pos)i;
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = seq;
      b.logits[i] = false;
    }
    b.n_tokens = (int32_t)tokens.size();
    int32_t ret = llama_decode(ctx, b);
    llama_batch_free(b);
    return ret;
  }
};

std::pair<int32_t, int32_t> pairEnv(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || std::strchr(v, ':') == nullptr) return {-1, -1};
  return {std::atoi(v), std::atoi(std::strchr(v, ':') + 1)};
}

int fail(const std::string& message) {
  std::fprintf(stderr, "engine harness: %s\n", message.c_str());
  return 1;
}

}  // namespace

// --prompt-sweep: la::PromptTokens (native/prompt.h) against a plain model of it, on random prompts: each
// position labelled by its chunk (a text token, or the index of the media chunk it lies in).
int promptSweep() {
  std::mt19937 rng(12345);
  int checks = 0;
  for (int round = 0; round < 3000; round++) {
    la::PromptTokens p;
    std::vector<int32_t> owner;  // per position: -1 text, else the media chunk's number
    int chunks = (int)(rng() % 6);
    for (int c = 0; c < chunks; c++) {
      if (rng() % 2) {
        int n = (int)(rng() % 4);
        for (int i = 0; i < n; i++) {
          p.pushText((llama_token)(rng() % 100));
          owner.push_back(-1);
        }
      } else {
        int n = 1 + (int)(rng() % 4);
        p.pushMedia(std::make_shared<TokenMedia>(std::vector<llama_token>((size_t)n, 7)));
        owner.insert(owner.end(), (size_t)n, c);
      }
    }
    auto startOf = [&](size_t pos) {  // where pos's media chunk starts (pos itself for text or the end)
      size_t s = pos;
      while (pos < owner.size() && owner[pos] >= 0 && s > 0 && owner[s - 1] == owner[pos]) s--;
      return s;
    };
    auto endOf = [&](size_t pos) {
      if (pos >= owner.size() || owner[pos] < 0 || startOf(pos) == pos) return pos;
      size_t e = pos;
      while (e < owner.size() && owner[e] == owner[pos]) e++;
      return e;
    };
    auto same = [&](const char* what) {
      if (p.size() != owner.size()) throw std::runtime_error(std::string(what) + ": size");
      for (size_t i = 0; i < owner.size(); i++) {
        bool media = owner[i] >= 0;
        if ((p[i] == LLAMA_TOKEN_NULL) != media) throw std::runtime_error(std::string(what) + ": position kind");
        bool starts = media && (i == 0 || owner[i - 1] != owner[i]);
        if ((p.mediaAt(i) != nullptr) != starts) throw std::runtime_error(std::string(what) + ": media start");
      }
      for (size_t i = 0; i <= owner.size(); i++) {
        if (p.boundaryBefore(i) != startOf(i) || p.boundaryAfter(i) != endOf(i)) throw std::runtime_error(std::string(what) + ": boundary");
        checks++;
      }
    };
    same("built");
    if (owner.empty()) continue;
    // A cut as the engine makes one (context shift): from a boundary at or before `a` to one at or after `b`.
    size_t a = rng() % (owner.size() + 1), b = a + rng() % (owner.size() - a + 1);
    size_t from = startOf(a), to = endOf(b);
    p.erase(from, to);
    owner.erase(owner.begin() + (ptrdiff_t)from, owner.begin() + (ptrdiff_t)to);
    same("erase");
    size_t t = rng() % (owner.size() + 1);
    p.truncate(t);  // inside a media chunk: at its start
    owner.resize(startOf(t));
    same("truncate");
  }
  std::printf("{\"promptSweep\":%d}\n", checks);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--prompt-sweep") {
    try {
      return promptSweep();
    } catch (const std::exception& e) {
      return fail(std::string("prompt sweep: ") + e.what());
    }
  }
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
  const char* ctxEnv = std::getenv("HARNESS_CTX");
  const uint32_t perSeq = ctxEnv != nullptr ? (uint32_t)std::max(16, std::atoi(ctxEnv)) : 512;
  cp.n_ctx = perSeq * (uint32_t)parallel;
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
  const auto [mediaFrom, mediaTo] = pairEnv("HARNESS_MEDIA");
  const auto [shiftKeep, shiftDrop] = pairEnv("HARNESS_SHIFT");
  const char* keep2 = std::getenv("HARNESS_KEEP2");
  if (mediaFrom >= 0 && !(0 <= mediaFrom && mediaFrom < mediaTo && mediaTo <= (int32_t)tokens.size())) {
    return fail("HARNESS_MEDIA is outside the prompt's " + std::to_string(tokens.size()) + " tokens");
  }
  std::vector<std::shared_ptr<TokenMedia>> media((size_t)parallel);

  auto start = [&](int32_t seq, int32_t keep) {
    auto g = std::make_shared<la::GenState>();
    g->seq = seq;
    if (mediaFrom >= 0) {
      if (!media[(size_t)seq]) {
        media[(size_t)seq] = std::make_shared<TokenMedia>(std::vector<llama_token>(tokens.begin() + mediaFrom, tokens.begin() + mediaTo));
      }
      for (int32_t i = 0; i < mediaFrom; i++) g->prompt.pushText(tokens[(size_t)i]);
      g->prompt.pushMedia(media[(size_t)seq]);
      for (size_t i = (size_t)mediaTo; i < tokens.size(); i++) g->prompt.pushText(tokens[i]);
    } else {
      g->prompt = la::PromptTokens(tokens);
    }
    g->keep = keep;
    if (shiftDrop > 0) {
      g->shiftKeep = shiftKeep;
      g->shiftDiscard = shiftDrop;
    }
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
    if (g->sampler == nullptr) return std::shared_ptr<la::GenState>();
    g->candidates.setup(handle->vocab, sp);
    g->sink = sink;
    g->engine = engine;
    engine->submit(g);
    return g;
  };

  // Waits for every generation to end, aborting each once it has streamed `abortAfter` tokens, and prints them.
  auto finishAll = [&](const std::vector<std::shared_ptr<la::GenState>>& gens) {
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
        if (std::chrono::steady_clock::now() > deadline) return false;
      }
    }
    for (auto& g : gens) {
      std::lock_guard<std::mutex> lock(g->mu);
      const la::GenResult& r = g->result;
      auto list = [](const std::vector<int32_t>& v) {
        std::string out = "[";
        for (size_t i = 0; i < v.size(); i++) out += (i ? "," : "") + std::to_string(v[i]);
        return out + "]";
      };
      std::string line = "{\"seq\":" + std::to_string(g->seq) + ",\"stopReason\":" + jsonString(r.stopReason) +
                         ",\"tokens\":" + list(r.tokens) + ",\"text\":" + jsonString(r.text) +
                         ",\"evaluated\":" + std::to_string(r.evaluatedTokens) + ",\"discarded\":" + std::to_string(r.discarded) +
                         ",\"sequence\":" + list(r.sequence) + ",\"mediaDecodes\":" +
                         std::to_string(media[(size_t)g->seq] ? media[(size_t)g->seq]->decodes : 0) +
                         (r.error.empty() ? "" : ",\"error\":" + jsonString(r.error)) + "}";
      std::printf("%s\n", line.c_str());
    }
    return true;
  };

  std::vector<std::shared_ptr<la::GenState>> gens;
  for (int32_t seq = 0; seq < parallel; seq++) {
    gens.push_back(start(seq, 0));
    if (!gens.back()) return fail("the sampler could not be made");
  }
  if (!finishAll(gens)) return fail("a generation did not end within 60 s");
  if (keep2 != nullptr) {
    std::vector<std::shared_ptr<la::GenState>> second;
    for (int32_t seq = 0; seq < parallel; seq++) {
      second.push_back(start(seq, std::atoi(keep2)));
      if (!second.back()) return fail("the sampler could not be made");
    }
    if (!finishAll(second)) return fail("a second generation did not end within 60 s");
  }
  engine->stop();
  gens.clear();
  engine.reset();
  return 0;
}
