// Threads with a stack of a chosen size, and the coded error native work throws (no N-API here: the engine
// uses these too, and it is built without Node for native/harness).
#pragma once
#include <pthread.h>

#include <cstddef>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace la {

// An error with the code that lib/base/errors.ts gives its LlamaError.
struct CodedError : std::runtime_error {
  const char* code;
  CodedError(const char* c, const std::string& m) : std::runtime_error(m), code(c) {}
};

// The stack of the threads a PromiseWorker's work runs on: the main thread's usual size, which the limits
// on recursion in parsers and templates (grammar_check.h, template_limits.h) are measured against.
constexpr size_t kWorkerStackBytes = 8u << 20;

// Runs fn on a thread of its own with a stack of `stackBytes` (reserved, committed only as used), and
// rethrows what it throws. The caller waits. A thread that cannot be started is ERR_LIMIT_EXCEEDED.
template <typename F>
void onLargeStack(size_t stackBytes, F&& fn) {
  std::exception_ptr error;
  struct Job {
    std::remove_reference_t<F>* fn;
    std::exception_ptr* error;
  } job{&fn, &error};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stackBytes);
  pthread_t thread;
  int rc = pthread_create(
      &thread, &attr,
      [](void* p) -> void* {
        auto* j = static_cast<Job*>(p);
        try {
          (*j->fn)();
        } catch (...) {
          *j->error = std::current_exception();
        }
        return nullptr;
      },
      &job);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    throw CodedError("ERR_LIMIT_EXCEEDED", "A thread with a " + std::to_string(stackBytes >> 20) +
                                               " MiB stack could not be started for this work");
  }
  pthread_join(thread, nullptr);
  if (error) std::rethrow_exception(error);
}

}  // namespace la
