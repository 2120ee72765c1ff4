#include "thread_pools.h"

#include <pthread.h>

#include <algorithm>
#include <iterator>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "ggml-backend.h"
#include "registry.h"
#include "run_queue.h"

namespace la {

namespace {
using threadpool_new_fn = ggml_threadpool_t (*)(ggml_threadpool_params*);
using threadpool_free_fn = void (*)(ggml_threadpool_t);

template <typename Fn>
Fn cpuProc(const char* name) {
  std::shared_lock<std::shared_mutex> reading(registryMutex());
  ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
  if (cpu == nullptr) return nullptr;
  return (Fn)ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(cpu), name);
}
}  // namespace

namespace {

// Starts `n` threads that wait, then lets them end: whether the system lets this process start that many
// (address space, RLIMIT_NPROC). ggml's thread pool asserts on a thread it cannot start, after starting the
// ones before it, and those spin on a pool that is never freed: they would burn the CPU for the life of the
// process. Asking first keeps a refused thread count an error without that cost.
void probeThreads(int32_t n) {
  if (n <= 0) return;
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::vector<pthread_t> started;
  started.reserve((size_t)n);
  auto wait = [](void* arg) -> void* {
    auto* ctx = static_cast<std::tuple<std::mutex*, std::condition_variable*, bool*>*>(arg);
    std::unique_lock<std::mutex> lock(*std::get<0>(*ctx));
    std::get<1>(*ctx)->wait(lock, [&] { return *std::get<2>(*ctx); });
    return nullptr;
  };
  std::tuple<std::mutex*, std::condition_variable*, bool*> ctx{&mu, &cv, &release};
  int failed = 0;
  for (int32_t i = 0; i < n; i++) {
    pthread_t t;
    failed = pthread_create(&t, nullptr, wait, &ctx);
    if (failed != 0) break;
    started.push_back(t);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  for (pthread_t t : started) pthread_join(t, nullptr);
  if (failed != 0) {
    throw std::runtime_error("the system refused to start " + std::to_string(n) + " threads for the context (it allowed " +
                             std::to_string(started.size()) + "): use fewer threads (threads, threadsBatch)");
  }
}

}  // namespace

ThreadPools::ThreadPools(int32_t threads, int32_t threadsBatch) {
  auto make = cpuProc<threadpool_new_fn>("ggml_threadpool_new");
  if (make == nullptr) return;  // a CPU module without thread pools: ggml manages its threads itself
  // Each pool starts all but one of its threads (the caller's thread is the first).
  probeThreads(std::max(0, threads - 1) + (threadsBatch != threads ? std::max(0, threadsBatch - 1) : 0));
  // The threads that appear while the pools start are theirs (another thread of the process started at the
  // same moment would be counted too: its waits would only add to the signal).
  std::vector<int> before = RunQueueMeter::processThreads();
  ggml_threadpool_params p = ggml_threadpool_params_default(threads);
  tp_ = make(&p);
  if (threadsBatch != threads) {
    try {
      ggml_threadpool_params pb = ggml_threadpool_params_default(threadsBatch);
      tpBatch_ = make(&pb);
    } catch (...) {
      if (auto release = cpuProc<threadpool_free_fn>("ggml_threadpool_free")) release(tp_);
      tp_ = nullptr;
      throw;
    }
  }
  std::vector<int> after = RunQueueMeter::processThreads();
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(workers_));
}

ThreadPools::~ThreadPools() {
  auto release = cpuProc<threadpool_free_fn>("ggml_threadpool_free");
  if (release == nullptr) return;
  if (tpBatch_ != nullptr) release(tpBatch_);
  if (tp_ != nullptr) release(tp_);
}

void ThreadPools::attach(llama_context* ctx) const {
  if (tp_ != nullptr) llama_attach_threadpool(ctx, tp_, tpBatch_ != nullptr ? tpBatch_ : tp_);
}

}  // namespace la
