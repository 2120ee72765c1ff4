// Grammar-constrained sampling: llama.cpp common's sampler with a GBNF grammar (lazy or not), JSON schema to
// GBNF conversion, and a checker that tells whether a text is a complete sentence of a grammar.
#pragma once
#include <napi.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "model.h"
#include "sampling.h"  // llama.cpp's common/sampling.h

namespace la {

// Reads the grammar options in `o` (grammar, grammarType, grammarLazy, grammarTriggers, preservedTokens,
// generationPrompt) into `sp`, on the JS thread; `preserved` receives the tokens to render as text. Throws
// ERR_INVALID_ARGUMENT or ERR_INVALID_GRAMMAR for options that are wrong on their face.
void prepareSampler(Napi::Env env, const std::shared_ptr<ModelHandle>& model, const Napi::Object& o,
                    common_params_sampling& sp, std::vector<llama_token>& preserved);

// Builds the sampler `sp` describes: checks and parses its grammar (grammar_check.h), then llama.cpp
// common's sampler. Touches no JS value, so it may run on any thread (a grammar of megabytes takes a
// while). Throws an exception whose code samplerErrorCode gives: ERR_INVALID_GRAMMAR with llama.cpp's
// reason, ERR_LIMIT_EXCEEDED, ERR_INVALID_ARGUMENT.
common_sampler* buildSampler(const std::shared_ptr<ModelHandle>& model, const common_params_sampling& sp);
// The same on the JS thread, throwing a JS error.
common_sampler* buildSampler(Napi::Env env, const std::shared_ptr<ModelHandle>& model, const common_params_sampling& sp);
std::string samplerErrorCode(const std::exception& e);

// Limits on JSON schemas given to the converter (lib/limits.ts documents them).
constexpr size_t kSchemaMaxBytes = 1u << 20;  // schema text, bytes
constexpr size_t kSchemaMaxDepth = 128;       // nested objects and arrays in the schema text
constexpr size_t kMatchMaxBytes = 1u << 20;   // text given to matchesGrammar, bytes

// jsonSchemaToGrammar(schema: string, bestEffort?: boolean) -> string (GBNF). Throws ERR_INVALID_GRAMMAR,
// ERR_UNSUPPORTED_SCHEMA (a part the grammar cannot enforce, unless bestEffort) or ERR_LIMIT_EXCEEDED.
Napi::Value JsonSchemaToGrammar(const Napi::CallbackInfo& info);
// jsonSchemaToGrammarAsync(schema, bestEffort?) -> Promise<string>: the same, off the JS thread.
Napi::Value JsonSchemaToGrammarAsync(const Napi::CallbackInfo& info);

// model.matchesGrammar(grammar, text) -> Promise<boolean>: the whole text is a complete sentence of the
// grammar. Runs off the JS thread; ERR_INVALID_GRAMMAR, ERR_LIMIT_EXCEEDED.
Napi::Value MatchesGrammar(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model);

}  // namespace la
