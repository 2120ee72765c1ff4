#include "candidates.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif
#include <stdexcept>

namespace la {

namespace {
// The subset pays off while it stays well below the vocabulary.
constexpr int32_t kMaxK = 1024;
constexpr int32_t kMinVocab = 256;
// Whether any of the 16 floats at p is at or above f, with one vector comparison per 4 (a NaN compares
// false, as in the scalar scan). Without vectors: true, and the caller looks at each.
inline bool anyAtOrAbove(const float* p, float f) {
#if defined(__SSE2__)
  const __m128 v = _mm_set1_ps(f);
  __m128 hit = _mm_or_ps(_mm_or_ps(_mm_cmpge_ps(_mm_loadu_ps(p), v), _mm_cmpge_ps(_mm_loadu_ps(p + 4), v)),
                         _mm_or_ps(_mm_cmpge_ps(_mm_loadu_ps(p + 8), v), _mm_cmpge_ps(_mm_loadu_ps(p + 12), v)));
  return _mm_movemask_ps(hit) != 0;
#elif defined(__aarch64__)
  const float32x4_t v = vdupq_n_f32(f);
  uint32x4_t hit = vorrq_u32(vorrq_u32(vcgeq_f32(vld1q_f32(p), v), vcgeq_f32(vld1q_f32(p + 4), v)),
                             vorrq_u32(vcgeq_f32(vld1q_f32(p + 8), v), vcgeq_f32(vld1q_f32(p + 12), v)));
  return vmaxvq_u32(hit) != 0;
#else
  (void)p;
  (void)f;
  return true;
#endif
}

}  // namespace

void CandidateFilter::setup(const llama_vocab* vocab, const common_params_sampling& sp) {
  nVocab_ = llama_vocab_n_tokens(vocab);
  on_ = false;
  bool topKFirst = false;  // top-k comes before any sampler that reads the whole distribution
  bool penalties = false;
  for (auto t : sp.samplers) {
    if (t == COMMON_SAMPLER_TYPE_PENALTIES) {
      penalties = true;
      continue;
    }
    if (t == COMMON_SAMPLER_TYPE_TOP_N_SIGMA && !(sp.top_n_sigma > 0.0f)) continue;  // off: passes everything
    topKFirst = t == COMMON_SAMPLER_TYPE_TOP_K;
    break;
  }
  // LLAMA_ADDON_SAMPLE_WHOLE_VOCAB=1: always sample over the whole vocabulary, as llama.cpp does (a debugging
  // switch; the tests compare both ways). Read per generation.
  const char* whole = std::getenv("LLAMA_ADDON_SAMPLE_WHOLE_VOCAB");
  if (whole != nullptr && whole[0] != '\0' && std::string(whole) != "0") return;
  if (!topKFirst || sp.top_k < 1 || sp.top_k > kMaxK || nVocab_ < kMinVocab || nVocab_ < 8 * sp.top_k) return;
  if (!sp.grammar.empty() || sp.grammar_lazy || sp.mirostat != 0 || sp.dry_multiplier != 0.0f || !sp.reasoning_budget_start.empty()) return;
  k_ = sp.top_k;
  trackAccepted_ = penalties;
  special_.assign((size_t)nVocab_, 0);
  specialList_.clear();
  on_ = true;  // mark() turns it off when the special tokens are too many
  for (const auto& b : sp.logit_bias) mark(b.token);
  int32_t nSuppress = 0;
  const llama_token* suppress = llama_vocab_get_suppress_tokens(vocab, &nSuppress);
  for (int32_t i = 0; i < nSuppress; i++) mark(suppress[i]);
}

void CandidateFilter::mark(llama_token t) {
  if (t < 0 || t >= nVocab_ || special_[(size_t)t]) return;
  special_[(size_t)t] = 1;
  specialList_.push_back(t);
  // Too many special tokens: the subset would cost what the whole array does.
  if ((int64_t)specialList_.size() > nVocab_ / 8) on_ = false;
}

void CandidateFilter::accept(llama_token t) {
  if (on_ && trackAccepted_) mark(t);
}

llama_token CandidateFilter::sample(common_sampler* s, llama_context* ctx, int idx) {
  if (!on_) return common_sampler_sample(s, ctx, idx);
  llama_synchronize(ctx);
  const float* logits = llama_get_logits_ith(ctx, idx);
  if (logits == nullptr) return common_sampler_sample(s, ctx, idx);

  // The k largest raw logits of the tokens no sampler changes before top-k: a min-heap of k, scanned in
  // token order. Every token that ends up equal to the k-th value is kept too (top-k over the whole array
  // may keep any of them): those the heap pushed out and those that did not displace an equal one.
  auto greater = [](const llama_token_data& a, const llama_token_data& b) { return a.logit > b.logit; };
  heap_.clear();
  ties_.clear();
  const uint8_t* special = special_.data();
  llama_token t = 0;
  for (; t < nVocab_ && (int32_t)heap_.size() < k_; t++) {
    if (!special[t]) heap_.push_back({t, logits[t], 0.0f});
  }
  std::make_heap(heap_.begin(), heap_.end(), greater);  // front: the smallest kept
  float floor = heap_.empty() ? 0.0f : heap_.front().logit;
  auto visit = [&](llama_token x) {
    float l = logits[x];
    if (l >= floor && !special[x]) {
      if (l == floor) {
        ties_.push_back({x, l, 0.0f});
        return;
      }
      std::pop_heap(heap_.begin(), heap_.end(), greater);
      ties_.push_back(heap_.back());
      heap_.back() = {x, l, 0.0f};
      std::push_heap(heap_.begin(), heap_.end(), greater);
      floor = heap_.front().logit;
    }
  };
  // Most blocks of 16 logits hold none at or above the floor once the heap is full: skip those.
  for (; t + 16 <= nVocab_; t += 16) {
    if (!anyAtOrAbove(logits + t, floor)) continue;
    for (llama_token j = 0; j < 16; j++) visit(t + j);
  }
  for (; t < nVocab_; t++) visit(t);
  cand_.clear();
  for (llama_token x : specialList_) cand_.push_back({x, logits[x], 0.0f});
  cand_.insert(cand_.end(), heap_.begin(), heap_.end());
  for (const auto& d : ties_) {
    if (d.logit == floor) cand_.push_back(d);
  }
  // In token order, as over the whole vocabulary (greedy takes the first of equal logits).
  std::sort(cand_.begin(), cand_.end(), [](const llama_token_data& a, const llama_token_data& b) { return a.id < b.id; });
  llama_token_data_array a{cand_.data(), cand_.size(), -1, false};
  llama_sampler_apply(common_sampler_get(s), &a);
  if (a.selected < 0 || (size_t)a.selected >= a.size) throw std::runtime_error("no token was selected during sampling");
  return a.data[a.selected].id;
}

}  // namespace la
