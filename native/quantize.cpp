// quantize(input, output, ftype, threads) -> Promise<void>: llama.cpp's quantizer, on a worker thread.
#include <napi.h>

#include "pool_worker.h"
#include "errors.h"
#include "guard.h"
#include "llama.h"
#include "log.h"

namespace la {

namespace {

class QuantizeWorker : public PoolWorker {
 public:
  QuantizeWorker(Napi::Env env, std::string in, std::string out, int32_t ftype, int32_t threads)
      : PoolWorker(env, "llama-addon.quantize"),
        deferred_(Napi::Promise::Deferred::New(env)),
        in_(std::move(in)),
        out_(std::move(out)),
        ftype_(ftype),
        threads_(threads) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.ftype = (llama_ftype)ftype_;
    p.nthread = threads_;
    LogCapture capture;
    uint32_t rc = 1;
    std::string reason;
    try {
      AbortGuard guard;
      rc = llama_model_quantize(in_.c_str(), out_.c_str(), &p);
    } catch (const std::exception& e) {
      reason = e.what();
    }
    if (rc != 0) {
      // The exception's reason first: the log before it is mostly warnings about tensors.
      std::string logged = capture.take();
      std::string why = reason.empty() ? logged : logged.empty() ? reason : reason + " (llama.cpp logged: " + logged + ")";
      SetError("llama.cpp could not quantize " + in_ + (why.empty() ? std::string() : ": " + why));
    }
  }

  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(makeError(Env(), "ERR_QUANTIZE", e.Message()).Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string in_, out_;
  int32_t ftype_, threads_;
};

}  // namespace

Napi::Value Quantize(const Napi::CallbackInfo& info) {
  std::string in = argString(info, 0, "input");
  std::string out = argString(info, 1, "output");
  int32_t ftype = (int32_t)argInteger(info, 2, "type", 0, 1000);
  int32_t threads = (int32_t)argInteger(info, 3, "threads", 0, 1024);
  auto* w = new QuantizeWorker(info.Env(), std::move(in), std::move(out), ftype, threads);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace la
