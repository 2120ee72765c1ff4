#include "sampling.h"

#include <algorithm>
#include <cmath>

#include "common.h"
#include "errors.h"
#include "grammar.h"
#include "grammar_check.h"
#include "guard.h"
#include "log.h"
#include "promise_worker.h"
#include "utf8_guard.h"

namespace la {

namespace {

std::string stringOption(Napi::Env env, const Napi::Object& o, const char* key) {
  Napi::Value v = opt(o, key);
  if (v.IsEmpty() || v.IsUndefined()) return std::string();
  if (!v.IsString()) throwArg(env, key, "a string", v);
  return v.As<Napi::String>().Utf8Value();
}

// A string that is exactly one token (special tokens parsed), or LLAMA_TOKEN_NULL.
llama_token singleToken(const llama_vocab* vocab, const std::string& text) {
  try {
    std::vector<llama_token> ids = common_tokenize(vocab, text, false, true);
    return ids.size() == 1 ? ids[0] : LLAMA_TOKEN_NULL;
  } catch (const std::exception&) {
    return LLAMA_TOKEN_NULL;  // text the vocabulary cannot represent is not one token either
  }
}

// A required number of the complete sampling values JavaScript sends (lib/options/sampling.ts).
double need(Napi::Env env, const Napi::Object& s, const char* key) {
  Napi::Value v = opt(s, key);
  if (v.IsEmpty() || !v.IsNumber()) throwArg(env, key, "a number (every sampling value is sent)", v.IsEmpty() ? env.Undefined() : v);
  double d = v.As<Napi::Number>().DoubleValue();
  if (std::isnan(d)) throwArg(env, key, "a number that is not NaN", v);
  return d;
}


// The grammar options of `o` into `sp`.
void readGrammar(Napi::Env env, const std::shared_ptr<ModelHandle>& modelPtr, const Napi::Object& o,
                 common_params_sampling& sp, std::vector<llama_token>& preserved) {
  const ModelHandle& model = *modelPtr;
  const llama_vocab* vocab = model.vocab;
  std::string grammar = stringOption(env, o, "grammar");
  std::string type = stringOption(env, o, "grammarType");
  if (!grammar.empty()) {
    common_grammar_type t = type == "output" ? COMMON_GRAMMAR_TYPE_OUTPUT_FORMAT
                            : type == "tools" ? COMMON_GRAMMAR_TYPE_TOOL_CALLS
                                              : COMMON_GRAMMAR_TYPE_USER;
    sp.grammar = common_grammar(t, grammar);
  }
  Napi::Value lazy = opt(o, "grammarLazy");
  sp.grammar_lazy = lazy.IsBoolean() && lazy.As<Napi::Boolean>().Value();
  sp.generation_prompt = stringOption(env, o, "generationPrompt");

  Napi::Value kept = opt(o, "preservedTokens");
  if (kept.IsArray()) {
    Napi::Array arr = kept.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value v = arr.Get(i);
      if (!v.IsString()) throwArg(env, "preservedTokens", "an array of strings", v);
      llama_token t = singleToken(vocab, v.As<Napi::String>().Utf8Value());
      if (t != LLAMA_TOKEN_NULL) sp.preserved_tokens.insert(t);
    }
  }
  Napi::Value triggers = opt(o, "grammarTriggers");
  if (triggers.IsArray()) {
    Napi::Array arr = triggers.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value v = arr.Get(i);
      if (!v.IsObject()) throwArg(env, "grammarTriggers", "objects { type, value }", v);
      Napi::Object tr = v.As<Napi::Object>();
      std::string kind = stringOption(env, tr, "type");
      std::string value = stringOption(env, tr, "value");
      common_grammar_trigger trigger;
      trigger.value = value;
      if (kind == "word") {
        // As llama-server does: a word that is one preserved token triggers on that token.
        llama_token t = singleToken(vocab, value);
        if (t != LLAMA_TOKEN_NULL && sp.preserved_tokens.count(t) != 0) {
          trigger.type = COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN;
          trigger.token = t;
        } else {
          trigger.type = COMMON_GRAMMAR_TRIGGER_TYPE_WORD;
        }
      } else if (kind == "pattern") {
        trigger.type = COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN;
      } else if (kind == "patternFull") {
        trigger.type = COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL;
      } else if (kind == "token") {
        Napi::Value tok = opt(tr, "token");
        if (!tok.IsNumber()) throwArg(env, "grammarTriggers", "a token id for a token trigger", tok);
        trigger.type = COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN;
        trigger.token = tok.As<Napi::Number>().Int32Value();
        checkTokens(env, model, &trigger.token, 1, "trigger token");
        sp.preserved_tokens.insert(trigger.token);
      } else {
        throwArg(env, "grammarTriggers", "type \"word\", \"pattern\", \"patternFull\" or \"token\"", tr.Get("type"));
      }
      sp.grammar_triggers.push_back(std::move(trigger));
    }
  }
  if (sp.grammar_lazy && sp.grammar_triggers.empty()) {
    throwError(env, "ERR_INVALID_GRAMMAR", "A lazy grammar needs at least one trigger");
  }
  preserved.assign(sp.preserved_tokens.begin(), sp.preserved_tokens.end());
  std::sort(preserved.begin(), preserved.end());
}

}  // namespace

