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
#include "model_handle.h"

namespace la {

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
