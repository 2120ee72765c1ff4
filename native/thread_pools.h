// ggml's CPU thread pools of a context (no N-API here: the engine is built without Node too).
#pragma once
#include <cstdint>
#include <vector>

#include "ggml-cpu.h"
#include "llama.h"

namespace la {

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
  // The ids of the threads the pools started (Linux; empty where unknown, as with OpenMP, whose threads
  // start at the first decode): whose run-queue waits the thread tuner reads (native/run_queue.h).
  const std::vector<int>& workerThreads() const { return workers_; }

 private:
  ggml_threadpool_t tp_ = nullptr;
  ggml_threadpool_t tpBatch_ = nullptr;
  std::vector<int> workers_;
};

}  // namespace la
