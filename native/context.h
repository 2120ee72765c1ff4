// Context: a llama_context with its engine thread, and the generations running on it.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <unordered_map>

#include "engine.h"
#include "lora.h"
#include "model.h"

namespace la {

class Context : public Napi::ObjectWrap<Context> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  // Creates the llama_context on a worker thread; resolves to a NativeContext.
  static Napi::Value Create(Napi::Env env, std::shared_ptr<ModelHandle> model, Napi::Object options);
  explicit Context(const Napi::CallbackInfo& info);
  ~Context() override;

 private:
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value ClearSequence(const Napi::CallbackInfo& info);
  Napi::Value CopySequence(const Napi::CallbackInfo& info);
  Napi::Value SaveSequence(const Napi::CallbackInfo& info);
  Napi::Value LoadSequence(const Napi::CallbackInfo& info);
  Napi::Value Embed(const Napi::CallbackInfo& info);
  Napi::Value BeamSearch(const Napi::CallbackInfo& info);
  Napi::Value AbortTask(const Napi::CallbackInfo& info);
  Napi::Value ExpectPrompts(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::shared_ptr<Engine> engineOrThrow(Napi::Env env) const;

  std::shared_ptr<Engine> engine_;
  int32_t threads_ = 0;
  int32_t threadsBatch_ = 0;
  LoraSet defaultLora_;
  int32_t draftTokens_ = 0;
  int32_t lookupNgram_ = 0;
  // The abort flags of tasks that can be aborted (beam searches), by the id JS gave them; JS thread only.
  // The task holds its flag; an entry whose task has ended is dropped when the next one is added.
  struct TaskAborts {
    std::unordered_map<uint32_t, std::weak_ptr<std::atomic<bool>>> flags;
    void add(uint32_t id, const std::shared_ptr<std::atomic<bool>>& flag) {
      for (auto it = flags.begin(); it != flags.end();) it = it->second.expired() ? flags.erase(it) : std::next(it);
      flags[id] = flag;
    }
    bool abort(uint32_t id) {
      auto it = flags.find(id);
      if (it == flags.end()) return false;
      auto flag = it->second.lock();
      flags.erase(it);
      if (!flag) return false;
      flag->store(true);
      return true;
    }
  } taskAborts_;
};


}  // namespace la
