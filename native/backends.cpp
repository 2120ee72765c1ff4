#include "backends.h"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <vector>

#include <map>
#include <mutex>

#include "errors.h"
#include "guard.h"
#include "log.h"

namespace la {
namespace {

std::mutex g_backendsMu;
bool g_initialized = false;
std::map<std::string, std::string> g_loadedModules;  // module path -> backend name

const char* deviceType(ggml_backend_dev_t d) {
  switch (ggml_backend_dev_type(d)) {
    case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
    case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
    case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
    case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
    default: return "other";
  }
}

// The CPU backend's features as its module reports them (AVX2, AVX512, ...), for getBackendInfo().
Napi::Object cpuFeatures(Napi::Env env, ggml_backend_reg_t reg) {
  Napi::Object o = Napi::Object::New(env);
  auto get = (ggml_backend_get_features_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
  if (get == nullptr) return o;
  for (ggml_backend_feature* f = get(reg); f != nullptr && f->name != nullptr; f++) o.Set(f->name, f->value);
  return o;
}

// initBackends(dir) -> string[]: loads the CPU module best suited to this CPU (of the variants in `dir`)
// and the other non-GPU modules there (RPC). Once per process; later calls return the backends loaded.
Napi::Value InitBackends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dir = argString(info, 0, "dir");
  std::lock_guard<std::mutex> lock(g_backendsMu);
  std::shared_lock<std::shared_mutex> reading(registryMutex(), std::defer_lock);
  if (!g_initialized) {
    std::unique_lock<std::shared_mutex> writing(registryMutex());
    LogCapture capture;
    ggml_backend_load_all_from_path(dir.c_str());
    if (ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU) == nullptr) {
      std::string logged = capture.take();
      throwError(env, "ERR_NATIVE_LOAD",
                 "Expected a CPU backend module (libggml-cpu*.so) beside the addon in " + dir + ", but none loaded" +
                     (logged.empty() ? "" : ": " + logged));
    }
    g_initialized = true;
  }
  reading.lock();
  Napi::Array names = Napi::Array::New(env);
  for (size_t i = 0; i < ggml_backend_reg_count(); i++) names.Set((uint32_t)i, ggml_backend_reg_name(ggml_backend_reg_get(i)));
  return names;
}

// loadBackend(path) -> { backend } | { error }: loads one backend module (a GPU backend, after the child
// process probe said it is safe). Loading the same file again returns the backend it gave.
Napi::Value LoadBackend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = argString(info, 0, "path");
  Napi::Object o = Napi::Object::New(env);
  std::lock_guard<std::mutex> lock(g_backendsMu);
  auto it = g_loadedModules.find(path);
  if (it != g_loadedModules.end()) {
    o.Set("backend", it->second);
    return o;
  }
  LogCapture capture;
  ggml_backend_reg_t reg = nullptr;
  std::string reason;
  try {
    AbortGuard guard;
    std::unique_lock<std::shared_mutex> writing(registryMutex());
    reg = ggml_backend_load(path.c_str());
  } catch (const std::exception& e) {
    reason = e.what();
  }
  if (reg == nullptr) {
    std::string logged = capture.take();
    if (!logged.empty()) reason = reason.empty() ? logged : logged + "; " + reason;
    o.Set("error", reason.empty() ? "ggml could not load the module" : reason);
    return o;
  }
  g_loadedModules[path] = ggml_backend_reg_name(reg);
  o.Set("backend", ggml_backend_reg_name(reg));
  return o;
}

// backendInfo() -> { backends: string[], devices: [...], cpuFeatures: {...} }
Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_lock<std::shared_mutex> reading(registryMutex());
  Napi::Object o = Napi::Object::New(env);
  Napi::Array backends = Napi::Array::New(env);
  Napi::Object features = Napi::Object::New(env);
  for (size_t i = 0; i < ggml_backend_reg_count(); i++) {
    ggml_backend_reg_t reg = ggml_backend_reg_get(i);
    backends.Set((uint32_t)i, ggml_backend_reg_name(reg));
    if (std::string(ggml_backend_reg_name(reg)) == "CPU") features = cpuFeatures(env, reg);
  }
  o.Set("backends", backends);
  o.Set("cpuFeatures", features);
  Napi::Array devices = Napi::Array::New(env);
  for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
    ggml_backend_dev_t d = ggml_backend_dev_get(i);
    size_t freeMem = 0, totalMem = 0;
    ggml_backend_dev_memory(d, &freeMem, &totalMem);
    Napi::Object dev = Napi::Object::New(env);
    dev.Set("name", ggml_backend_dev_name(d));
    dev.Set("description", ggml_backend_dev_description(d));
    dev.Set("type", deviceType(d));
    dev.Set("backend", ggml_backend_reg_name(ggml_backend_dev_backend_reg(d)));
    dev.Set("memoryFree", (double)freeMem);
    dev.Set("memoryTotal", (double)totalMem);
    devices.Set((uint32_t)i, dev);
  }
  o.Set("devices", devices);
  return o;
}

