// ModelHandle: a loaded llama_model (weights + vocabulary) and the facts read from it, shared by the
// Model object, its contexts and their engines (no N-API here: the engine is built without Node too).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
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

}  // namespace la
