// Generation: the JS object of one generation (NativeGeneration): take() hands over the chunks the engine
// queued and, at the end, the result; abort() stops it.
#pragma once
#include <napi.h>

#include <memory>

#include "engine.h"

namespace la {

class Generation : public Napi::ObjectWrap<Generation> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<GenState> state);
  explicit Generation(const Napi::CallbackInfo& info);

 private:
  Napi::Value Take(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);
  std::shared_ptr<GenState> state_;
};

}  // namespace la
