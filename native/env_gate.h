// Calls into a thread-safe function from a work thread that survive the JS environment's teardown.
//
// When a worker thread is terminated (or the process exits) while work is in flight, Node frees each
// thread-safe function from an environment cleanup hook, whether or not threads still hold it; a work thread
// that then calls it (to report progress or to settle its promise) used freed memory, and the process ended
// in SIGABRT (found by a hostile review: terminating a worker thread during loadModel, createContext,
// quantize, matchesGrammar or a chat render).
//
// A gate is opened on the JS thread right after its thread-safe function is made: it registers a cleanup
// hook of its own, which Node runs before the function's (hooks run in reverse order of registration) and
// which closes the gate. Work threads call the function only through the gate, under its lock, so no call
// is in progress once it is closed, and none starts after.
#pragma once
#include <node_api.h>

#include <memory>
#include <mutex>

namespace la {

class EnvGate {
 public:
  // On the JS thread.
  explicit EnvGate(napi_env env) : env_(env) { hooked_ = napi_add_env_cleanup_hook(env_, onCleanup, this) == napi_ok; }
  ~EnvGate() = default;
  EnvGate(const EnvGate&) = delete;
  EnvGate& operator=(const EnvGate&) = delete;

  // Any thread: runs `fn` (which may call the thread-safe function) unless the environment is going away;
  // returns whether it ran.
  template <typename F>
  bool pass(F&& fn) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    fn();
    return true;
  }

  // On the JS thread, when the work is done: the hook is no longer needed. Also safe during teardown.
  void unhook() {
    if (hooked_) napi_remove_env_cleanup_hook(env_, onCleanup, this);
    hooked_ = false;
  }

 private:
  static void onCleanup(void* arg) {
    auto* g = static_cast<EnvGate*>(arg);
    std::lock_guard<std::mutex> lock(g->mu_);
    g->closed_ = true;
    g->hooked_ = false;
  }

  napi_env env_;
  std::mutex mu_;
  bool closed_ = false;
  bool hooked_ = false;
};

}  // namespace la
