#include "guard.h"

#include <cstdio>
#include <exception>

#include "ggml.h"

namespace la {
namespace {

void onGgmlAbort(const char* message) {
  // Every thread: the exception unwinds to the catch at the thread's boundary (see guard.h). On a thread
  // without one, std::terminate ends the process and prints the message, as ggml's abort would have.
  throw GgmlAbort(message != nullptr ? message : "ggml aborted");
}

}  // namespace

void installAbortHandler() { ggml_set_abort_callback(onGgmlAbort); }

}  // namespace la
