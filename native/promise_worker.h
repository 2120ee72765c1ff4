// Work off the JS thread that settles a promise: inputs are copied out of JS before it is queued, the
// work runs on the addon's work pool (work_pool.h: threads of its own with a known stack, not libuv's
// pool), and its result becomes a JS value on the JS thread. Every exception becomes a rejection with a
// stable code: CodedError's own, ERR_LIMIT_EXCEEDED for memory, ERR_NATIVE for anything else.
#pragma once
#include <napi.h>
#include <pthread.h>

#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "env_gate.h"
#include "large_stack.h"
#include "errors.h"
#include "work_pool.h"

namespace la {

// Runs `work` on the addon's work pool (work_pool.h), then settles a promise on the JS thread through a
// thread-safe function (which also keeps the event loop alive meanwhile).
template <typename T>
class PromiseWorker {
 public:
  using Work = std::function<T()>;
  using ToJs = std::function<Napi::Value(Napi::Env, T&)>;

  // Queues `work` and returns the promise it settles; `toJs` makes the result a JS value.
  static Napi::Promise Start(Napi::Env env, const char* name, Work work, ToJs toJs) {
    auto* w = new PromiseWorker(env, name, std::move(work), std::move(toJs));
    Napi::Promise promise = w->deferred_.Promise();
    postWork([w] { w->run(); });
    return promise;
  }

 private:
  PromiseWorker(Napi::Env env, const char* name, Work work, ToJs toJs)
      : deferred_(Napi::Promise::Deferred::New(env)),
        tsfn_(Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1)),
        gate_(std::make_shared<EnvGate>(env)),  // after tsfn_: its cleanup hook runs first (env_gate.h)
        work_(std::move(work)),
        toJs_(std::move(toJs)) {}
  ~PromiseWorker() { gate_->unhook(); }

  // On a pool thread.
  void run() {
    try {
      result_ = work_();
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
    Napi::ThreadSafeFunction tsfn = tsfn_;
    std::shared_ptr<EnvGate> gate = gate_;  // the callback may delete this worker before pass() returns
    // Through the gate: once the environment is going away, the thread-safe function may already be freed,
    // and nothing is left to settle; the worker is then leaked (its JS references belong to the JS thread).
    gate->pass([&] {
      napi_status st = tsfn.BlockingCall(this, [](Napi::Env env, Napi::Function, PromiseWorker* w) {
        if (env != nullptr) {
          try {
            w->settle(env);
          } catch (...) {  // nothing may escape a callback from another thread
          }
        }
        delete w;
      });
      tsfn.Release();
      (void)st;  // not napi_ok: the function is closing and calls the callback for what it holds, or drops it
    });
  }

  // On the JS thread.
  void settle(Napi::Env env) {
    if (!message_.empty()) {
      deferred_.Reject(makeError(env, code_, message_).Value());
      return;
    }
    Napi::Value v;
    try {
      v = toJs_(env, result_);
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
      return;
    } catch (const std::exception& e) {
      deferred_.Reject(makeError(env, "ERR_NATIVE", e.what()).Value());
      return;
    }
    deferred_.Resolve(v);
  }

  void fail(const char* code, const std::string& message) {
    code_ = code;
    message_ = message.empty() ? std::string("failed") : message;
  }

  Napi::Promise::Deferred deferred_;
  Napi::ThreadSafeFunction tsfn_;
  std::shared_ptr<EnvGate> gate_;  // shared: the work thread holds it past the worker's deletion
  Work work_;
  ToJs toJs_;
  T result_{};
  const char* code_ = "ERR_NATIVE";
  std::string message_;
};

}  // namespace la
