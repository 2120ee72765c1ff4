#include "model.h"

#include <pthread.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <cmath>
#include <exception>
#include <string>
#include <vector>

#include "addon_data.h"
#include "backends.h"
#include "chat_template.h"
#include "grammar.h"
#include "lora.h"
#include "context.h"
#include "errors.h"
#include "guard.h"
#include "log.h"
#include "model_check.h"
#include "promise_worker.h"
#include "pool_worker.h"

namespace la {


// ---------------------------------------------------------------- loading

namespace {

void readFacts(ModelHandle& h) {
  ModelFacts& f = h.facts;
  const llama_model* m = h.model;
  char desc[256] = {0};
  llama_model_desc(m, desc, sizeof desc);
  f.description = desc;
  f.parameters = llama_model_n_params(m);
  f.sizeBytes = llama_model_size(m);
  f.vocabSize = llama_vocab_n_tokens(h.vocab);
  f.bos = llama_vocab_bos(h.vocab);
  f.eos = llama_vocab_eos(h.vocab);
  f.eot = llama_vocab_eot(h.vocab);
  f.addBos = llama_vocab_get_add_bos(h.vocab);
  const char* tmpl = llama_model_chat_template(m, nullptr);
  f.hasChatTemplate = tmpl != nullptr;
  if (tmpl != nullptr) f.chatTemplate = tmpl;
  f.contextLength = llama_model_n_ctx_train(m);
  f.embeddingLength = llama_model_n_embd(m);
  f.layers = llama_model_n_layer(m);
  f.hasEncoder = llama_model_has_encoder(m);
  f.hasDecoder = llama_model_has_decoder(m);
  if (!h.vocabOnly) {
    if (f.layers <= 0) throw std::runtime_error("the model has no layers");
    f.heads = llama_model_n_head(m);
    f.headsKv = llama_model_n_head_kv(m);
  }
}

class LoadWorker : public PoolProgressWorker<float> {
 public:
  LoadWorker(Napi::Env env, std::string path, llama_model_params params, Napi::Function onProgress,
             std::shared_ptr<std::atomic<bool>> cancelled, std::vector<ggml_backend_dev_t> devices, bool setDevices,
             std::vector<std::string> rpcServers)
      : PoolProgressWorker<float>(env, "llama-addon.loadModel"),
        deferred_(Napi::Promise::Deferred::New(env)),
        path_(std::move(path)),
        params_(params),
        cancelled_(std::move(cancelled)),
        devices_(std::move(devices)),
        setDevices_(setDevices),
        rpcServers_(std::move(rpcServers)) {
    if (!onProgress.IsEmpty()) progress_ = Napi::Persistent(onProgress);
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute(const ExecutionProgress& progress) override {
    progress_ptr_ = &progress;
    params_.progress_callback = [](float p, void* self_) -> bool {
      auto* self = static_cast<LoadWorker*>(self_);
      if (self->cancelled_->load()) return false;
      // Report at most every 1%, and always the end.
      if (p >= 1.0f || p - self->last_reported_ >= 0.01f) {
        self->last_reported_ = p;
        self->progress_ptr_->Send(&p, 1);
      }
      return true;
    };
    params_.progress_callback_user_data = this;
    if (!rpcServers_.empty()) {
      // RPC servers' devices come first, as llama.cpp orders them (fewer transfers over the network).
      try {
        std::vector<ggml_backend_dev_t> remote = rpcDevices(rpcServers_);
        devices_.insert(devices_.begin(), remote.begin(), remote.end());
      } catch (const std::exception& e) {
        code_ = "ERR_BACKEND_UNAVAILABLE";
        SetError(std::string("Could not use the RPC servers: ") + e.what());
        return;
      }
    }
    if (setDevices_ || !rpcServers_.empty()) {
      devices_.push_back(nullptr);
      params_.devices = devices_.data();
    }
    LogCapture capture;
    llama_model* model = nullptr;
    std::string unusable;
    try {
      unusable = checkModelFile(path_, params_.vocab_only);
    } catch (const std::exception& e) {
      unusable = e.what();
    }
    if (!unusable.empty()) {
      code_ = "ERR_INVALID_MODEL";
      SetError("llama-addon cannot use " + path_ + ": " + unusable);
      return;
    }
    try {
      AbortGuard guard;
      std::shared_lock<std::shared_mutex> registry(registryMutex());
      model = llama_model_load_from_file(path_.c_str(), params_);
    } catch (const std::exception& e) {
      model = nullptr;
      reason_ = e.what();
    }
    if (model == nullptr) {
      std::string logged = capture.take();
      if (!logged.empty()) reason_ = reason_.empty() ? logged : logged + "; " + reason_;
      if (cancelled_->load()) {
        code_ = "ERR_ABORTED";
        SetError("Model load was aborted");
      } else {
        code_ = "ERR_INVALID_MODEL";
        SetError("llama.cpp could not load " + path_ + (reason_.empty() ? "" : ": " + reason_));
      }
      return;
    }
    handle_ = std::make_shared<ModelHandle>();
    handle_->model = model;
    handle_->vocab = llama_model_get_vocab(model);
    handle_->vocabOnly = params_.vocab_only;
    try {
      AbortGuard guard;
      readFacts(*handle_);
    } catch (const std::exception& e) {
      handle_.reset();
      code_ = "ERR_INVALID_MODEL";
      SetError("llama.cpp loaded " + path_ + " but its hyperparameters are inconsistent: " + e.what());
      return;
    }
    if (cancelled_->load()) {  // aborted after the last progress report: honour it
      handle_.reset();
      code_ = "ERR_ABORTED";
      SetError("Model load was aborted");
    }
  }

  void OnProgress(const float* data, size_t count) override {
    if (progress_.IsEmpty() || count == 0) return;
    Napi::HandleScope scope(Env());
    try {
      progress_.Call({Napi::Number::New(Env(), data[count - 1])});
    } catch (...) {  // nothing may escape a callback from another thread
      // the environment is going away; the load itself settles through OnOK/OnError
    }
  }

  void OnOK() override { deferred_.Resolve(Model::NewInstance(Env(), std::move(handle_))); }
  void OnAbandon() override { handle_.reset(); }

  void OnError(const Napi::Error& e) override {
    deferred_.Reject(makeError(Env(), code_, e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::FunctionReference progress_;
  std::string path_;
  llama_model_params params_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  const ExecutionProgress* progress_ptr_ = nullptr;
  float last_reported_ = -1.0f;
  std::shared_ptr<ModelHandle> handle_;
  std::string reason_;
  const char* code_ = "ERR_INVALID_MODEL";
  std::vector<ggml_backend_dev_t> devices_;  // null-terminated in Execute; params_.devices points here
  bool setDevices_;
  std::vector<std::string> rpcServers_;
};

}  // namespace

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = argString(info, 0, "path");
  if (!info[1].IsObject()) throwArg(env, "options", "an object", info[1]);
  Napi::Object o = info[1].As<Napi::Object>();
  Napi::Function onProgress;
  if (info[2].IsFunction()) onProgress = info[2].As<Napi::Function>();
  else if (!info[2].IsUndefined()) throwArg(env, "onProgress", "a function", info[2]);

  llama_model_params params = llama_model_default_params();
  Napi::Value gpuLayers = opt(o, "gpuLayers");
  if (gpuLayers.IsNumber()) params.n_gpu_layers = gpuLayers.As<Napi::Number>().Int32Value();
  else if (!gpuLayers.IsEmpty() && !gpuLayers.IsUndefined()) throwArg(env, "gpuLayers", "a number", gpuLayers);
  bool useMmap = opt(o, "useMmap").IsBoolean() ? opt(o, "useMmap").As<Napi::Boolean>().Value() : llama_supports_mmap();
  bool useMlock = opt(o, "useMlock").IsBoolean() && opt(o, "useMlock").As<Napi::Boolean>().Value();
  params.load_mode = useMmap ? (useMlock ? LLAMA_LOAD_MODE_MMAP_MLOCK : LLAMA_LOAD_MODE_MMAP)
                             : (useMlock ? LLAMA_LOAD_MODE_MLOCK : LLAMA_LOAD_MODE_NONE);
  params.vocab_only = opt(o, "vocabOnly").IsBoolean() && opt(o, "vocabOnly").As<Napi::Boolean>().Value();

  // devices: names of the local devices to use (absent: llama.cpp's choice); rpcServers: host:port list.
  auto stringList = [&](const char* key) {
    std::vector<std::string> out;
    Napi::Value v = opt(o, key);
    if (v.IsEmpty() || v.IsUndefined()) return out;
    if (!v.IsArray()) throwArg(env, key, "an array of strings", v);
    Napi::Array a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) {
      if (!a.Get(i).IsString()) throwArg(env, key, "an array of strings", a.Get(i));
      out.push_back(a.Get(i).As<Napi::String>().Utf8Value());
    }
    return out;
  };
  Napi::Value devicesOpt = opt(o, "devices");
  bool setDevices = !devicesOpt.IsEmpty() && !devicesOpt.IsUndefined();
  std::vector<ggml_backend_dev_t> devices = devicesByName(env, stringList("devices"));
  std::vector<std::string> rpcServers = stringList("rpcServers");

  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  auto* worker = new LoadWorker(env, path, params, onProgress, cancelled, std::move(devices), setDevices, std::move(rpcServers));
  Napi::Object task = Napi::Object::New(env);
  task.Set("promise", worker->promise());
  task.Set("abort", Napi::Function::New(
                        env,
                        [cancelled](const Napi::CallbackInfo& i) {
                          cancelled->store(true);
                          return i.Env().Undefined();
                        },
                        "abort"));
  worker->Queue();
  return task;
}

// ---------------------------------------------------------------- Model

void Model::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "NativeModel",
                                    {
                                        InstanceMethod<&Model::Tokenize>("tokenize"),
                                        InstanceMethod<&Model::TokenizeAsync>("tokenizeAsync"),
                                        InstanceMethod<&Model::Detokenize>("detokenize"),
                                        InstanceMethod<&Model::Info>("info"),
                                        InstanceMethod<&Model::IsEndOfGeneration>("isEndOfGeneration"),
                                        InstanceMethod<&Model::Dispose>("dispose"),
                                        InstanceMethod<&Model::CreateContext>("createContext"),
                                        InstanceMethod<&Model::ChatTemplate>("chatTemplate"),
                                        InstanceMethod<&Model::ChatTemplateAsync>("chatTemplateAsync"),
                                        InstanceMethod<&Model::MatchesGrammar>("matchesGrammar"),
                                        InstanceMethod<&Model::LoadLora>("loadLora"),
                                    });
  addonData(env)->modelCtor = Napi::Persistent(ctor);
  exports.Set("NativeModel", ctor);
}

Napi::Object Model::NewInstance(Napi::Env env, std::shared_ptr<ModelHandle> handle) {
  return newWrapped(env, addonData(env)->modelCtor, std::move(handle));
}

Model::Model(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<Model>(info), handle_(takeWrapped<ModelHandle>(info, "NativeModel")) {}

std::shared_ptr<ModelHandle> Model::handleOrThrow(Napi::Env env) const {
  if (!handle_) throwError(env, "ERR_DISPOSED", "The model has been disposed");
  return handle_;
}

namespace {

// Decodes one UTF-8 character at s[i] (advancing i); U+FFFD for a malformed byte.
uint32_t nextCodepoint(const std::string& s, size_t& i) {
  unsigned char c = (unsigned char)s[i];
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
  if (i + len > s.size()) len = 1;
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len; k++) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
  i += len;
  return cp;
}

int32_t tokenizeInto(const llama_vocab* vocab, const std::string& text, std::vector<llama_token>& tokens, bool addSpecial,
                     bool parseSpecial) {
  int32_t n = llama_tokenize(vocab, text.data(), (int32_t)text.size(), tokens.data(), (int32_t)tokens.size(), addSpecial,
                             parseSpecial);
  if (n < 0 && n != INT32_MIN) {
    tokens.resize((size_t)-n);
    n = llama_tokenize(vocab, text.data(), (int32_t)text.size(), tokens.data(), (int32_t)tokens.size(), addSpecial,
                       parseSpecial);
  }
  return n;
}

// llama.cpp throws (std::out_of_range) when a vocabulary has neither a token nor byte tokens for a
// character. Names the first character that fails on its own, for the error message.
std::string unrepresentable(const llama_vocab* vocab, const std::string& text) {
  std::vector<llama_token> scratch(16);
  size_t index = 0;
  for (size_t i = 0; i < text.size() && index < (1u << 20); index++) {
    size_t start = i;
    uint32_t cp = nextCodepoint(text, i);
    std::string ch = text.substr(start, i - start);
    try {
      tokenizeInto(vocab, ch, scratch, false, false);
    } catch (const std::exception&) {
      char code[16];
      std::snprintf(code, sizeof code, "U+%04X", (unsigned)cp);
      std::string shown = cp < 0x20 || cp == 0x7F ? std::string() : " \"" + ch + "\"";
      return std::string("the character ") + code + shown + " (character " + std::to_string(index) + " of the text)";
    }
  }
  return "a character of the text";
}

// Longest run of characters that are all whitespace or all not: llama.cpp's BPE pre-tokenizers split text
// with regular expressions, and where it falls back to std::regex, matching recurses once per character of
// a match. A match lies within such a run (plus a character either side).
size_t longestRun(const std::string& s) {
  size_t best = 0, run = 0;
  int kind = -1;
  for (unsigned char c : s) {
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: same character
    int k = (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') ? 1 : 0;
    run = k == kind ? run + 1 : 1;
    kind = k;
    best = std::max(best, run);
  }
  return best;
}

}  // namespace

std::vector<llama_token> tokenizeText(const ModelHandle& h, const std::string& text, bool addSpecial, bool parseSpecial) {
  if (text.size() > kMaxTokenizeBytes) {
    throw LimitError("Text of " + std::to_string(text.size()) + " bytes is too long to tokenize at once: the limit is " +
                     std::to_string(kMaxTokenizeBytes) + " bytes (UTF-8); split it");
  }
  std::vector<llama_token> tokens(std::min<size_t>(text.size() + 4, 1u << 16));
  int32_t n = 0;
  try {
    size_t run = llama_vocab_type(h.vocab) == LLAMA_VOCAB_TYPE_BPE ? longestRun(text) : 0;
    if (run <= kTokenizeInlineRun) {
      n = tokenizeInto(h.vocab, text, tokens, addSpecial, parseSpecial);
    } else {
      // About 200 bytes of stack per character of a std::regex match (measured: 8 MiB overflowed at 44,085).
      if (run > kMaxTokenizeRun) {
        throw LimitError("The text has a run of " + std::to_string(run) +
                         " characters without a break between whitespace and the rest; this model's tokenizer takes at "
                         "most " + std::to_string(kMaxTokenizeRun));
      }
      size_t stack = ((run * 512 + (16u << 20)) + 0xFFFFF) & ~(size_t)0xFFFFF;
      try {
        onLargeStack(stack, [&] { n = tokenizeInto(h.vocab, text, tokens, addSpecial, parseSpecial); });
      } catch (const CodedError&) {
        throw LimitError("The text has a run of characters too long to tokenize here: a thread with a " +
                         std::to_string(stack >> 20) + " MiB stack could not be started");
      }
    }
  } catch (const LimitError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    throw TokenizeError("The model's vocabulary cannot represent " + unrepresentable(h.vocab, text) +
                        ": it has no token for it and no byte tokens to spell it (" + e.what() + ")");
  }
  if (n < 0) throw TokenizeError("llama.cpp could not tokenize the text (" + std::to_string(n) + ")");
  tokens.resize((size_t)n);
  // A tokenizer can emit an id its vocabulary does not have: RWKV's emits the unknown token for what it
  // cannot match, and a file may set tokenizer.ggml.unknown_token_id to none (0xFFFFFFFF, -1) or past the
  // end (found by the fuzzer). Nothing may pass such an id on (to detokenize, or a decode).
  const int32_t nVocab = llama_vocab_n_tokens(h.vocab);
  for (size_t i = 0; i < tokens.size(); i++) {
    if (tokens[i] < 0 || tokens[i] >= nVocab) {
      throw TokenizeError("The model's tokenizer produced token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                          ", outside its vocabulary of " + std::to_string(nVocab) +
                          " tokens: the file's vocabulary is broken (a special token id, such as tokenizer.ggml.unknown_token_id, "
                          "that the tokenizer uses is unset or out of range)");
    }
  }
  return tokens;
}

namespace {

// tokenize(text, addBos, special) and tokenizeAsync(...): the arguments, copied out of JS.
struct TokenizeArgs {
  std::string text;
  bool addSpecial;
  bool parseSpecial;
};

TokenizeArgs tokenizeArgs(const Napi::CallbackInfo& info) {
  return {argString(info, 0, "text"), argBool(info, 1, "addBos"), argBool(info, 2, "special")};
}

}  // namespace

Napi::Value Model::Tokenize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handleOrThrow(env);
  TokenizeArgs a = tokenizeArgs(info);
  std::vector<llama_token> tokens;
  try {
    tokens = tokenizeText(*h, a.text, a.addSpecial, a.parseSpecial);
  } catch (const TokenizeError& e) {
    throwError(env, "ERR_TOKENIZE", e.what());
  } catch (const LimitError& e) {
    throwError(env, "ERR_LIMIT_EXCEEDED", e.what());
  }
  Napi::Int32Array out = Napi::Int32Array::New(env, tokens.size());
  std::copy(tokens.begin(), tokens.end(), out.Data());
  return out;
}

// tokenizeAsync(text, addBos, special) -> Promise<Int32Array>, off the JS thread.
Napi::Value Model::TokenizeAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handleOrThrow(env);
  TokenizeArgs a = tokenizeArgs(info);
  // Past the size limit, the worker reports ERR_LIMIT_EXCEEDED at once (tokenizeText checks it first).
  // A long text takes a while: about 1 ms per KiB on most vocabularies, 7 on deepseek's. The model stays
  // alive while it runs.
  return PromiseWorker<std::vector<llama_token>>::Start(
      env, "llama-addon.tokenize",
      [h, a = std::move(a)] {
        try {
          return tokenizeText(*h, a.text, a.addSpecial, a.parseSpecial);
        } catch (const TokenizeError& e) {
          throw CodedError("ERR_TOKENIZE", e.what());
        } catch (const LimitError& e) {
          throw CodedError("ERR_LIMIT_EXCEEDED", e.what());
        }
      },
      [](Napi::Env e, std::vector<llama_token>& tokens) -> Napi::Value {
        Napi::Int32Array out = Napi::Int32Array::New(e, tokens.size());
        std::copy(tokens.begin(), tokens.end(), out.Data());
        return out;
      });
}