std::vector<llama_logit_bias> readLogitBias(Napi::Env env, const Napi::Object& o, int32_t nVocab) {
  std::vector<llama_logit_bias> out;
  Napi::Value bias = opt(o, "logitBias");
  if (bias.IsEmpty() || bias.IsUndefined()) return out;
  if (!bias.IsArray()) throwArg(env, "logitBias", "an array of [token, bias] pairs", bias);
  Napi::Array arr = bias.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value pair = arr.Get(i);
    if (!pair.IsArray() || pair.As<Napi::Array>().Length() != 2) throwArg(env, "logitBias", "[token, bias] pairs", pair);
    Napi::Value tv = pair.As<Napi::Array>().Get(0u), bv = pair.As<Napi::Array>().Get(1u);
    if (!tv.IsNumber() || !bv.IsNumber()) throwArg(env, "logitBias", "[token, bias] number pairs", pair);
    int32_t t = tv.As<Napi::Number>().Int32Value();
    if (t < 0 || t >= nVocab) {
      throwError(env, "ERR_INVALID_ARGUMENT", "Invalid option logitBias: token " + std::to_string(t) +
                                                  " is not in the vocabulary (0 to " + std::to_string(nVocab - 1) + ")");
    }
    out.push_back({t, (float)bv.As<Napi::Number>().DoubleValue()});
  }
  return out;
}

