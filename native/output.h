// Text output of generations (native/output.cpp): stop strings, UTF-8 boundaries, token pieces, chunks
// and log-probabilities.
#pragma once
#include <string>
#include <vector>

#include "engine.h"
#include "llama.h"

namespace la {

// Length of the longest suffix of `s` that is a proper prefix of one of `stops`: text held back because
// a stop string may still start there.
size_t stopPrefixSuffix(const std::string& s, const std::vector<std::string>& stops);
// Moves `cut` back so that s[0, cut) does not end inside a UTF-8 character.
size_t utf8Boundary(const std::string& s, size_t cut);
// The text of a token (`special`: special tokens rendered as their text).
std::string tokenPiece(const llama_vocab* vocab, llama_token t, bool special);
// Adds output to what JS has not taken yet, merging it into the one pending chunk. Call with g.mu held.
void enqueue(GenState& g, Chunk&& c);
// The log-probability of `t` and the `n` most likely tokens, from the raw logits of batch row `i`.
TokenProb tokenProb(llama_context* ctx, const llama_vocab* vocab, int32_t i, llama_token t, int32_t n);

}  // namespace la
