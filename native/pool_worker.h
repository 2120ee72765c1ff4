// Long native work (loading models and adapters, creating and freeing contexts, quantizing) with the shape of
// node-addon-api's AsyncWorker (Execute on another thread; OnOK or OnError on the JS thread), run on the
// addon's long-work pool (work_pool.h) instead of libuv's: a model load holds its thread for seconds to
// minutes, and on libuv's pool (four threads by default) the host application's file reads, DNS lookups and
// crypto waited behind it. Results reach the JS thread through a thread-safe function, which also keeps the
// event loop alive meanwhile. Whatever Execute throws becomes an error (OnError); what OnOK throws does too.
#pragma once
#include <napi.h>

#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "env_gate.h"
#include "work_pool.h"

namespace la {

class PoolWorker {
 public:
  PoolWorker(Napi::Env env, const char* name)
      : env_(env),
        tsfn_(Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1)),
        gate_(std::make_shared<EnvGate>(env)) {}  // after tsfn_: its cleanup hook runs first (env_gate.h)
  virtual ~PoolWorker() { gate_->unhook(); }
  PoolWorker(const PoolWorker&) = delete;
  PoolWorker& operator=(const PoolWorker&) = delete;

  // Starts the work; the worker deletes itself once it has settled.
  void Queue() {
    postLongWork([this] { run(); });
  }

 protected:
  // On a pool thread.
  virtual void Execute() = 0;
  // On the JS thread, after Execute.
  virtual void OnOK() {}
  virtual void OnError(const Napi::Error&) {}
  // On the pool thread, when the JS environment went away before the result could be delivered (a worker
  // thread terminated mid-load): free what the work made (a model, a context), since nothing will.
  virtual void OnAbandon() {}

  // From Execute: the work failed with `message` (OnError is called instead of OnOK).
  void SetError(const std::string& message) { error_ = message.empty() ? std::string("failed") : message; }
  // Only on the JS thread (in OnOK, OnError and progress callbacks).
  Napi::Env Env() const { return Napi::Env(env_); }
  // Calls `fn` on the JS thread, in order with the other calls and before OnOK/OnError.
  template <typename Fn>
  void post(Fn&& fn) {
    auto* job = new Fn(std::forward<Fn>(fn));
    napi_status st = napi_closing;
    gate_->pass([&] {
      st = tsfn_.NonBlockingCall(job, [](Napi::Env env, Napi::Function, Fn* f) {
        if (env != nullptr) {
          try {
            (*f)(env);
          } catch (...) {  // nothing may escape a callback from another thread
          }
        }
        delete f;
      });
    });
    if (st != napi_ok) delete job;
  }

 private:
  void run() {
    try {
      Execute();
    } catch (const std::bad_alloc&) {
      SetError("Out of memory");
    } catch (const std::exception& e) {
      SetError(e.what());
    } catch (...) {
      SetError("Unknown error");
    }
    Napi::ThreadSafeFunction tsfn = tsfn_;
    std::shared_ptr<EnvGate> gate = gate_;  // the callback may delete this worker before pass() returns
    napi_status st = napi_closing;
    // Through the gate: once the environment is going away the thread-safe function may already be freed.
    bool passed = gate->pass([&] {
      st = tsfn.BlockingCall(this, [](Napi::Env env, Napi::Function, PoolWorker* w) {
        if (env != nullptr) w->settle(env);
        delete w;
      });
      tsfn.Release();
    });
    // When the environment is going away nothing is left to settle: what the work made is freed here, and
    // the worker itself is leaked rather than deleted, since its JS references may only be released on the
    // JS thread. (A call the closing function refused: it holds nothing of ours.)
    if (!passed || st != napi_ok) {
      try {
        OnAbandon();
      } catch (...) {
      }
    }
  }

  void settle(Napi::Env env) {
    try {
      if (error_.empty()) {
        OnOK();
        return;
      }
      OnError(Napi::Error::New(env, error_));
      return;
    } catch (const Napi::Error& e) {
      if (!error_.empty()) return;  // OnError itself failed: nothing more to do
      error_ = e.Message();
    } catch (const std::exception& e) {
      if (!error_.empty()) return;
      error_ = e.what();
    } catch (...) {
      return;
    }
    try {
      OnError(Napi::Error::New(env, error_));
    } catch (...) {
    }
  }

  napi_env env_;
  Napi::ThreadSafeFunction tsfn_;
  std::shared_ptr<EnvGate> gate_;  // shared: the work thread holds it past the worker's deletion
  std::string error_;
};

// A PoolWorker that reports progress: Execute sends values, OnProgress receives them on the JS thread.
template <typename T>
class PoolProgressWorker : public PoolWorker {
 public:
  class ExecutionProgress {
   public:
    void Send(const T* data, size_t count) const { w_->sendProgress(data, count); }

   private:
    friend class PoolProgressWorker;
    explicit ExecutionProgress(PoolProgressWorker* w) : w_(w) {}
    PoolProgressWorker* w_;
  };

  using PoolWorker::PoolWorker;

 protected:
  virtual void Execute(const ExecutionProgress& progress) = 0;
  virtual void OnProgress(const T* data, size_t count) = 0;

 private:
  void Execute() final {
    ExecutionProgress p(this);
    Execute(p);
  }
  void sendProgress(const T* data, size_t count) {
    post([this, values = std::vector<T>(data, data + count)](Napi::Env) { OnProgress(values.data(), values.size()); });
  }
};

}  // namespace la
