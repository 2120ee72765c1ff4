#include "context.h"
#include "backends.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <future>
#include <thread>

#include "addon_data.h"
#include "beam.h"
#include "common.h"
#include "grammar.h"
#include "sampling.h"
#include "errors.h"
#include "guard.h"
#include "log.h"

namespace la {

// A copy of token ids as a JS Int32Array (llama_token is int32_t).
static Napi::Int32Array int32Array(Napi::Env env, const std::vector<int32_t>& tokens) {
  Napi::Int32Array a = Napi::Int32Array::New(env, tokens.size());
  std::copy(tokens.begin(), tokens.end(), a.Data());
  return a;
}

// ------------------------------------------------------------------ creation

namespace {

struct ContextBox {
  std::shared_ptr<Engine> engine;
  int32_t threads;
  int32_t threadsBatch;
  LoraSet lora;
  int32_t draftTokens;
  int32_t lookupNgram;
};

// Speculative decoding settings of a context.
struct DraftConfig {
  std::shared_ptr<ModelHandle> model;  // draft model, or null
  int32_t tokens = 0;                  // most draft tokens per step (0: no speculation)
  int32_t lookupNgram = 0;             // prompt lookup n-gram size (0: off)
};

class CreateWorker : public Napi::AsyncWorker {
 public:
  CreateWorker(Napi::Env env, std::shared_ptr<ModelHandle> model, llama_context_params params, int32_t promptChunk,
               LoraSet lora, DraftConfig draft)
      : Napi::AsyncWorker(env, "llama-addon.createContext"),
        deferred_(Napi::Promise::Deferred::New(env)),
        model_(std::move(model)),
        params_(params),
        promptChunk_(promptChunk),
        lora_(std::move(lora)),
        draft_(std::move(draft)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    beginCapture();
    llama_context* ctx = nullptr;
    std::string reason;
    try {
      AbortGuard guard;
      std::shared_lock<std::shared_mutex> registry(registryMutex());
      std::shared_lock<std::shared_mutex> lock(model_->adaptersMu);
      int32_t train = llama_model_n_ctx_train(model_->model);
      SharedStreamScope quiet(params_.kv_unified && params_.n_seq_max > 1 && train > 0 &&
                              params_.n_ctx / params_.n_seq_max <= (uint32_t)train);
      ctx = llama_init_from_model(model_->model, params_);
    } catch (const std::exception& e) {
      ctx = nullptr;
      reason = e.what();
    }
    std::string logged = endCapture();
    if (!logged.empty()) reason = reason.empty() ? logged : logged + "; " + reason;
    if (ctx == nullptr) {
      SetError("llama.cpp could not create the context" + (reason.empty() ? std::string() : ": " + reason));
      return;
    }
    llama_context* draftCtx = nullptr;
    if (draft_.model) {
      std::string why;
      try {
        AbortGuard guard;
        beginCapture();
        llama_context_params dp = params_;
        dp.embeddings = false;
        std::shared_lock<std::shared_mutex> registry(registryMutex());
        draftCtx = llama_init_from_model(draft_.model->model, dp);
        why = endCapture();
      } catch (const std::exception& e) {
        endCapture();
        why = e.what();
      }
      if (draftCtx == nullptr) {
        llama_free(ctx);
        SetError("llama.cpp could not create the draft model's context" + (why.empty() ? std::string() : ": " + why));
        return;
      }
    }
    try {
      engine_ = std::make_shared<Engine>(model_, ctx, promptChunk_, draft_.model, draftCtx,
                                         std::make_unique<ThreadPools>(params_.n_threads, params_.n_threads_batch));
    } catch (const std::exception& e) {
      llama_free(ctx);
      if (draftCtx != nullptr) llama_free(draftCtx);
      SetError(std::string("could not start the engine: ") + e.what());
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    engine_->start();
    {
      AddonData* data = addonData(env);
      std::lock_guard<std::mutex> lock(data->enginesMutex);
      data->engines.insert(engine_);
    }
    auto box = std::make_shared<ContextBox>(
        ContextBox{engine_, params_.n_threads, params_.n_threads_batch, lora_, draft_.tokens, draft_.lookupNgram});
    deferred_.Resolve(newWrapped(env, addonData(env)->contextCtor, std::move(box)));
  }

  void OnError(const Napi::Error& e) override {
    deferred_.Reject(makeError(Env(), "ERR_CONTEXT_CREATE", e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<ModelHandle> model_;
  llama_context_params params_;
  int32_t promptChunk_;
  LoraSet lora_;
  DraftConfig draft_;
  std::shared_ptr<Engine> engine_;
};

int32_t intOption(Napi::Env env, const Napi::Object& o, const char* key, int32_t fallback, int32_t lo, int32_t hi) {
  Napi::Value v = opt(o, key);
  if (v.IsEmpty() || v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throwArg(env, key, "an integer", v);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= lo && d <= hi) || d != std::floor(d)) {
    throwError(env, "ERR_INVALID_ARGUMENT",
               std::string("Invalid option ") + key + ": expected an integer from " + std::to_string(lo) + " to " +
                   std::to_string(hi) + ", received " + v.ToString().Utf8Value());
  }
  return (int32_t)d;
}

}  // namespace

Napi::Value Context::Create(Napi::Env env, std::shared_ptr<ModelHandle> model, Napi::Object o) {
  llama_context_params p = llama_context_default_params();
  int32_t sequences = intOption(env, o, "sequences", 1, 1, (int32_t)llama_max_parallel_sequences());
  int32_t contextSize = intOption(env, o, "contextSize", 4096, 1, 1 << 24);
  if ((int64_t)contextSize * sequences > (int64_t)1 << 26) {
    throwError(env, "ERR_INVALID_ARGUMENT",
               "Invalid options contextSize and sequences: their product must be at most 67108864 tokens, received " +
                   std::to_string((int64_t)contextSize * sequences));
  }
  p.n_seq_max = (uint32_t)sequences;
  p.n_ctx = (uint32_t)contextSize * (uint32_t)sequences;
  p.n_batch = (uint32_t)intOption(env, o, "batchSize", 512, 1, 1 << 20);
  p.n_ubatch = std::min<uint32_t>(p.n_batch, (uint32_t)intOption(env, o, "microBatchSize", 512, 1, 1 << 20));
  int32_t threads = intOption(env, o, "threads", common_cpu_get_num_math(), 1, GGML_MAX_N_THREADS);
  p.n_threads = threads;
  p.n_threads_batch = intOption(env, o, "threadsBatch", threads, 1, GGML_MAX_N_THREADS);
  p.kv_unified = false;
  p.no_perf = true;
  Napi::Value fa = opt(o, "flashAttention");
  if (fa.IsBoolean()) {
    p.flash_attn_type = fa.As<Napi::Boolean>().Value() ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  } else if (fa.IsString() && fa.As<Napi::String>().Utf8Value() == "auto") {
    p.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
  } else if (!fa.IsEmpty() && !fa.IsUndefined()) {
    throwArg(env, "flashAttention", "true, false or \"auto\"", fa);
  }
  Napi::Value emb = opt(o, "embeddings");
  if (emb.IsBoolean()) p.embeddings = emb.As<Napi::Boolean>().Value();
  else if (!emb.IsEmpty() && !emb.IsUndefined()) throwArg(env, "embeddings", "a boolean", emb);
  Napi::Value pooling = opt(o, "pooling");
  if (pooling.IsString()) {
    std::string pt = pooling.As<Napi::String>().Utf8Value();
    p.pooling_type = pt == "none"   ? LLAMA_POOLING_TYPE_NONE
                     : pt == "mean" ? LLAMA_POOLING_TYPE_MEAN
                     : pt == "cls"  ? LLAMA_POOLING_TYPE_CLS
                     : pt == "last" ? LLAMA_POOLING_TYPE_LAST
                     : pt == "rank" ? LLAMA_POOLING_TYPE_RANK
                                    : LLAMA_POOLING_TYPE_UNSPECIFIED;
    if (p.pooling_type == LLAMA_POOLING_TYPE_UNSPECIFIED) throwArg(env, "pooling", "\"mean\", \"cls\", \"last\", \"none\" or \"rank\"", pooling);
  }
  // Embeddings: each text must be pooled from one micro-batch. With one KV stream per sequence llama.cpp
  // splits a batch of texts of different lengths into equal slices per sequence, and a text spread over
  // several micro-batches is pooled from its last slice only; one unified stream keeps each text whole.
  if (p.embeddings) {
    p.n_ubatch = p.n_batch;
    p.kv_unified = true;
  }

  int32_t promptChunk = intOption(env, o, "promptChunkSize", std::min<int32_t>(128, (int32_t)p.n_batch), 1, 1 << 20);
  LoraSet lora = readLoraSet(env, opt(o, "lora"), *model);
  DraftConfig draft;
  Napi::Value dm = opt(o, "draftModel");
  if (!dm.IsEmpty() && !dm.IsUndefined()) {
    if (!dm.IsObject() || !dm.As<Napi::Object>().InstanceOf(addonData(env)->modelCtor.Value())) {
      throwArg(env, "draftModel", "a loaded model", dm);
    }
    draft.model = Model::Unwrap(dm.As<Napi::Object>())->handleOrThrow(env);
    if (draft.model->vocabOnly) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid option draftModel: it was loaded with vocabOnly");
    // Drafts are proposed as token ids: the vocabularies must be the same.
    const llama_vocab* a = model->vocab;
    const llama_vocab* b = draft.model->vocab;
    int32_t na = llama_vocab_n_tokens(a), nb = llama_vocab_n_tokens(b);
    bool same = na == nb && llama_vocab_bos(a) == llama_vocab_bos(b) && llama_vocab_eos(a) == llama_vocab_eos(b);
    for (int32_t t = 0; same && t < na; t++) same = std::strcmp(llama_vocab_get_text(a, t), llama_vocab_get_text(b, t)) == 0;
    if (!same) {
      throwError(env, "ERR_INVALID_ARGUMENT",
                 "Invalid option draftModel: its vocabulary differs from the model's (" + std::to_string(nb) + " tokens against " +
                     std::to_string(na) + "); a draft model must share the tokenizer");
    }
  }
  int32_t lookup = intOption(env, o, "lookupNgram", 0, 0, 16);
  if ((draft.model || lookup > 0) && (llama_model_is_recurrent(model->model) || llama_model_is_hybrid(model->model))) {
    // Rejected drafts are taken back out of the cache, which recurrent state cannot do.
    throwError(env, "ERR_INVALID_ARGUMENT", "Speculative decoding needs a model whose cache can drop tokens; this model keeps recurrent state");
  }
  draft.lookupNgram = draft.model ? 0 : lookup;
  draft.tokens = draft.model || lookup > 0 ? intOption(env, o, "draftTokens", draft.model ? 8 : 10, 1, 64) : 0;
  auto* worker = new CreateWorker(env, std::move(model), p, promptChunk, std::move(lora), std::move(draft));
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

// ------------------------------------------------------------------ Context

void Context::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "NativeContext",
                                    {
                                        InstanceMethod<&Context::Generate>("generate"),
                                        InstanceMethod<&Context::ClearSequence>("clearSequence"),
                                        InstanceMethod<&Context::CopySequence>("copySequence"),
                                        InstanceMethod<&Context::SaveSequence>("saveSequence"),
                                        InstanceMethod<&Context::LoadSequence>("loadSequence"),
                                        InstanceMethod<&Context::Embed>("embed"),
                                        InstanceMethod<&Context::BeamSearch>("beamSearch"),
                                        InstanceMethod<&Context::Info>("info"),
                                        InstanceMethod<&Context::Dispose>("dispose"),
                                    });
  addonData(env)->contextCtor = Napi::Persistent(ctor);
  exports.Set("NativeContext", ctor);
}

Context::Context(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Context>(info) {
  std::shared_ptr<ContextBox> box = takeWrapped<ContextBox>(info, "NativeContext");
  engine_ = std::move(box->engine);
  threads_ = box->threads;
  threadsBatch_ = box->threadsBatch;
  defaultLora_ = std::move(box->lora);
  draftTokens_ = box->draftTokens;
  lookupNgram_ = box->lookupNgram;
}

Context::~Context() {
  // Finalizer backstop for a context that was never disposed: stop it off the JS thread, since joining
  // the engine waits for the decode step in flight.
  if (!engine_) return;
  std::shared_ptr<Engine> engine = std::move(engine_);
  AddonData* data = addonData(Env());
  if (data != nullptr) {
    std::lock_guard<std::mutex> lock(data->enginesMutex);
    data->engines.erase(engine);
  }
  std::thread([engine] { engine->stop(); }).detach();
}

std::shared_ptr<Engine> Context::engineOrThrow(Napi::Env env) const {
  if (!engine_) throwError(env, "ERR_DISPOSED", "The context has been disposed");
  return engine_;
}

Napi::Value Context::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  llama_context* ctx = engine->ctx();
  Napi::Object o = Napi::Object::New(env);
  o.Set("contextSize", (double)llama_n_ctx_seq(ctx));
  o.Set("totalContextSize", (double)llama_n_ctx(ctx));
  o.Set("batchSize", (double)llama_n_batch(ctx));
  o.Set("microBatchSize", (double)llama_n_ubatch(ctx));
  o.Set("sequences", (double)llama_n_seq_max(ctx));
  o.Set("threads", threads_);
  o.Set("threadsBatch", threadsBatch_);
  o.Set("canShift", llama_memory_can_shift(llama_get_memory(ctx)));
  o.Set("slidingWindow", llama_model_n_swa(engine->model()->model) > 0);
  const char* pooling = "none";
  switch (llama_pooling_type(ctx)) {
    case LLAMA_POOLING_TYPE_MEAN: pooling = "mean"; break;
    case LLAMA_POOLING_TYPE_CLS: pooling = "cls"; break;
    case LLAMA_POOLING_TYPE_LAST: pooling = "last"; break;
    case LLAMA_POOLING_TYPE_RANK: pooling = "rank"; break;
    default: break;
  }
  o.Set("pooling", pooling);
  o.Set("embeddingSize", llama_model_n_embd_out(engine->model()->model));
  o.Set("rankOutputs", (double)llama_model_n_cls_out(engine->model()->model));
  return o;
}

// Environment teardown: the generation's thread-safe function is about to be freed by Node.
static void closeOnTeardown(void* arg) {
  auto* g = static_cast<GenState*>(arg);
  std::lock_guard<std::mutex> lock(g->mu);
  g->cleanupHookRan = true;
  g->tsfnClosed = true;
  g->aborted.store(true);
}

// generate(seq, tokens: Int32Array, keep, options, onNotify) -> NativeGeneration
namespace {

// Builds a generation's sampler on a libuv worker thread, then queues the generation on its engine, or ends
// it with the error and its code, as the engine reports its own.
// The generation object is already in JS hands: it waits like any queued generation meanwhile.
class SamplerWorker : public Napi::AsyncWorker {
 public:
  SamplerWorker(Napi::Env env, std::shared_ptr<Engine> engine, std::shared_ptr<GenState> gen, common_params_sampling sp)
      : Napi::AsyncWorker(env, "llama-addon.sampler"), engine_(std::move(engine)), gen_(std::move(gen)), sp_(std::move(sp)) {}
  void Execute() override {
    std::string code, error;
    try {
      gen_->sampler = buildSampler(engine_->model(), sp_);
    } catch (const std::exception& e) {
      code = samplerErrorCode(e);
      error = e.what();
    } catch (...) {
      code = "ERR_NATIVE";
      error = "the sampler could not be built";
    }
    try {
      if (error.empty()) engine_->submit(gen_);
      else engine_->fail(gen_, code, error);
    } catch (...) {
      // finish() cannot fail short of memory; nothing is left to report to.
    }
  }
  void OnOK() override {}
  void OnError(const Napi::Error&) override {}

