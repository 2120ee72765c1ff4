#include "beam.h"
#include "batch.h"

#include "context.h"
#include "engine_task.h"
#include "sampling.h"
#include "errors.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace la {

namespace {
// The search's abort, cutting off a decode (Engine::abortStep): what the decode wrote is taken back out.
struct Aborted {};
// No room for a decode in the KV cache (status 1; one KV cache shared by all sequences is full).
struct Full {};

// A decode of the search: status 2 is the decode cut off (Engine::abortStep), for the search's abort or
// for the context stopping.
void decodeOrThrow(llama_context* ctx, const llama_batch& batch, const char* where, const std::atomic<bool>* cancel) {
  int32_t ret = llama_decode(ctx, batch);
  if (ret == 1) throw Full{};
  if (ret == 2) {
    if (cancel != nullptr && cancel->load()) throw Aborted{};
    throw CodedError("ERR_DISPOSED", "The context was disposed during the beam search");
  }
  if (ret != 0) throw std::runtime_error(std::string("llama_decode failed ") + where + " (status " + std::to_string(ret) + ")");
}

bool cancelled(const std::atomic<bool>* cancel) { return cancel != nullptr && cancel->load(); }

uint32_t readAbortId(Napi::Env env, const Napi::Value& v) {
  double id = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : 0;
  if (!(id >= 1 && id <= 4294967295.0) || std::floor(id) != id) throwArg(env, "abortId", "a positive integer", v);
  return (uint32_t)id;
}

struct Beam {
  std::vector<llama_token> tokens;
  double logprob = 0;
  llama_seq_id seq = 0;
  int32_t row = -1;  // batch row holding its last logits
};

struct Candidate {
  size_t parent;
  llama_token token;
  double logprob;
};

double scoreOf(double logprob, size_t length, float penalty) {
  return logprob / std::pow((double)std::max<size_t>(1, length), (double)penalty);
}

}  // namespace