// rpcServe(endpoint, cacheDir | null, threads, deviceNames) -> never returns while the server runs:
// llama.cpp's RPC server, serving the named devices (the CPU when none are named). For the CLI only.
Napi::Value RpcServe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string endpoint = argString(info, 0, "endpoint");
  std::string cacheDir;
  if (info[1].IsString()) cacheDir = info[1].As<Napi::String>().Utf8Value();
  else if (!info[1].IsNull() && !info[1].IsUndefined()) throwArg(env, "cacheDir", "a string or null", info[1]);
  if (!info[2].IsNumber()) throwArg(env, "threads", "a number", info[2]);
  size_t threads = (size_t)info[2].As<Napi::Number>().Uint32Value();
  if (!info[3].IsArray()) throwArg(env, "devices", "an array of device names", info[3]);
  Napi::Array arr = info[3].As<Napi::Array>();
  std::vector<std::string> names;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    if (!arr.Get(i).IsString()) throwArg(env, "devices[i]", "a string", arr.Get(i));
    names.push_back(arr.Get(i).As<Napi::String>().Utf8Value());
  }
  std::vector<ggml_backend_dev_t> devices = devicesByName(env, names);
  std::shared_lock<std::shared_mutex> reading(registryMutex());
  if (devices.empty()) devices.push_back(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
  ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
  if (rpc == nullptr) throwError(env, "ERR_BACKEND_UNAVAILABLE", "Expected llama.cpp's RPC backend module (libggml-rpc.so) beside the addon, but it is not loaded: build with LLAMA_ADDON_RPC=ON");
  using start_fn = void (*)(const char*, const char*, size_t, size_t, ggml_backend_dev_t*);
  auto start = (start_fn)ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_start_server");
  if (start == nullptr) throwError(env, "ERR_BACKEND_UNAVAILABLE", "The RPC backend module has no ggml_backend_rpc_start_server");
  reading.unlock();  // the server runs for the life of the process
  start(endpoint.c_str(), cacheDir.empty() ? nullptr : cacheDir.c_str(), threads, devices.size(), devices.data());
  throwError(env, "ERR_BACKEND_UNAVAILABLE", "llama.cpp's RPC server stopped (see its output above): could it listen on " + endpoint + "?");
}

}  // namespace


std::vector<ggml_backend_dev_t> devicesByName(Napi::Env env, const std::vector<std::string>& names) {
  std::shared_lock<std::shared_mutex> reading(registryMutex());
  std::vector<ggml_backend_dev_t> out;
  for (const auto& n : names) {
    ggml_backend_dev_t d = ggml_backend_dev_by_name(n.c_str());
    if (d == nullptr) throwError(env, "ERR_BACKEND_UNAVAILABLE", "Expected a loaded device named " + n + ", but there is none");
    out.push_back(d);
  }
  return out;
}

std::vector<ggml_backend_dev_t> rpcDevices(const std::vector<std::string>& endpoints) {
  std::vector<ggml_backend_dev_t> out;
  if (endpoints.empty()) return out;
  std::shared_lock<std::shared_mutex> reading(registryMutex());
  ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
  if (rpc == nullptr) throw std::runtime_error("llama.cpp's RPC backend module (libggml-rpc.so) is not loaded: build with LLAMA_ADDON_RPC=ON");
  using add_fn = ggml_backend_reg_t (*)(const char*);
  auto add = (add_fn)ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_add_server");
  if (add == nullptr) throw std::runtime_error("the RPC backend module has no ggml_backend_rpc_add_server");
  for (const auto& e : endpoints) {
    ggml_backend_reg_t reg = nullptr;
    {
      AbortGuard guard;  // ggml aborts when it cannot connect: a thrown GgmlAbort here
      reg = add(e.c_str());
    }
    if (reg == nullptr) throw std::runtime_error("the RPC server at " + e + " offers no devices");
    for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); i++) out.push_back(ggml_backend_reg_dev_get(reg, i));
  }
  return out;
}



void registerBackendExports(Napi::Env env, Napi::Object exports) {
  exports.Set("initBackends", Napi::Function::New(env, InitBackends, "initBackends"));
  exports.Set("loadBackend", Napi::Function::New(env, LoadBackend, "loadBackend"));
  exports.Set("backendInfo", Napi::Function::New(env, BackendInfo, "backendInfo"));
  exports.Set("rpcServe", Napi::Function::New(env, RpcServe, "rpcServe"));
}

}  // namespace la
