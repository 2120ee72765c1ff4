// A sequence's KV state: copying it between sequences, saving it to bytes and loading it back, with every
// count and position checked against the context before llama.cpp reads it (a crafted state must not
// hang or poison the context). Runs on the engine thread (EngineTask).
#include <vector>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "common.h"
#include "context.h"
#include "engine_task.h"
#include "errors.h"
#include "guard.h"
#include "log.h"

namespace la {

namespace {

// A sequence's state as llama.cpp writes it: magic, sequence id, then for a plain KV cache the stream count
// and one section per stream, all empty (a zero cell count) except the sequence's own stream. For such
// models a saved state is rewritten to one stream, so that it loads into a context with any number of
// sequences; other models (sliding-window, recurrent) keep the layout they were saved with.
constexpr size_t kStateHead = 12;  // magic u32, seq id i32, stream count u32

bool portableState(const ModelHandle& m) {
  return !llama_model_is_recurrent(m.model) && !llama_model_is_hybrid(m.model) && llama_model_n_swa(m.model) == 0 &&
         !m.facts.hasEncoder;
}

uint32_t readU32(const std::vector<uint8_t>& d, size_t at) {
  uint32_t v;
  std::memcpy(&v, d.data() + at, 4);
  return v;
}

bool allZero(const std::vector<uint8_t>& d, size_t from, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (d[from + i] != 0) return false;
  }
  return true;
}

// Keeps only stream `s`'s section; false when the data does not have the expected shape.
bool toOneStream(std::vector<uint8_t>& d, uint32_t s) {
  if (d.size() < kStateHead) return false;
  uint32_t n = readU32(d, 8);
  if (s >= n || d.size() < kStateHead + 4ull * n) return false;
  size_t before = 4ull * s, after = 4ull * (n - s - 1);
  if (!allZero(d, kStateHead, before) || !allZero(d, d.size() - after, after)) return false;
  std::vector<uint8_t> out(d.begin(), d.begin() + kStateHead);
  uint32_t one = 1;
  std::memcpy(out.data() + 8, &one, 4);
  out.insert(out.end(), d.begin() + kStateHead + before, d.end() - after);
  d.swap(out);
  return true;
}

// The reverse: puts a one-stream state into stream `s` of `n`.
bool toStreams(std::vector<uint8_t>& d, uint32_t s, uint32_t n) {
  if (d.size() < kStateHead + 4 || readU32(d, 8) != 1) return false;
  std::vector<uint8_t> out(d.begin(), d.begin() + kStateHead);
  std::memcpy(out.data() + 8, &n, 4);
  out.insert(out.end(), 4ull * s, 0);
  out.insert(out.end(), d.begin() + kStateHead, d.end());
  out.insert(out.end(), 4ull * (n - s - 1), 0);
  d.swap(out);
  return true;
}

// Checks the cell section of a plain KV-cache state before llama.cpp reads it: llama.cpp trusts the counts
// and positions it finds (a cell count of 2^31-1 makes it reserve a batch that size; a position near 2^31
// breaks every later decode of the context). "" when the state is usable, else the reason.
std::string checkKvState(const std::vector<uint8_t>& d, uint32_t maxCells, bool cellExt) {
  if (d.size() < kStateHead) return "it is shorter than a state header";
  uint32_t streams = readU32(d, 8);
  if (streams == 0 || streams > 4096) return "it has " + std::to_string(streams) + " KV streams";
  size_t at = kStateHead;
  auto need = [&](uint64_t n) { return n <= d.size() - at; };
  auto u64 = [&](size_t pos) {
    uint64_t v;
    std::memcpy(&v, d.data() + pos, 8);
    return v;
  };
  bool seen = false;
  for (uint32_t s = 0; s < streams; s++) {
    if (!need(4)) return "it is truncated (stream " + std::to_string(s) + " is missing)";
    uint32_t cells = readU32(d, at);
    at += 4;
    if (cells == 0) continue;
    if (seen) return "it holds cells in more than one stream";
    seen = true;
    if (cells > maxCells) {
      return "it holds " + std::to_string(cells) + " cells, but a sequence of this context has room for " + std::to_string(maxCells);
    }
    if (cellExt) return {};  // cells carry model-specific extras: llama.cpp checks the rest
    if (!need((uint64_t)cells * 12)) return "it is truncated (its cell list is cut off)";
    // Positions within the sequence and each at most once. Not necessarily increasing: a cache that all
    // sequences share (kvUnified) lists a sequence's cells in the order they lie in it, which after
    // concurrent decoding and freed holes is not position order (llama.cpp's restore takes any order).
    std::vector<bool> used(cells > 0 ? maxCells : 0, false);
    for (uint32_t c = 0; c < cells; c++, at += 12) {
      int32_t pos;
      std::memcpy(&pos, d.data() + at, 4);
      uint32_t nSeq = readU32(d, at + 4);
      if (nSeq != 1) return "cell " + std::to_string(c) + " belongs to " + std::to_string(nSeq) + " sequences (expected 1)";
      if (pos < 0 || (uint32_t)pos >= maxCells || used[(uint32_t)pos]) {
        return "cell " + std::to_string(c) + " has position " + std::to_string(pos) + " (expected distinct positions from 0 to " +
               std::to_string(maxCells - 1) + ")";
      }
      used[(uint32_t)pos] = true;
    }
    // The data section (llama_kv_cache::state_write_data): every layer's K rows, then its V rows or, when V is
    // transposed, V's elements. Its length follows from the counts in it; llama.cpp checks the counts against
    // the context, this only finds where the section ends, so that the next stream's cell count is read from
    // where llama.cpp will read it.
    if (!need(8)) return "it is truncated (its data section is missing)";
    uint32_t vTrans = readU32(d, at), layers = readU32(d, at + 4);
    at += 8;
    if (vTrans > 1 || layers == 0 || layers > 65536) return "its data section has " + std::to_string(layers) + " layers";
    for (uint32_t l = 0; l < layers; l++) {
      if (!need(12)) return "it is truncated (layer " + std::to_string(l) + "'s keys are missing)";
      uint64_t row = u64(at + 4);
      at += 12;
      if (row > (1u << 26) || !need(row * cells)) return "layer " + std::to_string(l) + "'s keys do not fit in the state";
      at += row * cells;
    }
    for (uint32_t l = 0; l < layers; l++) {
      if (vTrans == 0) {
        if (!need(12)) return "it is truncated (layer " + std::to_string(l) + "'s values are missing)";
        uint64_t row = u64(at + 4);
        at += 12;
        if (row > (1u << 26) || !need(row * cells)) return "layer " + std::to_string(l) + "'s values do not fit in the state";
        at += row * cells;
      } else {
        if (!need(12)) return "it is truncated (layer " + std::to_string(l) + "'s values are missing)";
        uint64_t el = readU32(d, at + 4), embd = readU32(d, at + 8);
        at += 12;
        if (el > 16 || embd > (1u << 24) || !need(el * embd * cells)) return "layer " + std::to_string(l) + "'s values do not fit in the state";
        at += el * embd * cells;
      }
    }
  }
  if (at != d.size()) return "it has " + std::to_string(d.size() - at) + " bytes after its last section";
  return {};
}

}  // namespace