 private:
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<GenState> gen_;
  common_params_sampling sp_;
};

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
  g->tokens.assign(tokens.Data(), tokens.Data() + n);
  g->keep = std::min<int32_t>(keep, (int32_t)n);
  double maxTokens = num("maxTokens", (double)INT32_MAX);
  if (!(maxTokens >= 1)) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid option maxTokens: expected at least 1");
  g->maxTokens = (int32_t)std::min(maxTokens, (double)INT32_MAX);
  g->capacity = (size_t)std::max(1.0, std::min(num("queueSize", 32), 1e6));
  Napi::Value shift = opt(o, "contextShift");
  if (shift.IsBoolean()) g->contextShift = shift.As<Napi::Boolean>().Value();
  else if (!shift.IsEmpty() && !shift.IsUndefined()) throwArg(env, "contextShift", "a boolean", shift);
  int32_t cap = engine->seqCapacity();
  g->shiftKeep = (int32_t)std::max(0.0, std::min(num("shiftKeep", 0), (double)cap));
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
  // A grammar is checked and parsed off the JS thread (one of megabytes takes a second); without one the
  // sampler is cheap and built here.
  const bool deferred = g->hasGrammar;
  if (!deferred) g->sampler = buildSampler(env, engine->model(), sp);

  // Notifications to JS: data available, paused on a full queue, done.
  auto* ctxBox = new std::shared_ptr<GenState>(g);
  g->tsfn = Napi::ThreadSafeFunction::New(
      env, info[4].As<Napi::Function>(), "llama-addon.generation", 0, 1, ctxBox,
      [](Napi::Env env, void*, std::shared_ptr<GenState>* box) {
        GenState& st = **box;
        bool hookRan;
        {
          std::lock_guard<std::mutex> lock(st.mu);
          hookRan = st.cleanupHookRan;
        }
        if (!hookRan) napi_remove_env_cleanup_hook(env, closeOnTeardown, box->get());
        delete box;
      },
      (void*)nullptr);
  // Registered after the thread-safe function, so it runs before Node frees it at teardown.
  g->env = env;
  napi_add_env_cleanup_hook(env, closeOnTeardown, g.get());
  g->engine = engine;
  Napi::Object gen = Generation::NewInstance(env, g);
  if (deferred) (new SamplerWorker(env, engine, g, std::move(sp)))->Queue();
  else engine->submit(g);
  return gen;
}

Napi::Value Context::ClearSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  int32_t seq = (int32_t)argInteger(info, 0, "sequence", 0, (int64_t)llama_n_seq_max(engine->ctx()) - 1);
  engine->clearSequence(seq);
  return env.Undefined();
}

// ------------------------------------------------------------------ sequence state

namespace {

// Runs work on the engine thread between two decode steps and settles a promise with the outcome on the
// JS thread. No libuv worker waits for the engine meanwhile.
class EngineTask {
 public:
  using Work = std::function<void(llama_context*)>;
  using Done = std::function<Napi::Value(Napi::Env)>;