void checkTokens(Napi::Env env, const ModelHandle& h, const int32_t* data, size_t n, const char* what) {
  int32_t nVocab = llama_vocab_n_tokens(h.vocab);
  for (size_t i = 0; i < n; i++) {
    if (data[i] < 0 || data[i] >= nVocab) {
      throwError(env, "ERR_INVALID_ARGUMENT",
                 std::string("Invalid ") + what + " at index " + std::to_string(i) + ": expected a token id from 0 to " +
                     std::to_string(nVocab - 1) + ", received " + std::to_string(data[i]));
    }
  }
}

Napi::Value Model::Detokenize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handleOrThrow(env);
  Napi::Int32Array tokens = argTokens(info, 0, "tokens");
  bool special = argBool(info, 1, "special");
  checkTokens(env, *h, tokens.Data(), tokens.ElementLength(), "token");
  std::string text(tokens.ElementLength() * 8 + 16, '\0');
  int32_t n = llama_detokenize(h->vocab, tokens.Data(), (int32_t)tokens.ElementLength(), text.data(),
                               (int32_t)text.size(), false, special);
  if (n < 0) {
    text.resize((size_t)-n);
    n = llama_detokenize(h->vocab, tokens.Data(), (int32_t)tokens.ElementLength(), text.data(), (int32_t)text.size(),
                         false, special);
  }
  if (n < 0) throwError(env, "ERR_INVALID_ARGUMENT", "Detokenization failed");
  text.resize((size_t)n);
  return Napi::String::New(env, text);
}

