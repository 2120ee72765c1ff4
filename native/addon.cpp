// Module entry: registers the native classes and functions described by lib/native/native.ts.
#include <napi.h>
#include "ggml-backend.h"

#include <cstdlib>
#include <mutex>

#include "addon_data.h"
#include "backends.h"
#include "common.h"
#include "chat_template.h"
#include "context.h"
#include "generation.h"
#include "engine.h"
#include "grammar.h"
#include "guard.h"
#include "log.h"
#include "lora.h"
#include "model.h"
#include "errors.h"
#include "thread_tuner.h"

namespace la {
namespace {

Napi::Value SystemInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("llamaCppVersion", llama_version());
  o.Set("systemInfo", llama_print_system_info());
  o.Set("defaultThreads", common_cpu_get_num_math());
  o.Set("physicalCores", common_cpu_get_num_physical_cores());
  o.Set("supportsGpuOffload", llama_supports_gpu_offload());
  o.Set("supportsMmap", llama_supports_mmap());
  o.Set("supportsMlock", llama_supports_mlock());
  o.Set("maxSequences", (double)llama_max_parallel_sequences());
  return o;
}

void Cleanup(Napi::Env, AddonData* data) {
  // The environment is going away: stop every engine thread before its JS objects disappear.
  std::set<std::shared_ptr<Engine>> engines;
  {
    std::lock_guard<std::mutex> lock(data->enginesMutex);
    engines.swap(data->engines);
  }
  for (auto& e : engines) e->stop();
  delete data;
}

// A simulator's argument i: a function (required), or a function or undefined (optional: empty then).
Napi::Function functionArg(const Napi::CallbackInfo& info, size_t i, const char* what, bool optional = false) {
  if (optional && (info.Length() <= i || info[i].IsUndefined())) return Napi::Function();
  if (!info[i].IsFunction()) throwArg(info.Env(), what, optional ? "a function or undefined" : "a function", info[i]);
  return info[i].As<Napi::Function>();
}

// An optional simulator argument's value at `step`: the function's number, or -1 (unknown) without one.
double atStep(Napi::Env env, const Napi::Function& fn, int32_t step, const char* what) {
  if (fn.IsEmpty()) return -1;
  Napi::Value v = fn.Call({Napi::Number::New(env, step)});
  if (!v.IsNumber()) throwArg(env, what, "a function returning a number", v);
  return v.As<Napi::Number>().DoubleValue();
}

// simulateThreadTuner(maxThreads, steps, cost: (threads, step) => seconds, waits?: (step) => core-seconds per
// second, idle?: (step) => idle cores) -> Int32Array of the counts a ThreadTuner chose, step by step, against made-up costs and run-queue
// waits (test/threads.test.ts; not part of the public API).
Napi::Value SimulateThreadTuner(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t maxThreads = (int32_t)argInteger(info, 0, "maxThreads", 1, 512);
  int32_t steps = (int32_t)argInteger(info, 1, "steps", 0, 1 << 20);
  Napi::Function cost = functionArg(info, 2, "cost");
  Napi::Function waits = functionArg(info, 3, "waits", true);
  Napi::Function idleFn = functionArg(info, 4, "idle", true);
  ThreadTuner tuner(maxThreads);
  Napi::Int32Array out = Napi::Int32Array::New(env, (size_t)steps);
  for (int32_t i = 0; i < steps; i++) {
    double w = atStep(env, waits, i, "waits");
    double idle = atStep(env, idleFn, i, "idle");
    int32_t n = tuner.choose(w, w, idle);
    out[(size_t)i] = n;
    Napi::Value c = cost.Call({Napi::Number::New(env, n), Napi::Number::New(env, i)});
    if (!c.IsNumber()) throwArg(env, "cost", "a function returning a number", c);
    tuner.record(n, c.As<Napi::Number>().DoubleValue());
  }
  return out;
}

// simulateThreadTuners(maxThreads, steps, tokens: (step) => tokens, cost: (threads, tokens, step) => seconds,
// waits?: (step) => core-seconds per second, idle?: (step) => idle cores) -> Int32Array of the counts the
// engine's tuners (one per shape of step, made as the engine makes them) chose, step by step
// (test/threads.test.ts; not part of the public API).
Napi::Value SimulateThreadTuners(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t maxThreads = (int32_t)argInteger(info, 0, "maxThreads", 1, 512);
  int32_t steps = (int32_t)argInteger(info, 1, "steps", 0, 1 << 20);
  Napi::Function tokensFn = functionArg(info, 2, "tokens");
  Napi::Function cost = functionArg(info, 3, "cost");
  Napi::Function waits = functionArg(info, 4, "waits", true);
  Napi::Function idleFn = functionArg(info, 5, "idle", true);
  ThreadTuners tuners;
  Napi::Int32Array out = Napi::Int32Array::New(env, (size_t)steps);
  for (int32_t i = 0; i < steps; i++) {
    Napi::Value t = tokensFn.Call({Napi::Number::New(env, i)});
    if (!t.IsNumber() || t.As<Napi::Number>().DoubleValue() < 1 || t.As<Napi::Number>().DoubleValue() > 1 << 20) {
      throwArg(env, "tokens", "a function returning a count of tokens from 1", t);
    }
    int32_t nTokens = (int32_t)t.As<Napi::Number>().DoubleValue();
    double w = atStep(env, waits, i, "waits");
    double idle = atStep(env, idleFn, i, "idle");
    ThreadTuner& tuner = tuners.forStep(nTokens, maxThreads, idle);
    int32_t n = tuner.choose(w, w, idle);
    out[(size_t)i] = n;
    Napi::Value c = cost.Call({Napi::Number::New(env, n), Napi::Number::New(env, nTokens), Napi::Number::New(env, i)});
    if (!c.IsNumber()) throwArg(env, "cost", "a function returning a number", c);
    double seconds = c.As<Napi::Number>().DoubleValue();
    if (tuner.following()) {
      // The idle cores over this step: the reading at the next one.
      tuner.verifyFollow(atStep(env, idleFn, i + 1, "idle"), seconds);
    }
    tuner.record(n, ThreadTuners::costOf(nTokens, seconds), seconds);
  }
  return out;
}

}  // namespace
}  // namespace la

