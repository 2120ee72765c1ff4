#include "utf8_guard.h"

#include <cmath>
#include <string>
#include <vector>

namespace la {

namespace {

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), continuing from `pending`
// (the incomplete last character so far). Returns the incomplete tail after `piece`, or false when the
// bytes are not valid.
bool scan(const std::string& pending, const std::string& piece, std::string* tail) {
  std::string s = pending + piece;
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = (unsigned char)s[i];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    for (size_t k = 1; k < len; k++) {
      if (i + k >= n) {  // the character is not complete yet
        if (tail != nullptr) *tail = s.substr(i);
        return true;
      }
      unsigned char b = (unsigned char)s[i + k];
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return false;
    }
    i += len;
  }
  if (tail != nullptr) tail->clear();
  return true;
}

void buildPieces(ModelHandle& m) {
  int32_t nVocab = llama_vocab_n_tokens(m.vocab);
  m.pieces.resize((size_t)nVocab);
  m.piecesCleanOk.resize((size_t)nVocab);
  std::vector<char> buf(256);
  for (int32_t t = 0; t < nVocab; t++) {
    int32_t len = llama_token_to_piece(m.vocab, t, buf.data(), (int32_t)buf.size(), 0, true);
    if (len < 0) {
      buf.resize((size_t)-len);
      len = llama_token_to_piece(m.vocab, t, buf.data(), (int32_t)buf.size(), 0, true);
    }
    m.pieces[(size_t)t].assign(buf.data(), (size_t)std::max(0, len));
    m.piecesCleanOk[(size_t)t] = scan(std::string(), m.pieces[(size_t)t], nullptr) ? 1 : 0;
  }
}

struct Guard {
  std::shared_ptr<ModelHandle> model;
  std::string pending;
};

const char* guardName(const llama_sampler*) { return "llama-addon-utf8"; }

void guardAccept(llama_sampler* smpl, llama_token token) {
  auto* g = static_cast<Guard*>(smpl->ctx);
  const auto& pieces = g->model->pieces;
  if (token < 0 || (size_t)token >= pieces.size()) return;
  std::string tail;
  if (scan(g->pending, pieces[(size_t)token], &tail)) g->pending = std::move(tail);
  else g->pending.clear();
}

void guardApply(llama_sampler* smpl, llama_token_data_array* cur) {
  auto* g = static_cast<Guard*>(smpl->ctx);
  const auto& pieces = g->model->pieces;
  const auto& ok = g->model->piecesCleanOk;
  for (size_t i = 0; i < cur->size; i++) {
    llama_token id = cur->data[i].id;
    if (id < 0 || (size_t)id >= pieces.size()) continue;
    bool valid = g->pending.empty() ? ok[(size_t)id] != 0 : scan(g->pending, pieces[(size_t)id], nullptr);
    // An end-of-generation token has no text; it is always allowed.
    if (!valid && !pieces[(size_t)id].empty()) cur->data[i].logit = -INFINITY;
  }
}

void guardReset(llama_sampler* smpl) { static_cast<Guard*>(smpl->ctx)->pending.clear(); }

llama_sampler* guardClone(const llama_sampler* smpl);

void guardFree(llama_sampler* smpl) { delete static_cast<Guard*>(smpl->ctx); }

llama_sampler_i g_guardIface = [] {
  llama_sampler_i i{};
  i.name = guardName;
  i.accept = guardAccept;
  i.apply = guardApply;
  i.reset = guardReset;
  i.clone = guardClone;
  i.free = guardFree;
  return i;
}();

llama_sampler* guardClone(const llama_sampler* smpl) {
  auto* src = static_cast<const Guard*>(smpl->ctx);
  return llama_sampler_init(&g_guardIface, new Guard{src->model, src->pending});
}

}  // namespace

llama_sampler* makeUtf8Guard(std::shared_ptr<ModelHandle> model) {
  ModelHandle& m = *model;
  std::call_once(m.piecesOnce, [&m] { buildPieces(m); });
  return llama_sampler_init(&g_guardIface, new Guard{std::move(model), std::string()});
}

void prependToChain(llama_sampler* chain, llama_sampler* first) {
  std::vector<llama_sampler*> rest;
  while (llama_sampler_chain_n(chain) > 0) rest.push_back(llama_sampler_chain_remove(chain, 0));
  llama_sampler_chain_add(chain, first);
  for (llama_sampler* s : rest) llama_sampler_chain_add(chain, s);
}

}  // namespace la
