// Per-environment state of the addon (constructors, live contexts).
#pragma once
#include <napi.h>

#include <memory>
#include <mutex>
#include <set>

namespace la {

class Engine;

struct AddonData {
  Napi::FunctionReference modelCtor;
  Napi::FunctionReference contextCtor;
  Napi::FunctionReference generationCtor;
  Napi::FunctionReference chatTemplateCtor;
  Napi::FunctionReference loraCtor;
  // Engines still running in this environment; stopped when the environment shuts down.
  std::mutex enginesMutex;
  std::set<std::shared_ptr<Engine>> engines;
};

inline AddonData* addonData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

}  // namespace la
