// Grammars and JSON schemas: the checks before llama.cpp parses a grammar, JSON schema to GBNF conversion,
// and a checker that tells whether a text is a complete sentence of a grammar. The sampler that applies a
// grammar is built in sampling.h.
#pragma once
#include <napi.h>

#include <cstddef>
#include <memory>
#include <string>

#include "model.h"

namespace la {

// Checks that llama.cpp can take a GBNF grammar safely (grammar_check.h): throws CodedError
// ERR_INVALID_GRAMMAR or ERR_LIMIT_EXCEEDED. Any thread.
void checkGrammarCoded(const std::string& gbnf, int32_t nVocab = -1);

// Limits on JSON schemas given to the converter (lib/base/limits.ts documents them).
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