  static Napi::Promise Run(Napi::Env env, const std::shared_ptr<Engine>& engine, Work work, Done done) {
    auto* task = new EngineTask();
    task->deferred_ = std::make_unique<Napi::Promise::Deferred>(Napi::Promise::Deferred::New(env));
    Napi::Promise promise = task->deferred_->Promise();
    task->work_ = std::move(work);
    task->done_ = std::move(done);
    task->tsfn_ = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                                "llama-addon.sequenceState", 0, 1);
    engine->post([task](llama_context* ctx) {
      try {
        if (ctx == nullptr) {
          task->code_ = "ERR_DISPOSED";
          throw std::runtime_error("The context was disposed before the operation ran");
        }
        AbortGuard guard;
        task->work_(ctx);
      } catch (const std::exception& e) {
        task->error_ = e.what();
        if (task->code_.empty()) task->code_ = "ERR_INVALID_STATE";
      } catch (...) {
        task->error_ = "unknown native error";
        task->code_ = "ERR_NATIVE";
      }
      Napi::ThreadSafeFunction tsfn = task->tsfn_;
      napi_status st = tsfn.BlockingCall(task, [](Napi::Env env, Napi::Function, EngineTask* t) {
        if (env != nullptr) {
          try {
            if (t->error_.empty()) t->deferred_->Resolve(t->done_(env));
            else t->deferred_->Reject(makeError(env, t->code_.c_str(), t->error_).Value());
          } catch (const std::exception& e) {
            try {
              t->deferred_->Reject(makeError(env, "ERR_NATIVE", e.what()).Value());
            } catch (...) {
            }
          } catch (...) {  // nothing may escape a callback from another thread
            // the environment is going away (a worker thread terminated)
          }
        }
        delete t;
      });
      if (st != napi_ok) delete task;  // the environment is shutting down
      tsfn.Release();
    });
    return promise;
  }

