// Generations: Context::generate (options read, sampler built, the request queued on the engine), the
// NativeGeneration object JS reads chunks and the result from, and the sink that wakes JS from the engine
// thread through a thread-safe function.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "common.h"
#include "context.h"
#include "engine_task.h"
#include "errors.h"
#include "guard.h"
#include "log.h"
#include "addon_data.h"
#include "generation.h"
#include "sampling.h"
#include "work_pool.h"

namespace la {

namespace {

// Wakes a generation's JS side through a thread-safe function that calls onNotify(done). Its fields are
// guarded by the generation's mu (the engine calls notify and release with it held).
class NapiSink : public GenerationSink {
 public:
  Napi::ThreadSafeFunction tsfn;
  // Set by an environment cleanup hook when Node tears the environment down: from then on the
  // thread-safe function may already be freed and must not be touched.
  bool closed = false;
  bool hookRan = false;
  // A generation paused on a full queue does not keep the process alive (JS thread only).
  bool unrefd = false;

  void notify(GenState& g) override {
    if (closed) return;
    tsfn.NonBlockingCall(&g, [](Napi::Env env, Napi::Function fn, GenState* state) {
      if (env == nullptr || fn == nullptr) return;
      bool done;
      {
        std::lock_guard<std::mutex> lock(state->mu);
        done = state->done;
      }
      try {
        fn.Call({Napi::Boolean::New(env, done)});
        pauseUnref(env, *state);
      } catch (...) {  // nothing may escape a callback from another thread
        // The environment is going away (a worker thread terminated): JS cannot run any more.
      }
    });
  }
  void release(GenState&) override {
    if (!closed) tsfn.Release();
  }

  // On the JS thread after a notification: a generation that waits for its consumer stops keeping the
  // process alive until the consumer reads again.
  static void pauseUnref(Napi::Env env, GenState& g) {
    std::lock_guard<std::mutex> lock(g.mu);
    auto* s = static_cast<NapiSink*>(g.sink.get());
    if (!g.done && !s->closed && g.full() && !s->unrefd) {
      s->tsfn.Unref(env);
      s->unrefd = true;
    }
  }
  // On the JS thread, with g.mu held: the generation keeps the process alive again (read, or aborted).
  static void ref(Napi::Env env, GenState& g) {
    auto* s = static_cast<NapiSink*>(g.sink.get());
    if (s->unrefd && !g.done && !s->closed) {
      s->tsfn.Ref(env);
      s->unrefd = false;
    }
  }
};

// Environment teardown: the generation's thread-safe function is about to be freed by Node.
void closeOnTeardown(void* arg) {
  auto* g = static_cast<GenState*>(arg);
  std::lock_guard<std::mutex> lock(g->mu);
  auto* s = static_cast<NapiSink*>(g->sink.get());
  s->hookRan = true;
  s->closed = true;
  g->aborted.store(true);
}

}  // namespace

// generate(seq, tokens: Int32Array, keep, options, onNotify) -> NativeGeneration
namespace {

// Builds a generation's sampler on the work pool (work_pool.h), then queues the generation on its engine,
// or ends it with the error and its code, as the engine reports its own. The generation object is already
// in JS hands (its thread-safe function keeps the event loop alive): it waits like any queued generation.
void buildSamplerLater(std::shared_ptr<Engine> engine, std::shared_ptr<GenState> gen, common_params_sampling sp) {
  auto params = std::make_shared<common_params_sampling>(std::move(sp));
  postWork([engine = std::move(engine), gen = std::move(gen), params] {
    std::string code, error;
    try {
      gen->sampler = buildSampler(engine->model(), *params);
    } catch (const std::exception& e) {
      code = samplerErrorCode(e);
      error = e.what();
    } catch (...) {
      code = "ERR_NATIVE";
      error = "the sampler could not be built";
    }
    try {
      if (error.empty()) engine->submit(gen);
      else engine->fail(gen, code, error);
    } catch (...) {
      // finish() cannot fail short of memory; nothing is left to report to.
    }
  });
}

}  // namespace

Napi::Value Context::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  const ModelHandle& model = *engine->model();
  int32_t seq = (int32_t)argInteger(info, 0, "sequence", 0, (int64_t)llama_n_seq_max(engine->ctx()) - 1);
  Napi::Int32Array tokens = argTokens(info, 1, "tokens");
  int32_t keep = (int32_t)argInteger(info, 2, "keep", 0, INT32_MAX);
  if (!info[3].IsObject()) throwArg(env, "options", "an object", info[3]);
  if (!info[4].IsFunction()) throwArg(env, "onNotify", "a function", info[4]);
  Napi::Object o = info[3].As<Napi::Object>();

  size_t n = tokens.ElementLength();
  int32_t nVocab = llama_vocab_n_tokens(model.vocab);
  if (n == 0) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid prompt: expected at least one token, received none");
  checkTokens(env, model, tokens.Data(), n, "prompt token");
  if ((int64_t)n > engine->seqCapacity()) {
    throwError(env, "ERR_CONTEXT_FULL", "The prompt has " + std::to_string(n) +
                                            " tokens, more than the context holds per sequence (" +
                                            std::to_string(engine->seqCapacity()) + ")");
  }

