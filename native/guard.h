// Turns ggml's fatal errors (GGML_ASSERT, GGML_ABORT) into C++ exceptions on threads that opted in,
// so that a corrupt model file makes loading fail instead of aborting the process.
#pragma once
#include <stdexcept>

namespace la {

struct GgmlAbort : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// While one of these lives on a thread, a ggml abort on that thread throws GgmlAbort instead.
class AbortGuard {
 public:
  AbortGuard();
  ~AbortGuard();
  AbortGuard(const AbortGuard&) = delete;
  AbortGuard& operator=(const AbortGuard&) = delete;

 private:
  bool previous_;
};

void installAbortHandler();

}  // namespace la
