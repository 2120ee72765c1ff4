// Filling a llama_batch: one token of one sequence per row (the only kind of row this addon decodes).
#pragma once
#include "llama.h"

namespace la {

// Appends a row to `b` (allocated by llama_batch_init with room for it) and returns its index.
inline int32_t batchAdd(llama_batch& b, llama_token token, llama_pos pos, llama_seq_id seq, bool logits) {
  int32_t i = b.n_tokens++;
  b.token[i] = token;
  b.pos[i] = pos;
  b.n_seq_id[i] = 1;
  b.seq_id[i][0] = seq;
  b.logits[i] = logits;
  return i;
}

}  // namespace la
