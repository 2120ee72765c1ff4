// LoRA adapters: loaded for a model (freed with it), chosen per context or per request with a scale.
#pragma once
#include <napi.h>

#include <memory>
#include <utility>
#include <vector>

#include "lora_set.h"
#include "model.h"

namespace la {

// Freed with its model (llama.cpp frees a model's adapters with it); it does not keep the model alive.
struct LoraBox {
  const ModelHandle* model = nullptr;
  uint64_t modelId = 0;
  llama_adapter_lora* adapter = nullptr;
};


class Lora : public Napi::ObjectWrap<Lora> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  // model.loadLora(path) -> Promise<NativeLora>. Rejects with ERR_INVALID_ADAPTER.
  static Napi::Value Load(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model);
  explicit Lora(const Napi::CallbackInfo& info);
  const std::shared_ptr<LoraBox>& box() const { return box_; }

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  std::shared_ptr<LoraBox> box_;
};

// Reads [[NativeLora, scale], ...] for `model`; throws ERR_INVALID_ADAPTER for an adapter of another model.
LoraSet readLoraSet(Napi::Env env, const Napi::Value& value, const ModelHandle& model);

}  // namespace la
