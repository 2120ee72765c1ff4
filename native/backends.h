// Backends: llama.cpp's compute backends are modules (GGML_BACKEND_DL) that this addon loads at run time.
#pragma once
#include <napi.h>

#include <shared_mutex>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llama.h"
#include "registry.h"
#include "thread_pools.h"

namespace la {

void registerBackendExports(Napi::Env env, Napi::Object exports);

// The devices a model load asked for, by name (resolved on the JS thread); throws ERR_BACKEND_UNAVAILABLE.
std::vector<ggml_backend_dev_t> devicesByName(Napi::Env env, const std::vector<std::string>& names);

// Connects to each RPC server (`host:port`) and returns its devices. Runs on a worker thread; throws
// std::runtime_error when the RPC module is missing or a server cannot be reached.
std::vector<ggml_backend_dev_t> rpcDevices(const std::vector<std::string>& endpoints);


}  // namespace la
