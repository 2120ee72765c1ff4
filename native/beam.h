// Beam search over parallel sequences of a context. llama.cpp removed its own; this one keeps k beams, each
// in its own sequence, and copies a parent's KV cells into a child's sequence as beams branch.
#pragma once
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

// Runs on the engine thread. Returns up to `beams` hypotheses, best first. seqs[0] keeps the prompt
// afterwards; the other sequences are emptied. Throws on decode failure.
std::vector<BeamHypothesis> beamSearch(llama_context* ctx, const llama_vocab* vocab, const BeamParams& p);

}  // namespace la
