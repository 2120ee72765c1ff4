// Beam search over parallel sequences of a context. llama.cpp removed its own; this one keeps k beams, each
// in its own sequence, and copies a parent's KV cells into a child's sequence as beams branch.
#pragma once
#include <atomic>
#include <vector>

#include "llama.h"

namespace la {

struct BeamParams {
  std::vector<llama_seq_id> seqs;  // 2k sequences; seqs[0] holds the prompt's cache (the session's own)
  std::vector<llama_token> prompt;
  int32_t keep = 0;                // prompt tokens already in seqs[0]
  int32_t beams = 2;
  int32_t maxTokens = 32;
  float lengthPenalty = 1.0f;      // score = log-probability / length^lengthPenalty
  std::vector<llama_logit_bias> logitBias;
};

struct BeamHypothesis {
  std::vector<llama_token> tokens;  // without the end-of-generation token
  double logprob = 0;               // sum of the tokens' log-probabilities (the end token's included)
  double score = 0;                 // logprob / length^lengthPenalty (length counts the end token)
  bool finished = false;            // ended with an end-of-generation token
};

struct BeamOutcome {
  std::vector<BeamHypothesis> hypotheses;  // up to `beams`, best first
  bool aborted = false;                    // `cancel` was set: the beams found so far, unfinished ones included
  bool full = false;                       // ended because the sequence, or the shared KV cache, had no room
  int32_t kept = 0;                        // prompt tokens seqs[0] holds afterwards (all of them unless aborted
                                           // before the prompt was decoded)
};

// Runs on the engine thread. seqs[0] keeps the prompt (or, aborted before it was decoded, the part `kept`
// says) afterwards; the other sequences are emptied. `cancel`, when set, ends the search before its next
// decode, or cuts off the decode running (with Engine::CancellableTask). Throws on decode failure, and with
// ERR_DISPOSED when the context stops.
BeamOutcome beamSearch(llama_context* ctx, const llama_vocab* vocab, const BeamParams& p, const std::atomic<bool>* cancel);

}  // namespace la