// copySequence(src, dst, length): dst holds the first `length` cached tokens of src afterwards (in order
// with the generations queued before). The data is copied, so the two share nothing afterwards.
Napi::Value Context::CopySequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  int64_t nSeq = (int64_t)llama_n_seq_max(engine->ctx());
  int32_t src = (int32_t)argInteger(info, 0, "source", 0, nSeq - 1);
  int32_t dst = (int32_t)argInteger(info, 1, "destination", 0, nSeq - 1);
  int32_t length = (int32_t)argInteger(info, 2, "length", 0, INT32_MAX);
  if (src == dst) return env.Undefined();
  engine->post([src, dst, length](llama_context* ctx) {
    if (ctx == nullptr) return;
    llama_memory_t mem = llama_get_memory(ctx);
    llama_memory_seq_rm(mem, dst, -1, -1);
    if (length == 0) return;
    if (kvStreams(ctx) == 1) {
      // One KV stream for all sequences (kvUnified): the cells take the destination too, at once and with no
      // room needed (a state round trip needed as many free cells as the source held, and failed in a full
      // shared cache).
      llama_memory_seq_cp(mem, src, dst, 0, length);
      return;
    }
    // Each sequence has its own KV stream: llama.cpp's seq_cp between streams only schedules a copy for
    // the next decode, which a save before it would miss. A state round trip copies at once.
    try {
      AbortGuard guard;
      size_t size = llama_state_seq_get_size(ctx, src);
      std::vector<uint8_t> data(size);
      if (size == 0 || llama_state_seq_get_data(ctx, data.data(), size, src) != size ||
          llama_state_seq_set_data(ctx, data.data(), size, dst) == 0) {
        llama_memory_seq_rm(mem, dst, -1, -1);
        return;
      }
      llama_memory_seq_rm(mem, dst, length, -1);
    } catch (const std::exception&) {
      // The destination stays empty; the generation that follows decodes its prompt in full.
      llama_memory_seq_rm(mem, dst, -1, -1);
    }
  });
  return env.Undefined();
}

