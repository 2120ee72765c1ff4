// EngineTask: work that runs on a context's engine thread between two decode steps (sequence state,
// embeddings, beam search), settling a promise on the JS thread. No libuv worker waits for the engine.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "engine.h"
#include "env_gate.h"
#include "errors.h"
#include "guard.h"
#include "large_stack.h"

namespace la {

class EngineTask {
 public:
  using Work = std::function<void(llama_context*)>;
  using Done = std::function<Napi::Value(Napi::Env)>;

  static Napi::Promise Run(Napi::Env env, const std::shared_ptr<Engine>& engine, Work work, Done done) {
    auto* task = new EngineTask();
    task->deferred_ = std::make_unique<Napi::Promise::Deferred>(Napi::Promise::Deferred::New(env));
    Napi::Promise promise = task->deferred_->Promise();
    task->work_ = std::move(work);
    task->done_ = std::move(done);
    task->tsfn_ = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                                "llama-addon.engineTask", 0, 1);
    task->gate_ = std::make_shared<EnvGate>(env);  // after tsfn_: its cleanup hook runs first (env_gate.h)
    engine->post([task](llama_context* ctx) {
      try {
        if (ctx == nullptr) {
          task->code_ = "ERR_DISPOSED";
          throw std::runtime_error("The context was disposed before the operation ran");
        }
        AbortGuard guard;
        task->work_(ctx);
      } catch (const CodedError& e) {
        task->error_ = e.what();
        task->code_ = e.code;
      } catch (const std::exception& e) {
        task->error_ = e.what();
        if (task->code_.empty()) task->code_ = "ERR_INVALID_STATE";
      } catch (...) {
        task->error_ = "unknown native error";
        task->code_ = "ERR_NATIVE";
      }
      Napi::ThreadSafeFunction tsfn = task->tsfn_;
      std::shared_ptr<EnvGate> gate = task->gate_;  // the callback may delete the task before pass() returns
      // Through the gate: once the environment is going away (a worker thread terminated), the thread-safe
      // function may already be freed and nothing is left to settle; the task is then leaked (its JS
      // references belong to the JS thread).
      gate->pass([&] {
      napi_status st = tsfn.BlockingCall(task, [](Napi::Env env, Napi::Function, EngineTask* t) {
        t->gate_->unhook();
        if (env != nullptr) {
          try {
            if (t->error_.empty()) t->deferred_->Resolve(t->done_(env));
            else t->deferred_->Reject(makeError(env, t->code_.c_str(), t->error_).Value());
          } catch (const std::exception& e) {
            try {
              t->deferred_->Reject(makeError(env, "ERR_NATIVE", e.what()).Value());
            } catch (...) {
            }
          } catch (...) {  // nothing may escape a callback from another thread
            // the environment is going away (a worker thread terminated)
          }
        }
        delete t;
      });
      tsfn.Release();
      (void)st;  // not napi_ok: the function is closing and calls the callback for what it holds, or drops it
      });
    });
    return promise;
  }

 private:
  std::unique_ptr<Napi::Promise::Deferred> deferred_;
  Napi::ThreadSafeFunction tsfn_;
  std::shared_ptr<EnvGate> gate_;  // shared: the engine thread holds it past the task's deletion
  Work work_;
  Done done_;
  std::string error_;
  std::string code_;
};

// A copy of token ids as a JS Int32Array (llama_token is int32_t).
inline Napi::Int32Array int32Array(Napi::Env env, const std::vector<int32_t>& tokens) {
  Napi::Int32Array a = Napi::Int32Array::New(env, tokens.size());
  std::copy(tokens.begin(), tokens.end(), a.Data());
  return a;
}

}  // namespace la
