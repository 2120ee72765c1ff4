// The sampler chain of a generation: llama.cpp common's sampler (the one llama-server uses, for its grammar
// handling), set up from the options JavaScript sends. The sampling values come complete from
// lib/options/sampling.ts, where each option is declared with its range and default: this file holds no
// defaults, and it is the one native place that knows the options' names.
#pragma once
#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/sampling.h"  // llama.cpp's common/sampling.h
#include "model.h"

namespace la {

struct SamplingSetup {
  common_params_sampling params;
  // Tokens rendered as text although special (tool-call markers), sorted.
  std::vector<llama_token> preserved;
  // The penalties look at the prompt too: it is fed to the sampler before the first token.
  bool acceptPrompt = false;
};

// Reads `o.logitBias` ([token, bias] pairs; absent: none), checking every token against the vocabulary:
// the one reader of logit biases (generations and beam search). Throws ERR_INVALID_ARGUMENT.
std::vector<llama_logit_bias> readLogitBias(Napi::Env env, const Napi::Object& o, int32_t nVocab);

// Reads `o.sampling` (every value of the table), `o.logitBias` ([token, bias] pairs) and the grammar
// options (grammar, grammarType, grammarLazy, grammarTriggers, preservedTokens, generationPrompt), on the JS
// thread. `seqCapacity` is what penaltyLastN -1 stands for. Throws ERR_INVALID_ARGUMENT or
// ERR_INVALID_GRAMMAR for options that are wrong on their face.
SamplingSetup readSampling(Napi::Env env, const std::shared_ptr<ModelHandle>& model, const Napi::Object& o, int32_t seqCapacity);

// Builds the sampler `sp` describes: checks and parses its grammar (grammar_check.h), then llama.cpp
// common's sampler. Touches no JS value, so it may run on any thread (a grammar of megabytes takes a
// while). Throws an exception whose code samplerErrorCode gives: ERR_INVALID_GRAMMAR with llama.cpp's
// reason, ERR_LIMIT_EXCEEDED, ERR_INVALID_ARGUMENT.
common_sampler* buildSampler(const std::shared_ptr<ModelHandle>& model, const common_params_sampling& sp);
// The same on the JS thread, throwing a JS error.
common_sampler* buildSampler(Napi::Env env, const std::shared_ptr<ModelHandle>& model, const common_params_sampling& sp);
std::string samplerErrorCode(const std::exception& e);

}  // namespace la