// saveSequence(seq) -> Promise<{ data: Buffer, streams }>: the sequence's KV state. `streams` is 1 when
// the state was made portable across contexts with any number of sequences.
Napi::Value Context::SaveSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  uint32_t nSeq = llama_n_seq_max(engine->ctx());
  int32_t seq = (int32_t)argInteger(info, 0, "sequence", 0, (int64_t)nSeq - 1);
  bool portable = portableState(*engine->model());
  uint32_t nStreams = kvStreams(engine->ctx());
  auto data = std::make_shared<std::vector<uint8_t>>();
  auto streams = std::make_shared<uint32_t>(nStreams);
  return EngineTask::Run(
      env, engine,
      [=](llama_context* ctx) {
        size_t size = llama_state_seq_get_size(ctx, seq);
        if (size == 0) throw std::runtime_error("llama.cpp could not measure the sequence state");
        data->resize(size);
        if (llama_state_seq_get_data(ctx, data->data(), size, seq) != size) {
          throw std::runtime_error("llama.cpp could not copy the sequence state");
        }
        if (portable && nStreams > 1 && toOneStream(*data, (uint32_t)seq)) *streams = 1;
      },
      [=](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("data", Napi::Buffer<uint8_t>::Copy(env, data->data(), data->size()));
        o.Set("streams", *streams);
        return o;
      });
}

// loadSequence(seq, data: Uint8Array, streams) -> Promise<void>: replaces the sequence's KV state.
Napi::Value Context::LoadSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = engineOrThrow(env);
  uint32_t nSeq = llama_n_seq_max(engine->ctx());
  int32_t seq = (int32_t)argInteger(info, 0, "sequence", 0, (int64_t)nSeq - 1);
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throwArg(env, "data", "a Uint8Array", info[1]);
  }
  uint32_t streams = (uint32_t)argInteger(info, 2, "streams", 1, 1 << 16);
  Napi::Uint8Array bytes = info[1].As<Napi::Uint8Array>();
  auto data = std::make_shared<std::vector<uint8_t>>(bytes.Data(), bytes.Data() + bytes.ElementLength());
  uint32_t nStreams = kvStreams(engine->ctx());
  if (streams != nStreams) {
    if (streams != 1 || !portableState(*engine->model()) || !toStreams(*data, (uint32_t)seq, nStreams)) {
      throwError(env, "ERR_INVALID_STATE",
                 "The state was saved from a context with " + std::to_string(streams) +
                     " KV streams (one per sequence, or one with kvUnified); for this model it loads only into a context with as many, but this one has " +
                     std::to_string(nStreams));
    }
  }
  if (portableState(*engine->model())) {
    int32_t rope = llama_model_rope_type(engine->model()->model);
    bool cellExt = rope == LLAMA_ROPE_TYPE_MROPE || rope == LLAMA_ROPE_TYPE_IMROPE || rope == LLAMA_ROPE_TYPE_VISION;
    std::string why = checkKvState(*data, llama_n_ctx_seq(engine->ctx()), cellExt);
    if (!why.empty()) throwError(env, "ERR_INVALID_STATE", "The session state cannot be loaded into this context: " + why);
  }
  return EngineTask::Run(
      env, engine,
      [=](llama_context* ctx) {
        LogCapture capture;
        size_t n = llama_state_seq_set_data(ctx, data->data(), data->size(), seq);
        if (n == 0) {
          std::string logged = capture.take();
          llama_memory_seq_rm(llama_get_memory(ctx), seq, -1, -1);
          if (logged.find("available cells") != std::string::npos) {
            // A valid state, but the KV cache (shared, with kvUnified) has no room for its cells now.
            throw CodedError("ERR_CONTEXT_FULL", "The KV cache has no room for the state's cells now: " + logged);
          }
          if (logged.find("V transposition") != std::string::npos) {
            // llama.cpp keeps V transposed without flash attention: a state saved with the other setting.
            throw CodedError("ERR_INVALID_STATE",
                             "The session state was saved by a context whose flash attention differs from this one's "
                             "(llama.cpp stores V transposed without it): load it into a context created with the "
                             "flashAttention of the one that saved it (ctx.flashAttention says; llama.cpp: " + logged + ")");
          }
          throw std::runtime_error("llama.cpp rejected the sequence state" + (logged.empty() ? "" : ": " + logged));
        }
      },
      [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
}

}  // namespace la
