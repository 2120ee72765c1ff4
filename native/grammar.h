// Grammar-constrained sampling: llama.cpp common's sampler with a GBNF grammar (lazy or not), JSON schema to
// GBNF conversion, and a checker that tells whether a text is a complete sentence of a grammar.
#pragma once
#include <napi.h>

#include <memory>
#include <vector>

#include "model.h"
#include "sampling.h"  // llama.cpp's common/sampling.h

namespace la {

// Creates the sampler for a generation from the grammar options in `o` (grammar, grammarType, grammarLazy,
// grammarTriggers, preservedTokens, generationPrompt) and the sampling parameters in `sp`. `preserved`
// receives the tokens to render as text. Throws ERR_INVALID_GRAMMAR with llama.cpp's reason.
common_sampler* makeSampler(Napi::Env env, const std::shared_ptr<ModelHandle>& model, const Napi::Object& o,
                            common_params_sampling& sp, std::vector<llama_token>& preserved);

// jsonSchemaToGrammar(schema: string) -> string (GBNF). Throws ERR_INVALID_GRAMMAR.
Napi::Value JsonSchemaToGrammar(const Napi::CallbackInfo& info);

// model.matchesGrammar(grammar, text) -> boolean: the whole text is a complete sentence of the grammar.
Napi::Value MatchesGrammar(const Napi::CallbackInfo& info, const ModelHandle& model);

}  // namespace la
