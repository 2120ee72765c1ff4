// Speculative decoding: the draft tokens of a step, from prompt lookup (the continuation of the latest
// earlier occurrence of the last n tokens) or from a draft model decoded greedily in its own context. The
// engine decodes them after the step's token and keeps the ones the target's sampler accepts.
#include <algorithm>
#include <stdexcept>

#include "batch.h"
#include "engine.h"
#include "guard.h"

namespace la {

void Engine::makeDraft(GenState& g, int32_t room) {
  // What the target will hold once `next` is decoded.
  const std::vector<llama_token>& cached = g.cache.tokens();  // text only: drafting is off with media (engine.cpp)
  std::vector<llama_token> history(cached.begin(), cached.begin() + (ptrdiff_t)std::min<size_t>(cached.size(), (size_t)g.nPast));
  history.push_back(g.next);
  if (g.lookupNgram > 0 || draftCtx_ == nullptr) {
    // Prompt lookup: the continuation of the latest earlier occurrence of the last n tokens.
    int32_t h = (int32_t)history.size();
    for (int32_t n = std::max(1, g.lookupNgram); n >= 2 || n == std::max(1, g.lookupNgram); n--) {
      if (h <= n) continue;
      for (int32_t start = h - n - 1; start >= 0; start--) {
        if (!std::equal(history.begin() + start, history.begin() + start + n, history.end() - n)) continue;
        for (int32_t k = start + n; k < h && (int32_t)g.drafts.size() < room; k++) g.drafts.push_back(history[(size_t)k]);
        return;
      }
      if (n <= 2) break;
    }
    return;
  }
  // Draft model: bring its sequence up to the history, then decode greedily, one token at a time.
  const llama_vocab* vocab = draftModel_->vocab;
  llama_memory_t mem = llama_get_memory(draftCtx_);
  std::vector<llama_token>& held = draftSeqs_[(size_t)g.seq];
  size_t lcp = 0;
  while (lcp < held.size() && lcp < history.size() && held[lcp] == history[lcp]) lcp++;
  if (lcp == history.size()) lcp--;  // the last token is decoded again for its logits
  if (!llama_memory_seq_rm(mem, g.seq, (llama_pos)lcp, -1)) {
    llama_memory_seq_rm(mem, g.seq, -1, -1);
    lcp = 0;
  }
  held.resize(lcp);
  int32_t cap = (int32_t)llama_n_ctx_seq(draftCtx_);
  if ((int32_t)history.size() + room > cap) return;
  int32_t nb = (int32_t)llama_n_batch(draftCtx_);
  // The draft model's decodes are cut off when this generation is aborted (or the context stops), as the
  // target's steps are (Engine::abortStep): a long history for the draft model took seconds.
  stepGens_.assign(1, &g);
  DecodingFor decoding{stepGens_};
  auto decode = [&](const llama_token* toks, size_t n, size_t pos0) {
    for (size_t off = 0; off < n; off += (size_t)nb) {
      size_t m = std::min(n - off, (size_t)nb);
      draftBatch_.n_tokens = 0;
      for (size_t i = 0; i < m; i++) batchAdd(draftBatch_, toks[off + i], (llama_pos)(pos0 + off + i), g.seq, off + i + 1 == n);
      if (llama_decode(draftCtx_, draftBatch_) != 0) return false;
    }
    return true;
  };
  try {
    AbortGuard guard;
    if (!decode(history.data() + lcp, history.size() - lcp, lcp)) throw std::runtime_error("draft decode failed");
    held = history;
    int32_t nVocab = llama_vocab_n_tokens(vocab);
    for (int32_t k = 0; k < room; k++) {
      const float* logits = llama_get_logits_ith(draftCtx_, -1);
      llama_token best = (llama_token)(std::max_element(logits, logits + nVocab) - logits);
      if (llama_vocab_is_eog(vocab, best)) break;
      g.drafts.push_back(best);
      if (k + 1 == room) break;
      if (!decode(&best, 1, held.size())) throw std::runtime_error("draft decode failed");
      held.push_back(best);
    }
  } catch (const std::exception&) {
    // No draft this step; the draft sequence is rebuilt next time.
    llama_memory_seq_rm(mem, g.seq, -1, -1);
    held.clear();
    g.drafts.clear();
  }
}

}  // namespace la
