// What a generation hands JS: token pieces as text, held back while they may still become a stop string or
// end inside a UTF-8 character, merged into one chunk per wake-up, with log-probabilities when asked.
#include "output.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace la {

// Length of the longest suffix of `s` that is a proper prefix of one of `stops`.
size_t stopPrefixSuffix(const std::string& s, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const auto& stop : stops) {
    size_t maxK = std::min(stop.size() - 1, s.size());
    for (size_t k = maxK; k > best; --k) {
      if (s.compare(s.size() - k, k, stop, 0, k) == 0) {
        best = k;
        break;
      }
    }
  }
  return best;
}

// Moves `cut` back so that s[0, cut) does not end inside a UTF-8 character.
size_t utf8Boundary(const std::string& s, size_t cut) {
  size_t cont = 0;
  size_t i = cut;
  while (i > 0 && cont < 4) {
    unsigned char c = (unsigned char)s[i - 1];
    if ((c & 0xC0) == 0x80) {
      ++cont;
      --i;
      continue;
    }
    size_t need = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    return cont + 1 >= need ? cut : i - 1;
  }
  return cut;  // not valid UTF-8 anyway: do not hold it back
}

std::string tokenPiece(const llama_vocab* vocab, llama_token t, bool special) {
  char buf[256];
  int32_t n = llama_token_to_piece(vocab, t, buf, sizeof buf, 0, special);
  if (n >= 0) return std::string(buf, (size_t)n);
  std::string big((size_t)-n, '\0');
  n = llama_token_to_piece(vocab, t, big.data(), (int32_t)big.size(), 0, special);
  big.resize(n > 0 ? (size_t)n : 0);
  return big;
}

// Adds output to what JS has not taken yet, merging it into the one pending chunk. Call with g.mu held.
void enqueue(GenState& g, Chunk&& c) {
  g.queuedTokens += c.tokens.size();
  if (!g.queue.empty()) {
    g.queue.back().text += c.text;
    g.queue.back().tokens.insert(g.queue.back().tokens.end(), c.tokens.begin(), c.tokens.end());
    for (auto& p : c.probs) g.queue.back().probs.push_back(std::move(p));
  } else if (!c.text.empty() || !c.tokens.empty()) {
    g.queue.push_back(std::move(c));
  }
}

// The log-probability of `t` and the `n` most likely tokens, from the raw logits of batch row `i`.
TokenProb tokenProb(llama_context* ctx, const llama_vocab* vocab, int32_t i, llama_token t, int32_t n) {
  int32_t nVocab = llama_vocab_n_tokens(vocab);
  const float* logits = llama_get_logits_ith(ctx, i);
  TokenProb p;
  p.token = t;
  p.text = tokenPiece(vocab, t, false);
  if (logits == nullptr) return p;
  float max = logits[0];
  for (int32_t k = 1; k < nVocab; k++) max = std::max(max, logits[k]);
  double sum = 0;
  for (int32_t k = 0; k < nVocab; k++) sum += std::exp((double)(logits[k] - max));
  float lse = max + (float)std::log(sum);
  p.logprob = logits[t] - lse;
  if (n > 0) {
    std::vector<int32_t> idx(nVocab);
    for (int32_t k = 0; k < nVocab; k++) idx[k] = k;
    int32_t m = std::min(n, nVocab);
    std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    for (int32_t k = 0; k < m; k++) p.top.push_back(TokenAlt{idx[k], tokenPiece(vocab, idx[k], false), logits[idx[k]] - lse});
  }
  return p;
}

}  // namespace la