 private:
  std::unique_ptr<Napi::Promise::Deferred> deferred_;
  Napi::ThreadSafeFunction tsfn_;
  Work work_;
  Done done_;
  std::string error_;
  std::string code_;
};

// A sequence's state as llama.cpp writes it: magic, sequence id, then for a plain KV cache the stream count
// and one section per stream, all empty (a zero cell count) except the sequence's own stream. For such
// models a saved state is rewritten to one stream, so that it loads into a context with any number of
// sequences; other models (sliding-window, recurrent) keep the layout they were saved with.
constexpr size_t kStateHead = 12;  // magic u32, seq id i32, stream count u32

bool portableState(const ModelHandle& m) {
  return !llama_model_is_recurrent(m.model) && !llama_model_is_hybrid(m.model) && llama_model_n_swa(m.model) == 0 &&
         !m.facts.hasEncoder;
}

uint32_t readU32(const std::vector<uint8_t>& d, size_t at) {
  uint32_t v;
  std::memcpy(&v, d.data() + at, 4);
  return v;
}

bool allZero(const std::vector<uint8_t>& d, size_t from, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (d[from + i] != 0) return false;
  }
  return true;
}

// Keeps only stream `s`'s section; false when the data does not have the expected shape.
bool toOneStream(std::vector<uint8_t>& d, uint32_t s) {
  if (d.size() < kStateHead) return false;
  uint32_t n = readU32(d, 8);
  if (s >= n || d.size() < kStateHead + 4ull * n) return false;
  size_t before = 4ull * s, after = 4ull * (n - s - 1);
  if (!allZero(d, kStateHead, before) || !allZero(d, d.size() - after, after)) return false;
  std::vector<uint8_t> out(d.begin(), d.begin() + kStateHead);
  uint32_t one = 1;
  std::memcpy(out.data() + 8, &one, 4);
  out.insert(out.end(), d.begin() + kStateHead + before, d.end() - after);
  d.swap(out);
  return true;
}

// The reverse: puts a one-stream state into stream `s` of `n`.
bool toStreams(std::vector<uint8_t>& d, uint32_t s, uint32_t n) {
  if (d.size() < kStateHead + 4 || readU32(d, 8) != 1) return false;
  std::vector<uint8_t> out(d.begin(), d.begin() + kStateHead);
  std::memcpy(out.data() + 8, &n, 4);
  out.insert(out.end(), 4ull * s, 0);
  out.insert(out.end(), d.begin() + kStateHead, d.end());
  out.insert(out.end(), 4ull * (n - s - 1), 0);
  d.swap(out);
  return true;
}

// Checks the cell section of a plain KV-cache state before llama.cpp reads it: llama.cpp trusts the counts
// and positions it finds (a cell count of 2^31-1 makes it reserve a batch that size; a position near 2^31
// breaks every later decode of the context). "" when the state is usable, else the reason.
std::string checkKvState(const std::vector<uint8_t>& d, uint32_t maxCells, bool cellExt) {
  if (d.size() < kStateHead) return "it is shorter than a state header";
  uint32_t streams = readU32(d, 8);
  if (streams == 0 || streams > 4096) return "it has " + std::to_string(streams) + " KV streams";
  size_t at = kStateHead;
  auto need = [&](uint64_t n) { return n <= d.size() - at; };
  auto u64 = [&](size_t pos) {
    uint64_t v;
    std::memcpy(&v, d.data() + pos, 8);
    return v;
  };
  bool seen = false;
  for (uint32_t s = 0; s < streams; s++) {
    if (!need(4)) return "it is truncated (stream " + std::to_string(s) + " is missing)";
    uint32_t cells = readU32(d, at);
    at += 4;
    if (cells == 0) continue;
    if (seen) return "it holds cells in more than one stream";
    seen = true;
    if (cells > maxCells) {
      return "it holds " + std::to_string(cells) + " cells, but a sequence of this context has room for " + std::to_string(maxCells);
    }
    if (cellExt) return {};  // cells carry model-specific extras: llama.cpp checks the rest
    if (!need((uint64_t)cells * 12)) return "it is truncated (its cell list is cut off)";
    int64_t last = -1;
    for (uint32_t c = 0; c < cells; c++, at += 12) {
      int32_t pos;
      std::memcpy(&pos, d.data() + at, 4);
      uint32_t nSeq = readU32(d, at + 4);
      if (nSeq != 1) return "cell " + std::to_string(c) + " belongs to " + std::to_string(nSeq) + " sequences (expected 1)";
      if (pos < 0 || (uint32_t)pos >= maxCells || pos <= last) {
        return "cell " + std::to_string(c) + " has position " + std::to_string(pos) + " (expected increasing positions from 0 to " +
               std::to_string(maxCells - 1) + ")";
      }
      last = pos;
    }
    // The data section (llama_kv_cache::state_write_data): every layer's K rows, then its V rows or, when V is
    // transposed, V's elements. Its length follows from the counts in it; llama.cpp checks the counts against
    // the context, this only finds where the section ends, so that the next stream's cell count is read from
    // where llama.cpp will read it.
    if (!need(8)) return "it is truncated (its data section is missing)";
    uint32_t vTrans = readU32(d, at), layers = readU32(d, at + 4);
    at += 8;
    if (vTrans > 1 || layers == 0 || layers > 65536) return "its data section has " + std::to_string(layers) + " layers";
    for (uint32_t l = 0; l < layers; l++) {
      if (!need(12)) return "it is truncated (layer " + std::to_string(l) + "'s keys are missing)";
      uint64_t row = u64(at + 4);
      at += 12;
      if (row > (1u << 26) || !need(row * cells)) return "layer " + std::to_string(l) + "'s keys do not fit in the state";
      at += row * cells;
    }
    for (uint32_t l = 0; l < layers; l++) {
      if (vTrans == 0) {
        if (!need(12)) return "it is truncated (layer " + std::to_string(l) + "'s values are missing)";
        uint64_t row = u64(at + 4);
        at += 12;
        if (row > (1u << 26) || !need(row * cells)) return "layer " + std::to_string(l) + "'s values do not fit in the state";
        at += row * cells;
      } else {
        if (!need(12)) return "it is truncated (layer " + std::to_string(l) + "'s values are missing)";
        uint64_t el = readU32(d, at + 4), embd = readU32(d, at + 8);
        at += 12;
        if (el > 16 || embd > (1u << 24) || !need(el * embd * cells)) return "layer " + std::to_string(l) + "'s values do not fit in the state";
        at += el * embd * cells;
      }
    }
  }
  if (at != d.size()) return "it has " + std::to_string(d.size() - at) + " bytes after its last section";
  return {};
}

}  // namespace

