// Work off the JS thread that settles a promise: inputs are copied out of JS before it is queued, the
// work runs on a libuv worker (on a thread of its own with a known stack, whatever the runtime's pool
// gives), and its result becomes a JS value on the JS thread. Every exception becomes a rejection with a
// stable code: CodedError's own, ERR_LIMIT_EXCEEDED for memory, ERR_NATIVE for anything else.
#pragma once
#include <napi.h>
#include <pthread.h>

#include <exception>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "errors.h"

namespace la {

// An error with the code that lib/base/errors.ts gives its LlamaError.
struct CodedError : std::runtime_error {
  const char* code;
  CodedError(const char* c, const std::string& m) : std::runtime_error(m), code(c) {}
};

// The stack of the thread a PromiseWorker's work runs on: the main thread's usual size, which the limits
// on recursion in parsers and templates (grammar_check.h, template_limits.h) are measured against. libuv's
// pool gives 8 MiB; Bun's and Deno's pools may give less.
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

template <typename T>
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<T()>;
  using ToJs = std::function<Napi::Value(Napi::Env, T&)>;

  // Queues `work` and returns the promise it settles; `toJs` makes the result a JS value.
  static Napi::Promise Start(Napi::Env env, const char* name, Work work, ToJs toJs) {
    auto* w = new PromiseWorker(env, name, std::move(work), std::move(toJs));
    Napi::Promise promise = w->deferred_.Promise();
    w->Queue();
    return promise;
  }

  void Execute() override {
    try {
      onLargeStack(kWorkerStackBytes, [this] { result_ = work_(); });
    } catch (const CodedError& e) {
      fail(e.code, e.what());
    } catch (const std::bad_alloc&) {
      fail("ERR_LIMIT_EXCEEDED", "Out of memory");
    } catch (const std::exception& e) {
      fail("ERR_NATIVE", e.what());
    } catch (...) {
      fail("ERR_NATIVE", "Unknown error");
    }
    work_ = nullptr;  // frees the copied inputs now
  }
  void OnOK() override {
    Napi::Value v;
    try {
      v = toJs_(Env(), result_);
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
      return;
    } catch (const std::exception& e) {
      deferred_.Reject(makeError(Env(), "ERR_NATIVE", e.what()).Value());
      return;
    }
    deferred_.Resolve(v);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(makeError(Env(), code_, e.Message()).Value()); }

 private:
  PromiseWorker(Napi::Env env, const char* name, Work work, ToJs toJs)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)), toJs_(std::move(toJs)) {}
  void fail(const char* code, const std::string& message) {
    code_ = code;
    SetError(message);
  }
  Napi::Promise::Deferred deferred_;
  Work work_;
  ToJs toJs_;
  T result_{};
  const char* code_ = "ERR_NATIVE";
};

}  // namespace la