BeamOutcome beamSearch(llama_context* ctx, const llama_vocab* vocab, const BeamParams& p, const std::atomic<bool>* cancel) {
  const int32_t k = p.beams;
  const int32_t nVocab = llama_vocab_n_tokens(vocab);
  const int32_t nBatch = (int32_t)llama_n_batch(ctx);
  const int32_t cap = (int32_t)llama_n_ctx_seq(ctx);
  llama_memory_t mem = llama_get_memory(ctx);
  const llama_seq_id home = p.seqs[0];
  std::vector<llama_seq_id> setA(p.seqs.begin(), p.seqs.begin() + k), setB(p.seqs.begin() + k, p.seqs.begin() + 2 * k);
  llama_batch batch = llama_batch_init(std::max(nBatch, k), 0, 1);
  struct Free {
    llama_batch& b;
    ~Free() { llama_batch_free(b); }
  } freeBatch{batch};
  std::vector<float> bias((size_t)nVocab, 0.0f);
  for (const llama_logit_bias& lb : p.logitBias) bias[(size_t)lb.token] += lb.bias;

  auto clearOthers = [&] {
    for (llama_seq_id s : p.seqs) {
      if (s != home) llama_memory_seq_rm(mem, s, -1, -1);
    }
  };
  const int32_t n = (int32_t)p.prompt.size();
  BeamOutcome outcome;
  if (cancelled(cancel)) {  // aborted before it ran: the home sequence keeps its cache as it was
    outcome.aborted = true;
    outcome.kept = p.keep;
    return outcome;
  }
  int32_t decoded = p.keep;  // prompt tokens in the home sequence so far
  try {
    // The prompt, into the home sequence (its cached prefix stays).
    llama_memory_seq_rm(mem, home, p.keep, -1);
    int32_t pos = p.keep;
    int32_t lastRow = -1;
    while (pos < n) {
      if (cancelled(cancel)) throw Aborted{};
      batch.n_tokens = 0;
      while (pos < n && batch.n_tokens < nBatch) {
        int32_t i = batchAdd(batch, p.prompt[(size_t)pos], pos, home, pos + 1 == n);
        if (pos + 1 == n) lastRow = i;
        pos++;
      }
      try {
        decodeOrThrow(ctx, batch, "on the prompt", cancel);
      } catch (const Full&) {
        throw CodedError("ERR_CONTEXT_FULL", "The KV cache has no room for the prompt's " + std::to_string(n - p.keep) +
                                                 " new tokens beside the other sequences' cells");
      }
      decoded = pos;
    }

    std::vector<Beam> alive{Beam{{}, 0.0, home, lastRow}};
    std::vector<BeamHypothesis> finished;
    std::vector<float> lp((size_t)nVocab);
    for (int32_t step = 0; step < p.maxTokens && !alive.empty(); step++) {
      if (n + step >= cap) {  // the sequence is full: the beams so far, as when the KV cache has no room
        outcome.full = true;
        break;
      }
      // Aborted between two steps, or during the last one's decode (whose beams are then not taken): the
      // beams found so far are the result, as those of a search with this step's maxTokens would be.
      if (cancelled(cancel)) {
        outcome.aborted = true;
        break;
      }
      const size_t finishedBefore = finished.size();
      // Expand every beam by its 2k most likely tokens (log-softmax of the biased logits).
      std::vector<Candidate> cands;
      for (size_t b = 0; b < alive.size(); b++) {
        const float* logits = llama_get_logits_ith(ctx, alive[b].row);
        if (logits == nullptr) throw std::runtime_error("no logits for a beam");
        float max = -INFINITY;
        for (int32_t t = 0; t < nVocab; t++) {
          lp[(size_t)t] = logits[t] + bias[(size_t)t];
          max = std::max(max, lp[(size_t)t]);
        }
        double sum = 0;
        for (int32_t t = 0; t < nVocab; t++) sum += std::exp((double)(lp[(size_t)t] - max));
        double lse = max + std::log(sum);
        std::vector<int32_t> idx((size_t)nVocab);
        for (int32_t t = 0; t < nVocab; t++) idx[(size_t)t] = t;
        int32_t m = std::min(nVocab, 2 * k);
        std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), [&](int32_t a, int32_t c) {
          return lp[(size_t)a] > lp[(size_t)c] || (lp[(size_t)a] == lp[(size_t)c] && a < c);
        });
        for (int32_t j = 0; j < m; j++) {
          int32_t t = idx[(size_t)j];
          if (std::isinf(lp[(size_t)t])) continue;  // banned
          cands.push_back({b, t, alive[b].logprob + (double)lp[(size_t)t] - lse});
        }
      }
      std::stable_sort(cands.begin(), cands.end(), [](const Candidate& a, const Candidate& c) { return a.logprob > c.logprob; });
      std::vector<Beam> next;
      std::vector<size_t> parents;
      for (const auto& c : cands) {
        if ((int32_t)next.size() >= k) break;
        if (llama_vocab_is_eog(vocab, c.token)) {
          BeamHypothesis h{alive[c.parent].tokens, c.logprob, scoreOf(c.logprob, alive[c.parent].tokens.size() + 1, p.lengthPenalty), true};
          finished.push_back(std::move(h));
          continue;
        }
        Beam nb{alive[c.parent].tokens, c.logprob, setB[next.size()], -1};
        nb.tokens.push_back(c.token);
        next.push_back(std::move(nb));
        parents.push_back(c.parent);
      }
      // Early stop: k hypotheses have ended.
      if ((int32_t)finished.size() >= k || next.empty()) {
        alive.clear();
        break;
      }
      // Each child's sequence becomes a copy of its parent's (llama.cpp copies the cells at the next decode,
      // which follows at once).
      for (size_t j = 0; j < next.size(); j++) {
        llama_memory_seq_rm(mem, next[j].seq, -1, -1);
        llama_memory_seq_cp(mem, alive[parents[j]].seq, next[j].seq, -1, -1);
      }
      // Decode each new beam's token in its own sequence, all in one batch.
      batch.n_tokens = 0;
      for (auto& b : next) {
        b.row = batchAdd(batch, b.tokens.back(), n + (llama_pos)b.tokens.size() - 1, b.seq, true);
      }
      try {
        decodeOrThrow(ctx, batch, "during beam search", cancel);
      } catch (const Aborted&) {
        outcome.aborted = true;  // `alive` still holds the beams before this step
        finished.resize(finishedBefore);
        break;
      } catch (const Full&) {
        outcome.full = true;  // likewise
        finished.resize(finishedBefore);
        break;
      }
      // The beams that did not continue free their sequences; the sets swap roles.
      for (llama_seq_id s : setA) {
        if (s != home) llama_memory_seq_rm(mem, s, -1, -1);
      }
      if (std::find(setA.begin(), setA.end(), home) != setA.end()) llama_memory_seq_rm(mem, home, n, -1);
      std::swap(setA, setB);
      alive = std::move(next);
    }
    for (auto& b : alive) {
      // (Ended before its first step, by an abort or a full sequence: no beam, rather than an empty one.)
      if (!b.tokens.empty()) finished.push_back({b.tokens, b.logprob, scoreOf(b.logprob, b.tokens.size(), p.lengthPenalty), false});
    }
    std::stable_sort(finished.begin(), finished.end(), [](const BeamHypothesis& a, const BeamHypothesis& c) { return a.score > c.score; });
    if ((int32_t)finished.size() > k) finished.resize((size_t)k);
    // The home sequence keeps the prompt: whichever beam used it last, its first n cells are the prompt's.
    llama_memory_seq_rm(mem, home, n, -1);
    clearOthers();
    outcome.hypotheses = std::move(finished);
    outcome.kept = n;
    return outcome;
  } catch (const Aborted&) {
    // During the prompt: the home sequence keeps the batches decoded before the cut-off one.
    llama_memory_seq_rm(mem, home, decoded, -1);
    clearOthers();
    outcome.aborted = true;
    outcome.kept = decoded;
    return outcome;
  } catch (...) {
    llama_memory_seq_rm(mem, home, -1, -1);
    clearOthers();
    throw;
  }
}


