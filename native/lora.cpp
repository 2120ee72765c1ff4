#include "lora.h"

#include <algorithm>

#include "addon_data.h"
#include "errors.h"
#include "guard.h"
#include "log.h"
#include "model_check.h"
#include "pool_worker.h"

namespace la {

namespace {

class LoadLoraWorker : public PoolWorker {
 public:
  LoadLoraWorker(Napi::Env env, std::shared_ptr<ModelHandle> model, std::string path)
      : PoolWorker(env, "llama-addon.loadLora"),
        deferred_(Napi::Promise::Deferred::New(env)),
        model_(std::move(model)),
        path_(std::move(path)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    LogCapture capture;
    std::string reason;
    try {
      std::string unusable = checkAdapterFile(path_);
      if (!unusable.empty()) {
        SetError("The LoRA adapter " + path_ + " cannot be used: " + unusable);
        return;
      }
      std::unique_lock<std::shared_mutex> lock(model_->adaptersMu);
      adapter_ = llama_adapter_lora_init(model_->model, path_.c_str());
    } catch (const std::exception& e) {
      adapter_ = nullptr;
      reason = e.what();
    }
    if (adapter_ == nullptr) {
      std::string logged = capture.take();
      std::string why = logged.empty() ? reason : logged;
      SetError("The LoRA adapter " + path_ + " could not be loaded" + (why.empty() ? std::string() : ": " + why));
    }
  }

  void OnOK() override {
    auto box = std::make_shared<LoraBox>(LoraBox{model_.get(), model_->id, adapter_});
    deferred_.Resolve(newWrapped(Env(), addonData(Env())->loraCtor, std::move(box)));
  }

  void OnError(const Napi::Error& e) override {
    deferred_.Reject(makeError(Env(), "ERR_INVALID_ADAPTER", e.Message()).Value());
  }
  // The adapter belongs to the model, which frees it (llama.cpp frees a model's adapters with it).
  void OnAbandon() override { model_.reset(); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<ModelHandle> model_;
  std::string path_;
  llama_adapter_lora* adapter_ = nullptr;
};

}  // namespace

void Lora::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "NativeLora", {InstanceMethod<&Lora::Info>("info")});
  addonData(env)->loraCtor = Napi::Persistent(ctor);
  exports.Set("NativeLora", ctor);
}

Napi::Value Lora::Load(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model) {
  std::string path = argString(info, 0, "path");
  auto* worker = new LoadLoraWorker(info.Env(), std::move(model), std::move(path));
  Napi::Promise p = worker->promise();
  worker->Queue();
  return p;
}

Lora::Lora(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Lora>(info), box_(takeWrapped<LoraBox>(info, "NativeLora")) {}

// info() -> { alpha, metadata: { key: value } }
Napi::Value Lora::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Object meta = Napi::Object::New(env);
  char key[512], val[2048];
  int32_t n = llama_adapter_meta_count(box_->adapter);
  for (int32_t i = 0; i < n; i++) {
    if (llama_adapter_meta_key_by_index(box_->adapter, i, key, sizeof key) < 0) continue;
    if (llama_adapter_meta_val_str_by_index(box_->adapter, i, val, sizeof val) < 0) continue;
    meta.Set(key, val);
  }
  o.Set("metadata", meta);
  return o;
}

LoraSet readLoraSet(Napi::Env env, const Napi::Value& value, const ModelHandle& model) {
  LoraSet set;
  if (value.IsEmpty() || value.IsUndefined()) return set;
  if (!value.IsArray()) throwArg(env, "lora", "an array of [adapter, scale] pairs", value);
  Napi::Array arr = value.As<Napi::Array>();
  Napi::FunctionReference& ctor = addonData(env)->loraCtor;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value pair = arr.Get(i);
    if (!pair.IsArray() || pair.As<Napi::Array>().Length() != 2) throwArg(env, "lora", "[adapter, scale] pairs", pair);
    Napi::Value a = pair.As<Napi::Array>().Get(0u), s = pair.As<Napi::Array>().Get(1u);
    if (!a.IsObject() || !a.As<Napi::Object>().InstanceOf(ctor.Value()) || !s.IsNumber()) {
      throwArg(env, "lora", "[adapter, scale] pairs of a loaded adapter and a number", pair);
    }
    Lora* l = Lora::Unwrap(a.As<Napi::Object>());
    if (l->box()->model != &model || l->box()->modelId != model.id) {
      throwError(env, "ERR_INVALID_ADAPTER", "The LoRA adapter was loaded for another model: load it with this model's loadLora()");
    }
    set.emplace_back(l->box()->adapter, (float)s.As<Napi::Number>().DoubleValue());
  }
  std::sort(set.begin(), set.end());
  return set;
}

}  // namespace la