// copySequence(src, dst, length): dst holds the first `length` cached tokens of src afterwards (in order
// with the generations queued before). The data is copied, so the two share nothing afterwards.
Napi::Value Context::CopySequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  int64_t nSeq = (int64_t)llama_n_seq_max(engine->ctx());
  int32_t src = (int32_t)argInteger(info, 0, "source", 0, nSeq - 1);
  int32_t dst = (int32_t)argInteger(info, 1, "destination", 0, nSeq - 1);
  int32_t length = (int32_t)argInteger(info, 2, "length", 0, INT32_MAX);
  if (src == dst) return env.Undefined();
  engine->post([src, dst, length](llama_context* ctx) {
    if (ctx == nullptr) return;
    llama_memory_t mem = llama_get_memory(ctx);
    llama_memory_seq_rm(mem, dst, -1, -1);
    if (length == 0) return;
    // Each sequence has its own KV stream: llama.cpp's seq_cp between streams only schedules a copy for
    // the next decode, which a save before it would miss. A state round trip copies at once.
    try {
      AbortGuard guard;
      size_t size = llama_state_seq_get_size(ctx, src);
      std::vector<uint8_t> data(size);
      if (size == 0 || llama_state_seq_get_data(ctx, data.data(), size, src) != size ||
          llama_state_seq_set_data(ctx, data.data(), size, dst) == 0) {
        llama_memory_seq_rm(mem, dst, -1, -1);
        return;
      }
      llama_memory_seq_rm(mem, dst, length, -1);
    } catch (const std::exception&) {
      // The destination stays empty; the generation that follows decodes its prompt in full.
      llama_memory_seq_rm(mem, dst, -1, -1);
    }
  });
  return env.Undefined();
}

