#include "guard.h"

#include <cstdio>

#include "ggml.h"

namespace la {
namespace {

thread_local bool t_guarded = false;

void onGgmlAbort(const char* message) {
  if (t_guarded) throw GgmlAbort(message != nullptr ? message : "ggml aborted");
  // Unguarded: nothing can be recovered; say why before ggml calls abort().
  std::fprintf(stderr, "[llama-addon error] fatal error in llama.cpp: %s\n", message != nullptr ? message : "");
}

}  // namespace

AbortGuard::AbortGuard() : previous_(t_guarded) { t_guarded = true; }
AbortGuard::~AbortGuard() { t_guarded = previous_; }

void installAbortHandler() { ggml_set_abort_callback(onGgmlAbort); }

}  // namespace la
