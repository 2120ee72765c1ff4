// Embeddings: sequences decoded in batches on the engine thread, pooled (or per token), normalized.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "common.h"
#include "batch.h"
#include "context.h"
#include "engine_task.h"
#include "errors.h"
#include "guard.h"
#include "log.h"

namespace la {

// embed(inputs: Int32Array[], sequences: number[], normalize) -> Promise<Float32Array[]>: one vector per
// input (pooled), or every token's vectors one after another (pooling none). As many inputs as there are
// free sequences, and as fit in a batch, are decoded together.
Napi::Value Context::Embed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  llama_context* lctx = engine->ctx();
  if (!info[0].IsArray()) throwArg(env, "inputs", "an array of Int32Array", info[0]);
  if (!info[1].IsArray()) throwArg(env, "sequences", "an array of sequence ids", info[1]);
  bool normalize = argBool(info, 2, "normalize");
  const ModelHandle& model = *engine->model();
  auto inputs = std::make_shared<std::vector<std::vector<llama_token>>>();
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t nBatch = llama_n_batch(lctx);
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) throwArg(env, "inputs", "an array of Int32Array", v);
    Napi::Int32Array t = v.As<Napi::Int32Array>();
    if (t.ElementLength() == 0) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid input " + std::to_string(i) + ": expected at least one token");
    if (t.ElementLength() > nBatch || (int64_t)t.ElementLength() > engine->seqCapacity()) {
      throwError(env, "ERR_CONTEXT_FULL", "Input " + std::to_string(i) + " has " + std::to_string(t.ElementLength()) +
                                              " tokens; this context embeds at most " +
                                              std::to_string(std::min<int64_t>(nBatch, engine->seqCapacity())) +
                                              " (its batchSize and contextSize)");
    }
    checkTokens(env, model, t.Data(), t.ElementLength(), "token");
    inputs->emplace_back(t.Data(), t.Data() + t.ElementLength());
  }
  auto seqs = std::make_shared<std::vector<int32_t>>();
  Napi::Array sa = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < sa.Length(); i++) seqs->push_back(sa.Get(i).As<Napi::Number>().Int32Value());
  if (seqs->empty()) throwError(env, "ERR_NO_SEQUENCE", "No free sequence to embed with");
  enum llama_pooling_type pooling = llama_pooling_type(lctx);
  int32_t dim = pooling == LLAMA_POOLING_TYPE_RANK ? (int32_t)llama_model_n_cls_out(model.model) : llama_model_n_embd_out(model.model);
  bool encoder = llama_model_has_encoder(model.model) && !llama_model_has_decoder(model.model);
  auto out = std::make_shared<std::vector<std::vector<float>>>(inputs->size());
  Engine* eng = engine.get();
  LoraSet lora = defaultLora_;
  return EngineTask::Run(
      env, engine,
      [=](llama_context* ctx) {
        eng->applyLora(lora);
        llama_memory_t mem = llama_get_memory(ctx);
        llama_batch batch = llama_batch_init((int32_t)nBatch, 0, 1);
        struct Free {
          llama_batch& b;
          ~Free() { llama_batch_free(b); }
        } freeBatch{batch};
        size_t next = 0;
        while (next < inputs->size()) {
          // Fill one batch: whole inputs, one per free sequence.
          batch.n_tokens = 0;
          std::vector<std::pair<size_t, int32_t>> placed;  // input index, sequence
          while (next < inputs->size() && placed.size() < seqs->size() &&
                 batch.n_tokens + (int32_t)(*inputs)[next].size() <= (int32_t)nBatch) {
            int32_t seq = (*seqs)[placed.size()];
            const auto& toks = (*inputs)[next];
            for (size_t k = 0; k < toks.size(); k++) batchAdd(batch, toks[k], (llama_pos)k, seq, true);
            placed.emplace_back(next, seq);
            next++;
          }
          for (auto& pl : placed) llama_memory_seq_rm(mem, pl.second, -1, -1);
          int32_t ret = encoder ? llama_encode(ctx, batch) : llama_decode(ctx, batch);
          if (ret != 0) {
            for (auto& pl : placed) llama_memory_seq_rm(mem, pl.second, -1, -1);
            // Status 2: cut off because the context is being disposed (Engine::abortStep).
            if (ret == 2) throw CodedError("ERR_DISPOSED", "The context was disposed while it computed embeddings");
            throw std::runtime_error("llama.cpp failed to compute embeddings (status " + std::to_string(ret) + ")");
          }
          int32_t row = 0;
          for (auto& pl : placed) {
            auto& v = (*out)[pl.first];
            size_t n = (*inputs)[pl.first].size();
            if (pooling == LLAMA_POOLING_TYPE_NONE) {
              v.resize(n * (size_t)dim);
              for (size_t k = 0; k < n; k++) {
                const float* e = llama_get_embeddings_ith(ctx, row + (int32_t)k);
                if (e == nullptr) throw std::runtime_error("llama.cpp returned no token embeddings");
                std::copy(e, e + dim, v.begin() + (long)(k * dim));
              }
            } else {
              const float* e = llama_get_embeddings_seq(ctx, pl.second);
              if (e == nullptr) throw std::runtime_error("llama.cpp returned no pooled embedding");
              v.assign(e, e + dim);
            }
            if (normalize && pooling != LLAMA_POOLING_TYPE_RANK) {
              for (size_t off = 0; off < v.size(); off += (size_t)dim) {
                double sum = 0;
                for (int32_t k = 0; k < dim; k++) sum += (double)v[off + k] * v[off + k];
                double norm = std::sqrt(sum);
                if (norm > 0) {
                  for (int32_t k = 0; k < dim; k++) v[off + k] = (float)(v[off + k] / norm);
                }
              }
            }
            row += (int32_t)n;
          }
          for (auto& pl : placed) llama_memory_seq_rm(mem, pl.second, -1, -1);
        }
      },
      [=](Napi::Env env) -> Napi::Value {
        Napi::Array res = Napi::Array::New(env, out->size());
        for (uint32_t i = 0; i < out->size(); i++) {
          Napi::Float32Array f = Napi::Float32Array::New(env, (*out)[i].size());
          std::copy((*out)[i].begin(), (*out)[i].end(), f.Data());
          res.Set(i, f);
        }
        return res;
      });
}

}  // namespace la