// saveSequence(seq) -> Promise<{ data: Buffer, streams }>: the sequence's KV state. `streams` is 1 when
// the state was made portable across contexts with any number of sequences.
Napi::Value Context::SaveSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  uint32_t nSeq = llama_n_seq_max(engine->ctx());
  int32_t seq = (int32_t)argInteger(info, 0, "sequence", 0, (int64_t)nSeq - 1);
  bool portable = portableState(*engine->model());
  auto data = std::make_shared<std::vector<uint8_t>>();
  auto streams = std::make_shared<uint32_t>(nSeq);
  return EngineTask::Run(
      env, engine,
      [=](llama_context* ctx) {
        size_t size = llama_state_seq_get_size(ctx, seq);
        if (size == 0) throw std::runtime_error("llama.cpp could not measure the sequence state");
        data->resize(size);
        if (llama_state_seq_get_data(ctx, data->data(), size, seq) != size) {
          throw std::runtime_error("llama.cpp could not copy the sequence state");
        }
        if (portable && nSeq > 1 && toOneStream(*data, (uint32_t)seq)) *streams = 1;
      },
      [=](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("data", Napi::Buffer<uint8_t>::Copy(env, data->data(), data->size()));
        o.Set("streams", *streams);
        return o;
      });
}

// loadSequence(seq, data: Uint8Array, streams) -> Promise<void>: replaces the sequence's KV state.
Napi::Value Context::LoadSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  uint32_t nSeq = llama_n_seq_max(engine->ctx());
  int32_t seq = (int32_t)argInteger(info, 0, "sequence", 0, (int64_t)nSeq - 1);
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throwArg(env, "data", "a Uint8Array", info[1]);
  }
  uint32_t streams = (uint32_t)argInteger(info, 2, "streams", 1, 1 << 16);
  Napi::Uint8Array bytes = info[1].As<Napi::Uint8Array>();
  auto data = std::make_shared<std::vector<uint8_t>>(bytes.Data(), bytes.Data() + bytes.ElementLength());
  if (streams != nSeq) {
    if (streams != 1 || !portableState(*engine->model()) || !toStreams(*data, (uint32_t)seq, nSeq)) {
      throwError(env, "ERR_INVALID_STATE",
                 "The state was saved from a context with " + std::to_string(streams) +
                     " sequences; for this model it loads only into a context with as many, but this one has " +
                     std::to_string(nSeq));
    }
  }
  if (portableState(*engine->model())) {
    int32_t rope = llama_model_rope_type(engine->model()->model);
    bool cellExt = rope == LLAMA_ROPE_TYPE_MROPE || rope == LLAMA_ROPE_TYPE_IMROPE || rope == LLAMA_ROPE_TYPE_VISION;
    std::string why = checkKvState(*data, llama_n_ctx_seq(engine->ctx()), cellExt);
    if (!why.empty()) throwError(env, "ERR_INVALID_STATE", "The session state cannot be loaded into this context: " + why);
  }
  return EngineTask::Run(
      env, engine,
      [=](llama_context* ctx) {
        beginCapture();
        size_t n = llama_state_seq_set_data(ctx, data->data(), data->size(), seq);
        std::string logged = endCapture();
        if (n == 0) {
          llama_memory_seq_rm(llama_get_memory(ctx), seq, -1, -1);
          throw std::runtime_error("llama.cpp rejected the sequence state" + (logged.empty() ? "" : ": " + logged));
        }
      },
      [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
}

// embed(inputs: Int32Array[], sequences: number[], normalize) -> Promise<Float32Array[]>: one vector per
// input (pooled), or every token's vectors one after another (pooling none). As many inputs as there are
// free sequences, and as fit in a batch, are decoded together.
Napi::Value Context::Embed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  llama_context* lctx = engine->ctx();
  if (!info[0].IsArray()) throwArg(env, "inputs", "an array of Int32Array", info[0]);
  if (!info[1].IsArray()) throwArg(env, "sequences", "an array of sequence ids", info[1]);
  bool normalize = argBool(info, 2, "normalize");
  const ModelHandle& model = *engine->model();
  auto inputs = std::make_shared<std::vector<std::vector<llama_token>>>();
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t nBatch = llama_n_batch(lctx);
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) throwArg(env, "inputs", "an array of Int32Array", v);
    Napi::Int32Array t = v.As<Napi::Int32Array>();
    if (t.ElementLength() == 0) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid input " + std::to_string(i) + ": expected at least one token");
    if (t.ElementLength() > nBatch || (int64_t)t.ElementLength() > engine->seqCapacity()) {
      throwError(env, "ERR_CONTEXT_FULL", "Input " + std::to_string(i) + " has " + std::to_string(t.ElementLength()) +
                                              " tokens; this context embeds at most " +
                                              std::to_string(std::min<int64_t>(nBatch, engine->seqCapacity())) +
                                              " (its batchSize and contextSize)");
    }
    checkTokens(env, model, t.Data(), t.ElementLength(), "token");
    inputs->emplace_back(t.Data(), t.Data() + t.ElementLength());
  }
  auto seqs = std::make_shared<std::vector<int32_t>>();
  Napi::Array sa = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < sa.Length(); i++) seqs->push_back(sa.Get(i).As<Napi::Number>().Int32Value());
  if (seqs->empty()) throwError(env, "ERR_NO_SEQUENCE", "No free sequence to embed with");
  enum llama_pooling_type pooling = llama_pooling_type(lctx);
  int32_t dim = pooling == LLAMA_POOLING_TYPE_RANK ? (int32_t)llama_model_n_cls_out(model.model) : llama_model_n_embd_out(model.model);
  bool encoder = llama_model_has_encoder(model.model) && !llama_model_has_decoder(model.model);
  auto out = std::make_shared<std::vector<std::vector<float>>>(inputs->size());
  Engine* eng = engine.get();
  LoraSet lora = defaultLora_;
  return EngineTask::Run(
      env, engine,
      [=](llama_context* ctx) {
        eng->applyLora(lora);
        llama_memory_t mem = llama_get_memory(ctx);
        llama_batch batch = llama_batch_init((int32_t)nBatch, 0, 1);
        struct Free {
          llama_batch& b;
          ~Free() { llama_batch_free(b); }
        } freeBatch{batch};
        size_t next = 0;
        while (next < inputs->size()) {
          // Fill one batch: whole inputs, one per free sequence.
          batch.n_tokens = 0;
          std::vector<std::pair<size_t, int32_t>> placed;  // input index, sequence
          while (next < inputs->size() && placed.size() < seqs->size() &&
                 batch.n_tokens + (int32_t)(*inputs)[next].size() <= (int32_t)nBatch) {
            int32_t seq = (*seqs)[placed.size()];
            const auto& toks = (*inputs)[next];
            for (size_t k = 0; k < toks.size(); k++) {
              int32_t i = batch.n_tokens++;
              batch.token[i] = toks[k];
              batch.pos[i] = (llama_pos)k;
              batch.n_seq_id[i] = 1;
              batch.seq_id[i][0] = seq;
              batch.logits[i] = true;
            }
            placed.emplace_back(next, seq);
            next++;
          }
          for (auto& pl : placed) llama_memory_seq_rm(mem, pl.second, -1, -1);
          int32_t ret = encoder ? llama_encode(ctx, batch) : llama_decode(ctx, batch);
          if (ret != 0) {
            for (auto& pl : placed) llama_memory_seq_rm(mem, pl.second, -1, -1);
            throw std::runtime_error("llama.cpp failed to compute embeddings (status " + std::to_string(ret) + ")");
          }
          int32_t row = 0;
          for (auto& pl : placed) {
            auto& v = (*out)[pl.first];
            size_t n = (*inputs)[pl.first].size();
            if (pooling == LLAMA_POOLING_TYPE_NONE) {
              v.resize(n * (size_t)dim);
              for (size_t k = 0; k < n; k++) {
                const float* e = llama_get_embeddings_ith(ctx, row + (int32_t)k);
                if (e == nullptr) throw std::runtime_error("llama.cpp returned no token embeddings");
                std::copy(e, e + dim, v.begin() + (long)(k * dim));
              }
            } else {
              const float* e = llama_get_embeddings_seq(ctx, pl.second);
              if (e == nullptr) throw std::runtime_error("llama.cpp returned no pooled embedding");
              v.assign(e, e + dim);
            }
            if (normalize && pooling != LLAMA_POOLING_TYPE_RANK) {
              for (size_t off = 0; off < v.size(); off += (size_t)dim) {
                double sum = 0;
                for (int32_t k = 0; k < dim; k++) sum += (double)v[off + k] * v[off + k];
                double norm = std::sqrt(sum);
                if (norm > 0) {
                  for (int32_t k = 0; k < dim; k++) v[off + k] = (float)(v[off + k] / norm);
                }
              }
            }
            row += (int32_t)n;
          }
          for (auto& pl : placed) llama_memory_seq_rm(mem, pl.second, -1, -1);
        }
      },
      [=](Napi::Env env) -> Napi::Value {
        Napi::Array res = Napi::Array::New(env, out->size());
        for (uint32_t i = 0; i < out->size(); i++) {
          Napi::Float32Array f = Napi::Float32Array::New(env, (*out)[i].size());
          std::copy((*out)[i].begin(), (*out)[i].end(), f.Data());
          res.Set(i, f);
        }
        return res;
      });
}