  auto num = [&](const char* key, double fallback) {
    Napi::Value v = opt(o, key);
    if (v.IsEmpty() || v.IsUndefined()) return fallback;
    if (!v.IsNumber()) throwArg(env, key, "a number", v);
    double d = v.As<Napi::Number>().DoubleValue();
    if (std::isnan(d)) throwArg(env, key, "a number that is not NaN", v);
    return d;
  };
  auto g = std::make_shared<GenState>();
  g->seq = seq;
  // JS's prompt as the engine's chunks (prompt.h). Text only: no API produces media yet; a media item would be
  // read here as its MediaChunk.
  g->prompt = PromptTokens(std::vector<llama_token>(tokens.Data(), tokens.Data() + n));
  g->keep = std::min<int32_t>(keep, (int32_t)n);
  double maxTokens = num("maxTokens", (double)INT32_MAX);
  if (!(maxTokens >= 1)) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid option maxTokens: expected at least 1");
  g->maxTokens = (int32_t)std::min(maxTokens, (double)INT32_MAX);
  g->capacity = (size_t)std::max(1.0, std::min(num("queueSize", 32), 1e6));
  int32_t cap = engine->seqCapacity();
  g->shiftKeep = (int32_t)std::max(0.0, std::min(num("shiftKeep", 0), (double)cap));
  g->shiftDiscard = (int32_t)std::max(0.0, std::min(num("shiftDiscard", 0), (double)cap));
  g->discardAt = (int32_t)std::max(0.0, std::min(num("discardAt", 0), (double)cap));
  g->discardCount = (int32_t)std::max(0.0, std::min(num("discardCount", 0), (double)cap));
  g->logprobs = (int32_t)std::max(-1.0, std::min(num("logprobs", -1), (double)nVocab));
  g->priority = (int32_t)std::max(-1e6, std::min(num("priority", 0), 1e6));
  Napi::Value spec = opt(o, "speculative");
  if (!(spec.IsBoolean() && !spec.As<Napi::Boolean>().Value())) {
    g->draftMax = draftTokens_;
    g->lookupNgram = lookupNgram_;
  }
  Napi::Value lora = opt(o, "lora");
  g->lora = lora.IsEmpty() || lora.IsUndefined() ? defaultLora_ : readLoraSet(env, lora, model);
  Napi::Value preAborted = opt(o, "aborted");
  if (preAborted.IsBoolean() && preAborted.As<Napi::Boolean>().Value()) g->aborted.store(true);
  Napi::Value stream = opt(o, "stream");
  if (stream.IsBoolean()) g->stream = stream.As<Napi::Boolean>().Value();

  Napi::Value stops = opt(o, "stop");
  if (stops.IsArray()) {
    Napi::Array arr = stops.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value s = arr.Get(i);
      if (!s.IsString()) throwArg(env, "stop", "an array of strings", s);
      std::string str = s.As<Napi::String>().Utf8Value();
      if (!str.empty()) g->stops.push_back(std::move(str));
    }
  } else if (!stops.IsEmpty() && !stops.IsUndefined()) {
    throwArg(env, "stop", "an array of strings", stops);
  }

  // The sampler chain (native/sampling.cpp); a grammar's sampler is built off the JS thread below.
  SamplingSetup setup = readSampling(env, engine->model(), o, engine->seqCapacity());
  common_params_sampling& sp = setup.params;
  g->acceptPrompt = setup.acceptPrompt;
  g->preserved = std::move(setup.preserved);
  g->hasGrammar = !sp.grammar.empty();
  g->grammarLazy = sp.grammar_lazy;
  // A grammar is checked and parsed off the JS thread (one of megabytes takes a second); without one the
  // sampler is cheap and built here.
  const bool deferred = g->hasGrammar;
  if (!deferred) {
    g->sampler = buildSampler(env, engine->model(), sp);
    g->candidates.setup(model.vocab, sp);  // (a grammar samples over the whole vocabulary)
  }

  // Notifications to JS: data available, paused on a full queue, done.
  auto sink = std::make_shared<NapiSink>();
  g->sink = sink;
  auto* ctxBox = new std::shared_ptr<GenState>(g);
  sink->tsfn = Napi::ThreadSafeFunction::New(
      env, info[4].As<Napi::Function>(), "llama-addon.generation", 0, 1, ctxBox,
      [](Napi::Env env, void*, std::shared_ptr<GenState>* box) {
        GenState& st = **box;
        bool hookRan;
        {
          std::lock_guard<std::mutex> lock(st.mu);
          hookRan = static_cast<NapiSink*>(st.sink.get())->hookRan;
        }
        if (!hookRan) napi_remove_env_cleanup_hook(env, closeOnTeardown, box->get());
        delete box;
      },
      (void*)nullptr);
  // Registered after the thread-safe function, so it runs before Node frees it at teardown.
  napi_add_env_cleanup_hook(env, closeOnTeardown, g.get());
  g->engine = engine;
  Napi::Object gen = Generation::NewInstance(env, g);
  if (deferred) buildSamplerLater(engine, g, std::move(sp));
  else engine->submit(g);
  return gen;
}