SamplingSetup readSampling(Napi::Env env, const std::shared_ptr<ModelHandle>& model, const Napi::Object& o, int32_t seqCapacity) {
  Napi::Value sv = opt(o, "sampling");
  if (sv.IsEmpty() || !sv.IsObject()) throwArg(env, "sampling", "an object of every sampling value", sv.IsEmpty() ? env.Undefined() : sv);
  Napi::Object s = sv.As<Napi::Object>();
  SamplingSetup out;
  common_params_sampling& sp = out.params;
  sp.no_perf = true;
  sp.temp = (float)need(env, s, "temperature");
  sp.top_k = (int32_t)std::max(0.0, std::min(need(env, s, "topK"), (double)INT32_MAX));
  sp.top_p = (float)need(env, s, "topP");
  sp.min_p = (float)need(env, s, "minP");
  sp.top_n_sigma = (float)need(env, s, "topNSigma");
  sp.typ_p = (float)need(env, s, "typicalP");
  sp.penalty_repeat = (float)need(env, s, "repeatPenalty");
  sp.penalty_present = (float)need(env, s, "presencePenalty");
  sp.penalty_freq = (float)need(env, s, "frequencyPenalty");
  double lastN = need(env, s, "penaltyLastN");
  // -1 is the whole sequence; a longer window means the same, and llama.cpp allocates a buffer of its size.
  sp.penalty_last_n = lastN < 0 ? seqCapacity : (int32_t)std::min(lastN, (double)seqCapacity);
  sp.seed = (uint32_t)std::max(0.0, std::min(need(env, s, "seed"), (double)UINT32_MAX));

  // The chain, in llama-server's order: penalties, then the truncations (top-n-sigma first), then the temperature; greedy
  // (temperature 0) takes the most likely token that the grammar allows.
  bool penalties = sp.penalty_last_n != 0 && (sp.penalty_repeat != 1.0f || sp.penalty_present != 0.0f || sp.penalty_freq != 0.0f);
  sp.samplers.clear();
  if (penalties) sp.samplers.push_back(COMMON_SAMPLER_TYPE_PENALTIES);
  if (sp.temp <= 0) {
    sp.top_k = 1;
    sp.samplers.push_back(COMMON_SAMPLER_TYPE_TOP_K);
  } else {
    for (auto t : {COMMON_SAMPLER_TYPE_TOP_N_SIGMA, COMMON_SAMPLER_TYPE_TOP_K, COMMON_SAMPLER_TYPE_TYPICAL_P, COMMON_SAMPLER_TYPE_TOP_P,
                   COMMON_SAMPLER_TYPE_MIN_P, COMMON_SAMPLER_TYPE_TEMPERATURE}) {
      sp.samplers.push_back(t);
    }
  }
  out.acceptPrompt = penalties;
  sp.logit_bias = readLogitBias(env, o, llama_vocab_n_tokens(model->vocab));
  readGrammar(env, model, o, sp, out.preserved);
  return out;
}

common_sampler* buildSampler(const std::shared_ptr<ModelHandle>& modelPtr, const common_params_sampling& sp) {
  const ModelHandle& model = *modelPtr;
  if (!sp.grammar.empty()) checkGrammarCoded(common_grammar_value(sp.grammar), llama_vocab_n_tokens(model.vocab));
  LogCapture capture;
  common_sampler* s = nullptr;
  std::string error;
  try {
    AbortGuard guard;
    s = common_sampler_init(model.model, const_cast<common_params_sampling&>(sp));
  } catch (const GrammarStatesError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw CodedError("ERR_LIMIT_EXCEEDED", "Out of memory while building the sampler");
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (s == nullptr) {
    std::string logged = capture.take();
    if (!sp.grammar.empty() || sp.grammar_lazy) {
      std::string reason = logged.empty() ? error : logged;
      while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' ')) reason.pop_back();
      throw CodedError("ERR_INVALID_GRAMMAR", "The grammar could not be parsed" + (reason.empty() ? std::string() : ": " + reason));
    }
    throw CodedError("ERR_INVALID_ARGUMENT", "Invalid sampling options: " + (error.empty() ? logged : error));
  }
  // Output under a grammar is guaranteed to be valid UTF-8 as well.
  if (!sp.grammar.empty()) prependToChain(common_sampler_get(s), makeUtf8Guard(modelPtr));
  return s;
}

common_sampler* buildSampler(Napi::Env env, const std::shared_ptr<ModelHandle>& model, const common_params_sampling& sp) {
  try {
    return buildSampler(model, sp);
  } catch (const CodedError& e) {
    throwError(env, e.code, e.what());
  } catch (const GrammarStatesError& e) {
    throwError(env, "ERR_LIMIT_EXCEEDED", e.what());
  }
}

std::string samplerErrorCode(const std::exception& e) {
  if (auto* c = dynamic_cast<const CodedError*>(&e)) return c->code;
  if (dynamic_cast<const GrammarStatesError*>(&e) != nullptr) return "ERR_LIMIT_EXCEEDED";
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) return "ERR_LIMIT_EXCEEDED";
  return "ERR_NATIVE";
}


}  // namespace la
