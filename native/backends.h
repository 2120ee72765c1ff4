// Backends: llama.cpp's compute backends are modules (GGML_BACKEND_DL) that this addon loads at run time.
#pragma once
#include <napi.h>

#include <shared_mutex>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llama.h"

namespace la {

void registerBackendExports(Napi::Env env, Napi::Object exports);

// ggml's backend registry is a set of global vectors: loading a backend module appends to them while model
// loads, context creations and thread pools read them on worker threads. Readers hold this shared, loading
// holds it exclusively (and so waits for the loads in flight, a rare wait: only a GPU module's first load).
std::shared_mutex& registryMutex();

// The devices a model load asked for, by name (resolved on the JS thread); throws ERR_BACKEND_UNAVAILABLE.
std::vector<ggml_backend_dev_t> devicesByName(Napi::Env env, const std::vector<std::string>& names);

// Connects to each RPC server (`host:port`) and returns its devices. Runs on a worker thread; throws
// std::runtime_error when the RPC module is missing or a server cannot be reached.
std::vector<ggml_backend_dev_t> rpcDevices(const std::vector<std::string>& endpoints);

// ggml's CPU thread pools for one context (one for single-token steps, one for batches when the thread
// counts differ), kept for the context's life. Without them, a build without OpenMP starts and joins its
// threads on every decode, which costs more than a whole step of a tiny model.
class ThreadPools {
 public:
  ThreadPools(int32_t threads, int32_t threadsBatch);
  ~ThreadPools();
  ThreadPools(const ThreadPools&) = delete;
  ThreadPools& operator=(const ThreadPools&) = delete;
  void attach(struct llama_context* ctx) const;

 private:
  ggml_threadpool_t tp_ = nullptr;
  ggml_threadpool_t tpBatch_ = nullptr;
};

}  // namespace la