Napi::Value Model::IsEndOfGeneration(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handleOrThrow(env);
  if (!info[0].IsNumber()) return Napi::Boolean::New(env, false);
  double d = info[0].As<Napi::Number>().DoubleValue();
  if (d < 0 || d >= llama_vocab_n_tokens(h->vocab) || d != std::floor(d)) return Napi::Boolean::New(env, false);
  return Napi::Boolean::New(env, llama_vocab_is_eog(h->vocab, (llama_token)d));
}

Napi::Value Model::ChatTemplate(const Napi::CallbackInfo& info) {
  return la::ChatTemplate::Create(info, handleOrThrow(info.Env()));
}

Napi::Value Model::ChatTemplateAsync(const Napi::CallbackInfo& info) {
  return la::ChatTemplate::CreateAsync(info, handleOrThrow(info.Env()));
}

Napi::Value Model::MatchesGrammar(const Napi::CallbackInfo& info) {
  return la::MatchesGrammar(info, handleOrThrow(info.Env()));
}

Napi::Value Model::LoadLora(const Napi::CallbackInfo& info) {
  auto h = handleOrThrow(info.Env());
  if (h->vocabOnly) throwError(info.Env(), "ERR_INVALID_STATE", "The model was loaded with vocabOnly: true and has no weights to adapt");
  return la::Lora::Load(info, h);
}