// beamSearch(sequences: number[], tokens: Int32Array, keep, { beams, maxTokens, lengthPenalty, logitBias })
//   -> Promise<[{ tokens: Int32Array, logprob, score, finished }]>, best first.
Napi::Value Context::BeamSearch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  const ModelHandle& model = *engine->model();
  if (!info[0].IsArray()) throwArg(env, "sequences", "an array of sequence ids", info[0]);
  Napi::Int32Array tokens = argTokens(info, 1, "tokens");
  int32_t keep = (int32_t)argInteger(info, 2, "keep", 0, INT32_MAX);
  if (!info[3].IsObject()) throwArg(env, "options", "an object", info[3]);
  Napi::Object o = info[3].As<Napi::Object>();
  BeamParams bp;
  Napi::Array seqs = info[0].As<Napi::Array>();
  for (uint32_t i = 0; i < seqs.Length(); i++) bp.seqs.push_back(seqs.Get(i).As<Napi::Number>().Int32Value());
  bp.beams = (int32_t)opt(o, "beams").As<Napi::Number>().Int32Value();
  if (bp.beams < 1 || (int32_t)bp.seqs.size() != 2 * bp.beams) {
    throwError(env, "ERR_INVALID_ARGUMENT", "Beam search with " + std::to_string(bp.beams) + " beams needs " +
                                                 std::to_string(2 * bp.beams) + " sequences");
  }
  size_t n = tokens.ElementLength();
  if (n == 0) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid prompt: expected at least one token, received none");
  checkTokens(env, model, tokens.Data(), n, "prompt token");
  bp.prompt.assign(tokens.Data(), tokens.Data() + n);
  bp.keep = std::min<int32_t>(keep, (int32_t)n - 1);
  Napi::Value mt = opt(o, "maxTokens");
  bp.maxTokens = mt.IsNumber() ? std::max(1, mt.As<Napi::Number>().Int32Value()) : 32;
  Napi::Value lpv = opt(o, "lengthPenalty");
  if (lpv.IsNumber()) bp.lengthPenalty = (float)lpv.As<Napi::Number>().DoubleValue();
  Napi::Value bias = opt(o, "logitBias");
  if (bias.IsArray()) {
    Napi::Array arr = bias.As<Napi::Array>();
    int32_t nVocab = llama_vocab_n_tokens(model.vocab);
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Array pair = arr.Get(i).As<Napi::Array>();
      int32_t t = pair.Get(0u).As<Napi::Number>().Int32Value();
      if (t < 0 || t >= nVocab) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid option logitBias: token " + std::to_string(t) + " is not in the vocabulary");
      bp.logitBias.emplace_back(t, (float)pair.Get(1u).As<Napi::Number>().DoubleValue());
    }
  }
  Napi::Value lora = opt(o, "lora");
  LoraSet set = lora.IsEmpty() || lora.IsUndefined() ? defaultLora_ : readLoraSet(env, lora, model);
  auto params = std::make_shared<BeamParams>(std::move(bp));
  Engine* eng = engine.get();
  auto out = std::make_shared<std::vector<BeamHypothesis>>();
  const llama_vocab* vocab = model.vocab;
  return EngineTask::Run(
      env, engine,
      [=](llama_context* ctx) {
        eng->applyLora(set);
        *out = beamSearch(ctx, vocab, *params);
      },
      [=](Napi::Env env) -> Napi::Value {
        Napi::Array res = Napi::Array::New(env, out->size());
        for (uint32_t i = 0; i < out->size(); i++) {
          const BeamHypothesis& h = (*out)[i];
          Napi::Object ho = Napi::Object::New(env);
          ho.Set("tokens", int32Array(env, h.tokens));
          ho.Set("logprob", h.logprob);
          ho.Set("score", h.score);
          ho.Set("finished", h.finished);
          res.Set(i, ho);
        }
        return res;
      });
}

