#include "model_check.h"

#include <cmath>
#include <cstring>
#include <string>

#include "ggml.h"
#include "gguf.h"

namespace la {

namespace {

bool endsWith(const std::string& s, const char* suffix) {
  size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// Types that ggml's matrix multiplication and row lookup accept as weights on every backend: the float
// types and the block-quantized ones. The integer types (I8..I64) and F64 are data types for other ops.
// A weight type must read back as floats (ggml's to_float): Q8_1 and Q8_K are block-quantized but only
// ever activations, with neither a dot product nor a row lookup on the CPU, and crash the first decode.
bool isWeightType(ggml_type t) {
  if (t == GGML_TYPE_F32) return true;
  if ((int)t < 0 || (int)t >= GGML_TYPE_COUNT) return false;
  const ggml_type_traits* traits = ggml_get_type_traits(t);
  return traits != nullptr && traits->to_float != nullptr && traits->blck_size > 0;
}

std::string typeName(ggml_type t) {
  const char* n = ((int)t >= 0 && (int)t < GGML_TYPE_COUNT) ? ggml_type_name(t) : nullptr;
  return n != nullptr ? n : "type " + std::to_string((int)t);
}

std::string formatFloat(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Checks one floating-point hyper-parameter: finite everywhere; epsilons in (0, 1); frequencies positive.
std::string checkFloat(const std::string& key, double v) {
  if (!std::isfinite(v)) return key + " must be a finite number, but it is " + formatFloat(v);
  if (endsWith(key, "epsilon") && !(v > 0.0 && v < 1.0)) {
    return key + " must be greater than 0 and less than 1, but it is " + formatFloat(v);
  }
  if ((endsWith(key, "freq_base") || endsWith(key, "freq_base_swa")) && !(v > 0.0)) {
    return key + " must be greater than 0, but it is " + formatFloat(v);
  }
  return {};
}

std::string checkKv(const gguf_context* g, int64_t i) {
  std::string key = gguf_get_key(g, i);
  if (key.rfind("tokenizer.", 0) == 0) return {};  // scores and the like: llama.cpp handles any value
  switch (gguf_get_kv_type(g, i)) {
    case GGUF_TYPE_FLOAT32: return checkFloat(key, gguf_get_val_f32(g, i));
    case GGUF_TYPE_FLOAT64: return checkFloat(key, gguf_get_val_f64(g, i));
    case GGUF_TYPE_ARRAY: {
      gguf_type at = gguf_get_arr_type(g, i);
      size_t n = gguf_get_arr_n(g, i);
      const void* data = n > 0 && (at == GGUF_TYPE_FLOAT32 || at == GGUF_TYPE_FLOAT64) ? gguf_get_arr_data(g, i) : nullptr;
      for (size_t k = 0; data != nullptr && k < n; k++) {
        double v = at == GGUF_TYPE_FLOAT32 ? (double)static_cast<const float*>(data)[k] : static_cast<const double*>(data)[k];
        std::string why = checkFloat(key + "[" + std::to_string(k) + "]", v);
        if (!why.empty()) return why;
      }
      return {};
    }
    default: return {};
  }
}

int64_t intKey(const gguf_context* g, const std::string& key, int64_t fallback) {
  int64_t i = gguf_find_key(g, key.c_str());
  if (i < 0) return fallback;
  switch (gguf_get_kv_type(g, i)) {
    case GGUF_TYPE_UINT8: return gguf_get_val_u8(g, i);
    case GGUF_TYPE_INT8: return gguf_get_val_i8(g, i);
    case GGUF_TYPE_UINT16: return gguf_get_val_u16(g, i);
    case GGUF_TYPE_INT16: return gguf_get_val_i16(g, i);
    case GGUF_TYPE_UINT32: return gguf_get_val_u32(g, i);
    case GGUF_TYPE_INT32: return gguf_get_val_i32(g, i);
    case GGUF_TYPE_UINT64: return (int64_t)gguf_get_val_u64(g, i);
    case GGUF_TYPE_INT64: return gguf_get_val_i64(g, i);
    default: return fallback;
  }
}

std::string stringKey(const gguf_context* g, const char* key) {
  int64_t i = gguf_find_key(g, key);
  if (i < 0 || gguf_get_kv_type(g, i) != GGUF_TYPE_STRING) return {};
  return gguf_get_val_str(g, i);
}

struct Gguf {
  gguf_context* g = nullptr;
  ggml_context* meta = nullptr;
  explicit Gguf(const std::string& path) {
    gguf_init_params params{/*no_alloc*/ true, /*ctx*/ &meta};
    g = gguf_init_from_file(path.c_str(), params);
  }
  ~Gguf() {
    if (g != nullptr) gguf_free(g);
    if (meta != nullptr) ggml_free(meta);
  }
};

// Scalar attention shape: heads must divide evenly into KV heads (llama.cpp divides by both).
std::string checkHeads(const gguf_context* g, const std::string& arch) {
  int64_t heads = intKey(g, arch + ".attention.head_count", -1);
  int64_t headsKv = intKey(g, arch + ".attention.head_count_kv", -1);
  if (heads > 0 && headsKv == 0) return arch + ".attention.head_count_kv must be at least 1 when the model has attention heads";
  if (heads > 0 && headsKv > 0 && (headsKv > heads || heads % headsKv != 0)) {
    return arch + ".attention.head_count (" + std::to_string(heads) + ") must be a multiple of " + arch +
           ".attention.head_count_kv (" + std::to_string(headsKv) + ")";
  }
  int64_t embd = intKey(g, arch + ".embedding_length", -1);
  if (embd == 0) return arch + ".embedding_length must be at least 1";
  int64_t blocks = intKey(g, arch + ".block_count", -1);
  if (blocks == 0) return arch + ".block_count must be at least 1";
  return {};
}

std::string checkTensors(const Gguf& f, bool adapter) {
  int64_t n = gguf_get_n_tensors(f.g);
  for (int64_t i = 0; i < n; i++) {
    std::string name = gguf_get_tensor_name(f.g, i);
    ggml_type t = gguf_get_tensor_type(f.g, i);
    const ggml_tensor* info = f.meta != nullptr ? ggml_get_tensor(f.meta, name.c_str()) : nullptr;
    int dims = info != nullptr ? ggml_n_dims(info) : 2;
    bool isNorm = endsWith(name, "norm.weight") || endsWith(name, "norm.bias") || name.find("_norm") != std::string::npos;
    if (!adapter && (dims == 1 || isNorm) && t != GGML_TYPE_F32) {
      // Norms, biases and scales are added and multiplied element by element in F32.
      return "tensor " + name + " must be F32 (a " + std::to_string(dims) + "-D " + (isNorm ? "norm " : "") +
             "tensor), but it is " + typeName(t);
    }
    if (adapter && dims > 2 && name.find("_exps") == std::string::npos) {
      return "tensor " + name + " has " + std::to_string(dims) + " dimensions; LoRA matrices have 2 (3 for expert tensors)";
    }
    if (!isWeightType(t)) {
      return "tensor " + name + " has type " + typeName(t) +
             ", which llama.cpp cannot use as a weight (expected F32, F16, BF16 or a quantized weight type; Q8_1 and Q8_K are not)";
    }
  }
  return {};
}

}  // namespace

std::string checkModelFile(const std::string& path, bool vocabOnly) {
  Gguf f(path);
  if (f.g == nullptr) return {};  // not readable as GGUF: llama.cpp says why
  std::string tokenizer = stringKey(f.g, "tokenizer.ggml.model");
  if (tokenizer == "none" || tokenizer == "no_vocab") {
    return "the model has no vocabulary (tokenizer.ggml.model is \"" + tokenizer +
           "\"), so no text can be tokenized with it";
  }
  for (int64_t i = 0, n = gguf_get_n_kv(f.g); i < n; i++) {
    std::string why = checkKv(f.g, i);
    if (!why.empty()) return why;
  }
  std::string arch = stringKey(f.g, "general.architecture");
  if (!arch.empty()) {
    std::string why = checkHeads(f.g, arch);
    if (!why.empty()) return why;
  }
  if (vocabOnly) return {};
  return checkTensors(f, false);
}

std::string checkAdapterFile(const std::string& path) {
  Gguf f(path);
  if (f.g == nullptr) return {};
  for (int64_t i = 0, n = gguf_get_n_kv(f.g); i < n; i++) {
    std::string why = checkKv(f.g, i);
    if (!why.empty()) return why;
  }
  return checkTensors(f, true);
}

}  // namespace la