Napi::Value Model::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handleOrThrow(env);
  const ModelFacts& f = h->facts;
  Napi::Object o = Napi::Object::New(env);
  o.Set("description", f.description);
  o.Set("parameters", Napi::Number::New(env, (double)f.parameters));
  o.Set("sizeBytes", Napi::Number::New(env, (double)f.sizeBytes));
  o.Set("contextLength", f.contextLength);
  o.Set("embeddingLength", f.embeddingLength);
  o.Set("layers", f.layers);
  o.Set("heads", f.heads);
  o.Set("headsKv", f.headsKv);
  o.Set("vocabSize", f.vocabSize);
  o.Set("vocabOnly", h->vocabOnly);
  o.Set("hasEncoder", f.hasEncoder);
  o.Set("hasDecoder", f.hasDecoder);
  if (f.hasChatTemplate) o.Set("chatTemplate", f.chatTemplate);
  Napi::Object vocab = Napi::Object::New(env);
  vocab.Set("bos", f.bos);
  vocab.Set("eos", f.eos);
  vocab.Set("eot", f.eot);
  vocab.Set("addBos", f.addBos);
  o.Set("vocab", vocab);
  return o;
}

Napi::Value Model::Dispose(const Napi::CallbackInfo& info) {
  // Contexts hold their own reference: the weights are freed when the last of them is gone too.
  // Freeing unmaps or frees the weights, which can take a while: do it off the JS thread.
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  std::shared_ptr<ModelHandle> h = std::move(handle_);
  handle_.reset();
  if (!h) {
    deferred.Resolve(env.Undefined());
    return deferred.Promise();
  }
  struct FreeWorker : PoolWorker {
    FreeWorker(Napi::Env env, std::shared_ptr<ModelHandle> h, Napi::Promise::Deferred d)
        : PoolWorker(env, "llama-addon.disposeModel"), h_(std::move(h)), d_(d) {}
    void Execute() override {
      h_.reset();
#ifdef __GLIBC__
      // glibc keeps freed memory mapped in its arenas: the weights' buffers are large and freed all at once,
      // so give the pages back (a server replacing models would otherwise keep hundreds of MB of freed memory).
      malloc_trim(0);
#endif
    }
    void OnOK() override { d_.Resolve(Env().Undefined()); }
    void OnError(const Napi::Error&) override { d_.Resolve(Env().Undefined()); }  // freed as far as it could be
    std::shared_ptr<ModelHandle> h_;
    Napi::Promise::Deferred d_;
  };
  (new FreeWorker(env, std::move(h), deferred))->Queue();
  return deferred.Promise();
}

Napi::Value Model::CreateContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handleOrThrow(env);
  if (h->vocabOnly) {
    throwError(env, "ERR_INVALID_STATE", "The model was loaded with vocabOnly: true and has no weights to run");
  }
  if (!info[0].IsObject()) throwArg(env, "options", "an object", info[0]);
  return Context::Create(env, h, info[0].As<Napi::Object>());
}

}  // namespace la