Napi::Value Context::Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  std::shared_ptr<Engine> engine = std::move(engine_);
  engine_.reset();
  if (!engine) {
    deferred.Resolve(env.Undefined());
    return deferred.Promise();
  }
  {
    AddonData* data = addonData(env);
    std::lock_guard<std::mutex> lock(data->enginesMutex);
    data->engines.erase(engine);
  }
  // Joining the engine thread waits for the decode step in flight: do it off the JS thread.
  struct StopWorker : Napi::AsyncWorker {
    StopWorker(Napi::Env env, std::shared_ptr<Engine> e, Napi::Promise::Deferred d)
        : Napi::AsyncWorker(env, "llama-addon.disposeContext"), e_(std::move(e)), d_(d) {}
    void Execute() override {
      e_->stop();
      e_.reset();
    }
    void OnOK() override { d_.Resolve(Env().Undefined()); }
    std::shared_ptr<Engine> e_;
    Napi::Promise::Deferred d_;
  };
  (new StopWorker(env, std::move(engine), deferred))->Queue();
  return deferred.Promise();
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
    if (g.unrefd && !done && !g.tsfnClosed) {
      g.tsfn.Ref(env);
      g.unrefd = false;
    }
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

void pauseUnref(Napi::Env env, GenState& g) {
  std::lock_guard<std::mutex> lock(g.mu);
  if (!g.done && !g.tsfnClosed && g.full() && !g.unrefd) {
    g.tsfn.Unref(env);
    g.unrefd = true;
  }
}

Napi::Value Generation::Abort(const Napi::CallbackInfo& info) {
  state_->aborted.store(true);
  {
    // A paused generation does not hold the process open; its final notification must.
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->unrefd && !state_->done && !state_->tsfnClosed) {
      state_->tsfn.Ref(info.Env());
      state_->unrefd = false;
    }
  }
  if (auto engine = state_->engine.lock()) engine->wake();
  return info.Env().Undefined();
}

}  // namespace la
