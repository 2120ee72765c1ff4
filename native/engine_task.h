// EngineTask: work that runs on a context's engine thread between two decode steps (sequence state,
// embeddings, beam search), settling a promise on the JS thread. No libuv worker waits for the engine.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "engine.h"
#include "errors.h"
#include "guard.h"

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
                                                "llama-addon.sequenceState", 0, 1);
    engine->post([task](llama_context* ctx) {
      try {
        if (ctx == nullptr) {
          task->code_ = "ERR_DISPOSED";
          throw std::runtime_error("The context was disposed before the operation ran");
        }
        AbortGuard guard;
        task->work_(ctx);
      } catch (const std::exception& e) {
        task->error_ = e.what();
        if (task->code_.empty()) task->code_ = "ERR_INVALID_STATE";
      } catch (...) {
        task->error_ = "unknown native error";
        task->code_ = "ERR_NATIVE";
      }
      Napi::ThreadSafeFunction tsfn = task->tsfn_;
      napi_status st = tsfn.BlockingCall(task, [](Napi::Env env, Napi::Function, EngineTask* t) {
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
      if (st != napi_ok) delete task;  // the environment is shutting down
      tsfn.Release();
    });
    return promise;
  }

 private:
  std::unique_ptr<Napi::Promise::Deferred> deferred_;
  Napi::ThreadSafeFunction tsfn_;
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
