#include "context.h"
#include "backends.h"

#include <optional>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <future>
#include <thread>

#include "addon_data.h"
#include "common.h"
#include "generation.h"
#include "errors.h"
#include "guard.h"
#include "log.h"
#include "pool_worker.h"

namespace la {

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
  // Flash attention of the draft model's context: the main context's unless draftFlashAttention says
  // (JS decides 'auto' per model: the draft's heads may differ).
  std::optional<llama_flash_attn_type> flashAttn;
};

class CreateWorker : public PoolWorker {
 public:
  CreateWorker(Napi::Env env, std::shared_ptr<ModelHandle> model, llama_context_params params, int32_t promptChunk,
               LoraSet lora, DraftConfig draft, bool adaptive, bool adaptiveBatch)
      : PoolWorker(env, "llama-addon.createContext"),
        deferred_(Napi::Promise::Deferred::New(env)),
        model_(std::move(model)),
        params_(params),
        promptChunk_(promptChunk),
        lora_(std::move(lora)),
        draft_(std::move(draft)),
        adaptive_(adaptive),
        adaptiveBatch_(adaptiveBatch) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    llama_context* ctx = nullptr;
    std::string reason;
    std::optional<LogCapture> capture(std::in_place);
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
    if (ctx == nullptr) {
      std::string logged = capture->take();
      if (!logged.empty()) reason = reason.empty() ? logged : logged + "; " + reason;
      SetError("llama.cpp could not create the context" + (reason.empty() ? std::string() : ": " + reason));
      return;
    }
    capture.reset();  // the context's warnings are logged now
    llama_context* draftCtx = nullptr;
    if (draft_.model) {
      std::string why;
      LogCapture draftCapture;
      try {
        AbortGuard guard;
        llama_context_params dp = params_;
        dp.embeddings = false;
        if (draft_.flashAttn) dp.flash_attn_type = *draft_.flashAttn;
        std::shared_lock<std::shared_mutex> registry(registryMutex());
        draftCtx = llama_init_from_model(draft_.model->model, dp);
      } catch (const std::exception& e) {
        why = e.what();
      }
      if (draftCtx == nullptr) {
        std::string logged = draftCapture.take();
        if (!logged.empty()) why = why.empty() ? logged : logged + "; " + why;
        llama_free(ctx);
        SetError("llama.cpp could not create the draft model's context" + (why.empty() ? std::string() : ": " + why));
        return;
      }
    }
    try {
      engine_ = std::make_shared<Engine>(model_, ctx, promptChunk_, draft_.model, draftCtx,
                                         std::make_unique<ThreadPools>(params_.n_threads, params_.n_threads_batch));
      engine_->tuneThreads(adaptive_ ? params_.n_threads : 0, adaptiveBatch_ ? params_.n_threads_batch : 0);
    } catch (const std::exception& e) {
      llama_free(ctx);
      if (draftCtx != nullptr) llama_free(draftCtx);
      SetError(std::string("could not start the engine: ") + e.what());
    }
  }

  void OnAbandon() override { engine_.reset(); }

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
  bool adaptive_, adaptiveBatch_;  // threads: 'auto' (and threadsBatch)
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