// beamSearch(sequences: number[], tokens: Int32Array, keep, { beams, maxTokens, lengthPenalty, logitBias, lora, abortId })
//   -> Promise<{ beams: [{ tokens: Int32Array, logprob, score, finished }] (best first), aborted, kept }>.
// abortId (a positive integer): abortTask(abortId) ends the search (see BeamOutcome).
Napi::Value Context::BeamSearch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  const ModelHandle& model = *engine->model();
  if (!info[0].IsArray()) throwArg(env, "sequences", "an array of sequence ids", info[0]);
  Napi::Int32Array tokens = argTokens(info, 1, "tokens");
  int32_t keep = (int32_t)argInteger(info, 2, "keep", 0, INT32_MAX);
  if (!info[3].IsObject()) throwArg(env, "options", "an object", info[3]);
  Napi::Object o = info[3].As<Napi::Object>();
  BeamParams bp;
  Napi::Array seqs = info[0].As<Napi::Array>();
  for (uint32_t i = 0; i < seqs.Length(); i++) {
    Napi::Value v = seqs.Get(i);
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d < (double)llama_n_seq_max(engine->ctx())) || std::floor(d) != d) throwArg(env, "sequences", "sequence ids of the context", v);
    bp.seqs.push_back((llama_seq_id)d);
  }
  bp.beams = (int32_t)opt(o, "beams").As<Napi::Number>().Int32Value();
  if (bp.beams < 1 || (int32_t)bp.seqs.size() != 2 * bp.beams) {
    throwError(env, "ERR_INVALID_ARGUMENT", "Beam search with " + std::to_string(bp.beams) + " beams needs " +
                                                 std::to_string(2 * bp.beams) + " sequences");
  }
  size_t n = tokens.ElementLength();
  if (n == 0) throwError(env, "ERR_INVALID_ARGUMENT", "Invalid prompt: expected at least one token, received none");
  checkTokens(env, model, tokens.Data(), n, "prompt token");
  bp.prompt.assign(tokens.Data(), tokens.Data() + n);
  bp.keep = std::min<int32_t>(keep, (int32_t)n - 1);
  Napi::Value mt = opt(o, "maxTokens");
  bp.maxTokens = mt.IsNumber() ? std::max(1, mt.As<Napi::Number>().Int32Value()) : 32;
  Napi::Value lpv = opt(o, "lengthPenalty");
  if (lpv.IsNumber()) bp.lengthPenalty = (float)lpv.As<Napi::Number>().DoubleValue();
  bp.logitBias = readLogitBias(env, o, llama_vocab_n_tokens(model.vocab));
  Napi::Value lora = opt(o, "lora");
  LoraSet set = lora.IsEmpty() || lora.IsUndefined() ? defaultLora_ : readLoraSet(env, lora, model);
  std::shared_ptr<std::atomic<bool>> cancel;
  Napi::Value aid = opt(o, "abortId");
  if (!aid.IsUndefined()) {
    cancel = std::make_shared<std::atomic<bool>>(false);
    taskAborts_.add(readAbortId(env, aid), cancel);
  }
  auto params = std::make_shared<BeamParams>(std::move(bp));
  Engine* eng = engine.get();
  auto out = std::make_shared<BeamOutcome>();
  const llama_vocab* vocab = model.vocab;
  return EngineTask::Run(
      env, engine,
      [=](llama_context* ctx) {
        Engine::CancellableTask running{*eng, cancel.get()};
        eng->applyLora(set);
        *out = beamSearch(ctx, vocab, *params, cancel.get());
      },
      [=](Napi::Env env) -> Napi::Value {
        Napi::Array res = Napi::Array::New(env, out->hypotheses.size());
        for (uint32_t i = 0; i < out->hypotheses.size(); i++) {
          const BeamHypothesis& h = out->hypotheses[i];
          Napi::Object ho = Napi::Object::New(env);
          ho.Set("tokens", int32Array(env, h.tokens));
          ho.Set("logprob", h.logprob);
          ho.Set("score", h.score);
          ho.Set("finished", h.finished);
          res.Set(i, ho);
        }
        Napi::Object r = Napi::Object::New(env);
        r.Set("beams", res);
        r.Set("aborted", out->aborted);
        r.Set("full", out->full);
        r.Set("kept", out->kept);
        return r;
      });
}

// abortTask(abortId): ends the task started with this abortId (a beam search), if it has not ended. Returns
// whether there was one.
Napi::Value Context::AbortTask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Napi::Boolean::New(env, taskAborts_.abort(readAbortId(env, info[0])));
}

}  // namespace la
