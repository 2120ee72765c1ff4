// Candidates: the sampler chain applied to the few tokens it can keep, not to the whole vocabulary.
//
// llama.cpp common's sampler builds an array of every token's logit at each step and runs the chain over it:
// on a 32,000-token vocabulary that costs about 100 us per token here (a copy of the logits, the penalties'
// lookups, top-k's selection), the host's work per token that a GPU waits for. When the chain's first
// truncation is top-k (greedy is top-k 1) and everything before it changes only a known few tokens' logits
// (logit biases, the vocabulary's suppressed tokens, repetition penalties on the tokens seen), the tokens
// that top-k keeps are among those few and the k largest raw logits of the others (ties at the k-th value
// included). The chain then runs over that subset, in token order, and keeps exactly the tokens it would
// keep over the whole vocabulary: the result is the same, except that tokens whose logits are exactly equal
// may come out of top-k in another order (greedy still takes the lowest token id, as over the whole array;
// sampling at a temperature may then draw the other of two equal tokens: the same distribution, another
// draw). Equal logits come from logit biases so large that they swamp the model's (1e38), in practice.
// Anything else (a grammar, top-n-sigma, top-k 0, a vocabulary under 256 tokens) samples the usual way.
#pragma once

#include <cstdint>
#include <vector>

#include "common/sampling.h"  // llama.cpp's
#include "llama.h"

namespace la {

class CandidateFilter {
 public:
  // `sp`: the parameters the generation's sampler was built from (native/sampling.cpp).
  void setup(const llama_vocab* vocab, const common_params_sampling& sp);
  bool active() const { return on_; }
  // The token the chain samples at batch row `idx` (synchronizes the context like common_sampler_sample).
  // Throws what llama.cpp throws.
  llama_token sample(common_sampler* s, llama_context* ctx, int idx);
  // A token fed to the sampler (prompt tokens when the penalties read them, then every sampled one).
  void accept(llama_token t);

 private:
  void mark(llama_token t);
  bool on_ = false;
  int32_t k_ = 0;
  int32_t nVocab_ = 0;
  bool trackAccepted_ = false;     // the chain has penalties: every accepted token may change its logit
  std::vector<uint8_t> special_;   // per token: its logit may be changed before top-k
  std::vector<llama_token> specialList_;
  std::vector<llama_token_data> cand_;
  std::vector<llama_token_data> heap_;
  std::vector<llama_token_data> ties_;
};

}  // namespace la
