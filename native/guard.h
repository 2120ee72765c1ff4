// Turns ggml's fatal errors (GGML_ASSERT, GGML_ABORT) into C++ exceptions, on every thread, so that they
// unwind to the nearest catch at the thread's boundary instead of aborting the process:
//  - methods and functions called from JS: node-addon-api's wrapper (NODE_ADDON_API_CPP_EXCEPTIONS_ALL)
//    turns any C++ exception into a JS error, which lib/base/errors.ts turns into a LlamaError;
//  - work on the addon's pools: PromiseWorker and PoolWorker (promise_worker.h, pool_worker.h) catch it and
//    reject the promise;
//  - the engine thread and its tasks: Engine::run and EngineTask catch it and end the work with an error.
// A thread with no catch at all (ggml's own compute workers) still ends the process, as abort() would:
// what reaches them must be valid, which model_check.cpp makes sure of at load.
#pragma once
#include <stdexcept>

namespace la {

struct GgmlAbort : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Kept for readability at the places that call into llama.cpp: aborts throw on every thread now.
class AbortGuard {
 public:
  AbortGuard() = default;
  AbortGuard(const AbortGuard&) = delete;
  AbortGuard& operator=(const AbortGuard&) = delete;
};

void installAbortHandler();

}  // namespace la
