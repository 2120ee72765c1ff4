// Model: a loaded llama_model (weights + vocabulary), shared with the contexts made from it.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "llama.h"

namespace la {

// Owns the llama_model; freed when the Model is disposed and the last context using it is gone.
// Facts read once on the loading thread, under an AbortGuard: llama.cpp aborts on some of these getters
// when a corrupt file made the hyperparameters inconsistent.
struct ModelFacts {
  std::string description;
  std::string chatTemplate;
  bool hasChatTemplate = false;
  uint64_t parameters = 0, sizeBytes = 0;
  int32_t contextLength = 0, embeddingLength = 0, layers = 0, heads = 0, headsKv = 0, vocabSize = 0;
  bool hasEncoder = false, hasDecoder = false, addBos = false;
  llama_token bos = -1, eos = -1, eot = -1;
};

struct ModelHandle {
  ModelHandle();
  const uint64_t id;  // unique in the process: tells a model from one loaded later at the same address
  ModelFacts facts;
  llama_model* model = nullptr;
  const llama_vocab* vocab = nullptr;
  bool vocabOnly = false;
  // Every token's text, and whether it is valid UTF-8 on its own (or a valid start of a character);
  // built once, on first use (utf8Pieces()).
  // llama.cpp reads the model's list of LoRA adapters while it builds graphs: decoding and context creation
  // hold this shared, loading an adapter holds it exclusively.
  std::shared_mutex adaptersMu;
  std::once_flag piecesOnce;
  std::vector<std::string> pieces;
  std::vector<uint8_t> piecesCleanOk;
  ~ModelHandle() {
    if (model != nullptr) llama_model_free(model);
  }
};

class Model : public Napi::ObjectWrap<Model> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<ModelHandle> handle);
  explicit Model(const Napi::CallbackInfo& info);

  // The model, or a thrown ERR_DISPOSED.
  std::shared_ptr<ModelHandle> handleOrThrow(Napi::Env env) const;

 private:
  Napi::Value Tokenize(const Napi::CallbackInfo& info);
  Napi::Value TokenizeAsync(const Napi::CallbackInfo& info);
  Napi::Value Detokenize(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value IsEndOfGeneration(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value CreateContext(const Napi::CallbackInfo& info);
  Napi::Value ChatTemplate(const Napi::CallbackInfo& info);
  Napi::Value ChatTemplateAsync(const Napi::CallbackInfo& info);
  Napi::Value MatchesGrammar(const Napi::CallbackInfo& info);
  Napi::Value LoadLora(const Napi::CallbackInfo& info);

  std::shared_ptr<ModelHandle> handle_;
};

// Most UTF-8 bytes one tokenize call takes (documented in lib/base/limits.ts).
constexpr size_t kMaxTokenizeBytes = 16u << 20;
// BPE tokenizers recurse once per character of a run (see tokenizeText): longer runs than this are
// tokenized on a thread with a stack sized for them, up to kMaxTokenizeRun characters.
constexpr size_t kTokenizeInlineRun = 4096;
constexpr size_t kMaxTokenizeRun = 4u << 20;
struct TokenizeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct LimitError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Tokenizes text; TokenizeError names a character the vocabulary cannot represent, LimitError a text
// longer than kMaxTokenizeBytes.
std::vector<llama_token> tokenizeText(const ModelHandle& h, const std::string& text, bool addSpecial, bool parseSpecial);

// Throws ERR_INVALID_ARGUMENT naming the first id outside the model's vocabulary (`what`: "token", ...).
void checkTokens(Napi::Env env, const ModelHandle& h, const int32_t* data, size_t n, const char* what);

// loadModel(path, { gpuLayers, useMmap, useMlock, vocabOnly }, onProgress?) -> { promise, abort() }
Napi::Value LoadModel(const Napi::CallbackInfo& info);

}  // namespace la
