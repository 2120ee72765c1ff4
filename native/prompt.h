// A prompt as the engine decodes it (llama.cpp's tools/server server_tokens): token ids, one position each,
// and media chunks (an image, audio) that fill several positions and are decoded on their own. JS plans which
// prefix stays and what a context shift drops (lib/core/prompt.ts, lib/core/session.ts); the engine fills its
// batches from this type and keeps every cut it makes on a chunk boundary. A new kind of input is a new
// MediaChunk; the engine's batch filling, cache and cuts stay as they are.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "llama.h"

namespace la {

// One media item: `positions()` cells of a sequence, decoded in one piece outside the engine's token batch
// (for an image: mtmd's encoder, then llama_decode of its embeddings). Called on the engine thread only.
class MediaChunk {
 public:
  virtual ~MediaChunk() = default;
  // Positions it fills (at least 1).
  virtual int32_t positions() const = 0;
  // Decodes it into `seq` at positions pos .. pos + positions() - 1. Returns llama_decode's status (0: done,
  // 1: no room in the KV cache, anything else: failed); on a failure nothing of it stays in the sequence.
  virtual int32_t decode(llama_context* ctx, llama_seq_id seq, llama_pos pos) = 0;
};

class PromptTokens {
 public:
  PromptTokens() = default;
  explicit PromptTokens(std::vector<llama_token> text) : tokens_(std::move(text)) {}

  size_t size() const { return tokens_.size(); }
  bool empty() const { return tokens_.empty(); }
  bool hasMedia() const { return !media_.empty(); }
  // The token at `pos`, or LLAMA_TOKEN_NULL inside a media chunk.
  llama_token operator[](size_t pos) const { return tokens_[pos]; }
  // Every position: token ids, LLAMA_TOKEN_NULL inside media chunks.
  const std::vector<llama_token>& tokens() const { return tokens_; }

  void pushText(llama_token t) { tokens_.push_back(t); }
  void pushMedia(std::shared_ptr<MediaChunk> m) {
    int32_t n = m ? m->positions() : 0;
    if (n < 1) throw std::invalid_argument("a media chunk fills at least one position");
    media_.emplace(tokens_.size(), std::move(m));
    tokens_.insert(tokens_.end(), (size_t)n, LLAMA_TOKEN_NULL);
  }

  // The media chunk that starts at `pos`, or null.
  MediaChunk* mediaAt(size_t pos) const {
    auto it = media_.find(pos);
    return it == media_.end() ? nullptr : it->second.get();
  }
  // `pos`, or the start of the media chunk that `pos` lies inside: where a cut before `pos` may end.
  size_t boundaryBefore(size_t pos) const {
    const auto* m = containing(pos);
    return m != nullptr ? m->first : pos;
  }
  // `pos`, or the end of the media chunk that `pos` lies inside: where a cut from before `pos` may resume.
  size_t boundaryAfter(size_t pos) const {
    const auto* m = containing(pos);
    return m != nullptr ? m->first + (size_t)m->second->positions() : pos;
  }

  // The first `n` positions (a boundary: media chunks stay whole).
  void truncate(size_t n) {
    n = boundaryBefore(std::min(n, tokens_.size()));
    tokens_.resize(n);
    media_.erase(media_.lower_bound(n), media_.end());
  }
  // Without positions [from, to) (boundaries), the later ones moved back.
  void erase(size_t from, size_t to) {
    if (to <= from) return;
    tokens_.erase(tokens_.begin() + (ptrdiff_t)from, tokens_.begin() + (ptrdiff_t)to);
    std::map<size_t, std::shared_ptr<MediaChunk>> kept;
    for (auto& [start, m] : media_) {
      if (start < from) kept.emplace(start, std::move(m));
      else if (start >= to) kept.emplace(start - (to - from), std::move(m));
    }
    media_ = std::move(kept);
  }

 private:
  // The media chunk with `pos` strictly inside it (not at its start), or null.
  const std::pair<const size_t, std::shared_ptr<MediaChunk>>* containing(size_t pos) const {
    auto it = media_.upper_bound(pos);
    if (it == media_.begin()) return nullptr;
    --it;
    return it->first < pos && pos < it->first + (size_t)it->second->positions() ? &*it : nullptr;
  }

  std::vector<llama_token> tokens_;
  std::map<size_t, std::shared_ptr<MediaChunk>> media_;  // by start position
};

}  // namespace la