// A flash-attention option: true, false or "auto"; absent: none.
std::optional<llama_flash_attn_type> flashAttnOption(Napi::Env env, const Napi::Object& o, const char* key) {
  Napi::Value v = opt(o, key);
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  if (v.IsString() && v.As<Napi::String>().Utf8Value() == "auto") return LLAMA_FLASH_ATTN_TYPE_AUTO;
  if (!v.IsEmpty() && !v.IsUndefined()) throwArg(env, key, "true, false or \"auto\"", v);
  return std::nullopt;
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
  // kvUnified: one KV buffer of contextSize cells that every sequence draws from (llama.cpp's kv_unified),
  // so that one sequence alone can use all of it; otherwise each sequence has contextSize cells of its own.
  Napi::Value unified = opt(o, "kvUnified");
  if (!unified.IsEmpty() && !unified.IsUndefined() && !unified.IsBoolean()) throwArg(env, "kvUnified", "a boolean", unified);
  bool kvUnified = unified.IsBoolean() && unified.As<Napi::Boolean>().Value();
  p.n_seq_max = (uint32_t)sequences;
  p.n_ctx = kvUnified ? (uint32_t)contextSize : (uint32_t)contextSize * (uint32_t)sequences;
  p.n_batch = (uint32_t)intOption(env, o, "batchSize", 512, 1, 1 << 20);
  p.n_ubatch = std::min<uint32_t>(p.n_batch, (uint32_t)intOption(env, o, "microBatchSize", 512, 1, 1 << 20));
  int32_t threads = intOption(env, o, "threads", common_cpu_get_num_math(), 1, GGML_MAX_N_THREADS);
  p.n_threads = threads;
  p.n_threads_batch = intOption(env, o, "threadsBatch", threads, 1, GGML_MAX_N_THREADS);
  auto flag = [&](const char* key) {
    Napi::Value v = opt(o, key);
    if (!v.IsEmpty() && !v.IsUndefined() && !v.IsBoolean()) throwArg(env, key, "a boolean", v);
    return v.IsBoolean() && v.As<Napi::Boolean>().Value();
  };
  bool adaptive = flag("adaptiveThreads");
  bool adaptiveBatch = flag("adaptiveThreadsBatch");
  p.kv_unified = kvUnified;
  p.no_perf = true;
  if (auto fa = flashAttnOption(env, o, "flashAttention")) p.flash_attn_type = *fa;
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
    p.kv_unified = true;
    // llama.cpp reserves the compute graph for min(n_ctx, n_ubatch) tokens rounded up to a multiple of the
    // sequences, but leaves the outputs at the unrounded count: mean and rank pooling then fail to build
    // (GGML_ASSERT ggml_can_mul_mat) with 3, 5, 6 or 7 sequences. A batch that is a multiple of the
    // sequences and not above the context (which llama.cpp only pads up) is not rounded. A text (which
    // must fit in the context's cells anyway) can lose up to sequences - 1 tokens of batchSize: ctx.batchSize
    // and ERR_CONTEXT_FULL say the count in use.
    uint32_t ub = std::min(p.n_batch, p.n_ctx);
    if (ub % p.n_seq_max != 0) ub = std::max(p.n_seq_max, ub / p.n_seq_max * p.n_seq_max);
    p.n_batch = p.n_ubatch = ub;
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
  draft.flashAttn = flashAttnOption(env, o, "draftFlashAttention");
  draft.lookupNgram = draft.model ? 0 : lookup;
  draft.tokens = draft.model || lookup > 0 ? intOption(env, o, "draftTokens", draft.model ? 8 : 10, 1, 64) : 0;
  auto* worker = new CreateWorker(env, std::move(model), p, promptChunk, std::move(lora), std::move(draft), adaptive, adaptiveBatch);
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
                                        InstanceMethod<&Context::AbortTask>("abortTask"),
                                        InstanceMethod<&Context::ExpectPrompts>("expectPrompts"),
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

// expectPrompts(delta): prompts on their way to this context, counted up (+1) when a request arrives and down
// (-1) when its generation is queued or it fails (Engine::expectPrompts). After disposal: nothing to wait for.
Napi::Value Context::ExpectPrompts(const Napi::CallbackInfo& info) {
  int32_t delta = (int32_t)argInteger(info, 0, "delta", -1024, 1024);
  if (engine_) engine_->expectPrompts(delta);
  return info.Env().Undefined();
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
  o.Set("threadsInUse", engine->threadsInUse());
  o.Set("threadsBatchInUse", engine->threadsBatchInUse());
  o.Set("promptsExpected", engine->promptsExpected());
  o.Set("canShift", llama_memory_can_shift(llama_get_memory(ctx)));
  o.Set("kvUnified", kvStreams(ctx) == 1 && llama_n_seq_max(ctx) > 1);
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

Napi::Value Context::ClearSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  int32_t seq = (int32_t)argInteger(info, 0, "sequence", 0, (int64_t)llama_n_seq_max(engine->ctx()) - 1);
  engine->clearSequence(seq);
  return env.Undefined();
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
  struct StopWorker : PoolWorker {
    StopWorker(Napi::Env env, std::shared_ptr<Engine> e, Napi::Promise::Deferred d)
        : PoolWorker(env, "llama-addon.disposeContext"), e_(std::move(e)), d_(d) {}
    void Execute() override {
      e_->stop();
      e_.reset();
    }
    void OnOK() override { d_.Resolve(Env().Undefined()); }
    void OnError(const Napi::Error&) override { d_.Resolve(Env().Undefined()); }  // freed as far as it could be
    std::shared_ptr<Engine> e_;
    Napi::Promise::Deferred d_;
  };
  (new StopWorker(env, std::move(engine), deferred))->Queue();
  return deferred.Promise();
}

}  // namespace la