namespace la {
Napi::Value Quantize(const Napi::CallbackInfo& info);  // quantize.cpp
}


static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  static std::once_flag backendOnce;
  std::call_once(backendOnce, [] {
    la::installLogger();
    la::installAbortHandler();
    llama_backend_init();
    // llama.cpp's common library logs through the library's logger too (native/log.cpp); its threshold
    // follows setLogLevel.
  });
  auto* data = new la::AddonData();
  env.SetInstanceData<la::AddonData, la::Cleanup>(data);
  env.AddCleanupHook([] { la::shutdownLogger(); });
  la::Model::Init(env, exports);
  la::Context::Init(env, exports);
  la::Generation::Init(env, exports);
  la::ChatTemplate::Init(env, exports);
  la::Lora::Init(env, exports);
  la::registerLogExports(env, exports);
  exports.Set("loadModel", Napi::Function::New(env, la::LoadModel, "loadModel"));
  exports.Set("quantize", Napi::Function::New(env, la::Quantize, "quantize"));
  exports.Set("jsonSchemaToGrammar", Napi::Function::New(env, la::JsonSchemaToGrammar, "jsonSchemaToGrammar"));
  exports.Set("jsonSchemaToGrammarAsync", Napi::Function::New(env, la::JsonSchemaToGrammarAsync, "jsonSchemaToGrammarAsync"));
  la::registerBackendExports(env, exports);
  exports.Set("systemInfo", Napi::Function::New(env, la::SystemInfo, "systemInfo"));
  exports.Set("simulateThreadTuner", Napi::Function::New(env, la::SimulateThreadTuner, "simulateThreadTuner"));
  exports.Set("simulateThreadTuners", Napi::Function::New(env, la::SimulateThreadTuners, "simulateThreadTuners"));
  // Called from process.on('exit'): stops every engine thread while llama.cpp's statics still exist.
  exports.Set("shutdown", Napi::Function::New(
                              env,
                              [](const Napi::CallbackInfo& info) {
                                la::stopAllEngines();
                                return info.Env().Undefined();
                              },
                              "shutdown"));
  return exports;
}

NODE_API_MODULE(llama_addon, Init)