// ------------------------------------------------------------------ Generation

void Generation::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "NativeGeneration",
                                    {
                                        InstanceMethod<&Generation::Take>("take"),
                                        InstanceMethod<&Generation::Abort>("abort"),
                                    });
  addonData(env)->generationCtor = Napi::Persistent(ctor);
  exports.Set("NativeGeneration", ctor);
}

Napi::Object Generation::NewInstance(Napi::Env env, std::shared_ptr<GenState> state) {
  return newWrapped(env, addonData(env)->generationCtor, std::move(state));
}

Generation::Generation(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<Generation>(info), state_(takeWrapped<GenState>(info, "NativeGeneration")) {}

// [{ token, text, logprob, top: [{ token, text, logprob }] }]
static Napi::Array probsArray(Napi::Env env, const std::vector<TokenProb>& probs) {
  Napi::Array arr = Napi::Array::New(env, probs.size());
  for (uint32_t i = 0; i < probs.size(); i++) {
    const TokenProb& p = probs[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("token", p.token);
    o.Set("text", Napi::String::New(env, p.text));
    o.Set("logprob", p.logprob);
    Napi::Array top = Napi::Array::New(env, p.top.size());
    for (uint32_t k = 0; k < p.top.size(); k++) {
      Napi::Object a = Napi::Object::New(env);
      a.Set("token", p.top[k].token);
      a.Set("text", Napi::String::New(env, p.top[k].text));
      a.Set("logprob", p.top[k].logprob);
      top.Set(k, a);
    }
    o.Set("top", top);
    arr.Set(i, o);
  }
  return arr;
}

static Napi::Object resultObject(Napi::Env env, const GenResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("stopReason", r.stopReason);
  if (!r.error.empty()) o.Set("error", r.error);
  if (!r.errorCode.empty()) o.Set("errorCode", r.errorCode);
  o.Set("text", Napi::String::New(env, r.text));
  o.Set("tokens", int32Array(env, r.tokens));
  o.Set("promptTokens", r.promptTokens);
  o.Set("evaluatedTokens", r.evaluatedTokens);
  o.Set("sequence", int32Array(env, r.sequence));
  o.Set("discarded", r.discarded);
  o.Set("drafted", r.drafted);
  o.Set("accepted", r.accepted);
  if (!r.probs.empty()) o.Set("logprobs", probsArray(env, r.probs));
  o.Set("started", r.started);
  if (r.evicted) {
    o.Set("evicted", r.evictedState.empty() ? env.Null()
                                            : Napi::Buffer<uint8_t>::Copy(env, r.evictedState.data(), r.evictedState.size()).As<Napi::Value>());
  }
  o.Set("promptMs", r.promptMs);
  o.Set("generateMs", r.generateMs);
  o.Set("timeToFirstTokenMs", r.timeToFirstTokenMs);
  return o;
}

// take() -> { chunks: [{ text, tokens }], done, result? }: everything queued so far.
Napi::Value Generation::Take(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GenState& g = *state_;
  std::deque<Chunk> chunks;
  bool wasFull = false;
  bool done = false;
  Napi::Object out = Napi::Object::New(env);
  {
    std::lock_guard<std::mutex> lock(g.mu);
    wasFull = g.full();
    chunks.swap(g.queue);
    g.queuedTokens = 0;
    g.notifyPending = false;
    g.deferredNotify = false;
    g.pauseNotified = false;
    done = g.done;
    NapiSink::ref(env, g);
    if (done) out.Set("result", resultObject(env, g.result));
  }
  if (wasFull && !done) {
    if (auto engine = g.engine.lock()) engine->wake();
  }
  Napi::Array arr = Napi::Array::New(env, chunks.size());
  uint32_t i = 0;
  for (auto& c : chunks) {
    Napi::Object co = Napi::Object::New(env);
    co.Set("text", Napi::String::New(env, c.text));
    co.Set("tokens", int32Array(env, c.tokens));
    if (!c.probs.empty()) co.Set("logprobs", probsArray(env, c.probs));
    arr.Set(i++, co);
  }
  out.Set("chunks", arr);
  out.Set("done", done);
  return out;
}

Napi::Value Generation::Abort(const Napi::CallbackInfo& info) {
  state_->aborted.store(true);
  {
    // A paused generation does not hold the process open; its final notification must.
    std::lock_guard<std::mutex> lock(state_->mu);
    NapiSink::ref(info.Env(), *state_);
  }
  if (auto engine = state_->engine.lock()) engine->wake();
  return info.Env().Undefined();
}

}  // namespace la
