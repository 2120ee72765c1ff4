#include "grammar.h"

#include <algorithm>
#include <functional>
#include <type_traits>
#include <cstdio>
#include <mutex>
#ifndef _WIN32
#include <unistd.h>
#endif

#include "errors.h"
#include "guard.h"
#include "json-schema-to-grammar.h"
#include "grammar_check.h"
#include "llama-grammar.h"  // llama.cpp's own parser, to check a text against a grammar
#include "log.h"
#include "promise_worker.h"
#include "utf8_guard.h"

namespace la {

namespace {


// A grammar llama.cpp can take safely (grammar_check.h), or a thrown ERR_INVALID_GRAMMAR/ERR_LIMIT_EXCEEDED.

void checkGrammarOrThrow(const std::string& gbnf, int32_t nVocab = -1) {
  try {
    checkGrammar(gbnf, nVocab);
  } catch (const GrammarLimitError& e) {
    throw CodedError("ERR_LIMIT_EXCEEDED", e.what());
  } catch (const GrammarSyntaxError& e) {
    throw CodedError("ERR_INVALID_GRAMMAR", std::string("The grammar could not be parsed: ") + e.what());
  }
}

llama_grammar* parseGrammar(const llama_vocab* vocab, const std::string& gbnf) {
  checkGrammarOrThrow(gbnf, vocab != nullptr ? llama_vocab_n_tokens(vocab) : -1);
  llama_grammar* g = llama_grammar_init_impl(vocab, gbnf.c_str(), "root", false, nullptr, 0, nullptr, 0);
  if (g == nullptr) throw CodedError("ERR_INVALID_GRAMMAR", "The grammar could not be parsed");
  return g;
}

// Longest nesting of arrays and objects in a JSON text (strings skipped), without parsing it.
size_t jsonDepth(const std::string& text) {
  size_t depth = 0, most = 0;
  bool inString = false;
  for (size_t i = 0; i < text.size(); i++) {
    char c = text[i];
    if (inString) {
      if (c == '\\') i++;
      else if (c == '"') inString = false;
    } else if (c == '"') {
      inString = true;
    } else if (c == '{' || c == '[') {
      most = std::max(most, ++depth);
    } else if ((c == '}' || c == ']') && depth > 0) {
      depth--;
    }
  }
  return most;
}

// Converts with common's converter; warnings (parts it could not enforce) are an ERR_UNSUPPORTED_SCHEMA
// unless bestEffort, when they go to the log.
std::string convertSchema(const std::string& schema, bool bestEffort) {
  if (schema.size() > kSchemaMaxBytes) {
    throw CodedError("ERR_LIMIT_EXCEEDED", "The JSON schema is " + std::to_string(schema.size()) +
                                               " bytes; the limit is " + std::to_string(kSchemaMaxBytes));
  }
  if (jsonDepth(schema) > kSchemaMaxDepth) {
    throw CodedError("ERR_LIMIT_EXCEEDED", "The JSON schema nests objects and arrays more than " +
                                               std::to_string(kSchemaMaxDepth) + " deep");
  }
  // The converter's warnings (what it could not translate) are read from it (patches/llama.cpp/0009); the
  // line it also logs is taken out of the log here, since this reports them itself.
  std::string grammar, error, warning;
  {
    LogCapture capture;
    try {
      grammar = json_schema_to_grammar(common_json::parse(schema));
      warning = json_schema_to_grammar_warnings();
    } catch (const std::exception& e) {
      error = e.what();
    }
    capture.takeLine("JSON schema conversion was incomplete: ");
  }
  if (!error.empty()) throw CodedError("ERR_INVALID_GRAMMAR", "The JSON schema could not be converted to a grammar: " + error);
  if (!warning.empty()) {
    if (!bestEffort) {
      throw CodedError("ERR_UNSUPPORTED_SCHEMA", "The JSON schema uses what the grammar cannot enforce: " + warning);
    }
    logLine(LogLevel::Warn, "JSON schema conversion was incomplete (best effort): " + warning);
  }
  checkGrammarOrThrow(grammar);
  return grammar;
}

// Whether `text` is a complete sentence of the grammar. Each character is accepted in turn; the parse
// states, the work per character and the work in all are bounded (kGrammarMaxStacks, kGrammarMaxStepWork,
// kGrammarMaxMatchWork; grammar_accept.cpp), so an ambiguous or deepening grammar is an error rather than
// time exponential or quadratic in the text.
bool matchGrammar(const llama_vocab* vocab, const std::string& gbnf, const std::string& text) {
  llama_grammar* g = parseGrammar(vocab, gbnf);
  bool complete = false;
  std::string limit;
  size_t i = 0;
  try {
    GrammarWorkBudget budget(kGrammarMaxMatchWork, "matching this text");
    while (i < text.size()) {
      unsigned char c = (unsigned char)text[i];
      size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
      len = std::min(len, text.size() - i);
      if (c == 0) {
        llama_grammar_accept(g, 0);  // llama.cpp's UTF-8 decoding stops at a NUL: it skipped the character
      } else {
        llama_grammar_accept_str(*g, text.substr(i, len));
      }
      i += len;
      if (g->stacks.size() > kGrammarMaxStacks) {
        limit = "The grammar is too ambiguous to match this text: more than " + std::to_string(kGrammarMaxStacks) +
                " parse states after " + std::to_string(i) + " bytes";
        break;
      }
    }
    if (limit.empty() && g->partial_utf8.n_remain <= 0) {
      for (const auto& stack : g->stacks) complete = complete || stack.empty();
    }
  } catch (const GrammarStatesError& e) {
    limit = "The grammar cannot match this text within the limits: " + std::string(e.what()) + " (after " +
            std::to_string(i) + " of " + std::to_string(text.size()) + " bytes)";
  } catch (const std::bad_alloc&) {
    llama_grammar_free_impl(g);
    throw;
  } catch (const std::exception&) {
    complete = false;  // the text leaves the grammar
  }
  llama_grammar_free_impl(g);
  if (!limit.empty()) throw CodedError("ERR_LIMIT_EXCEEDED", limit);
  return complete;
}

[[noreturn]] void grammarError(Napi::Env env, const std::string& what, const std::string& logged) {
  std::string reason = logged;
  while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' ')) reason.pop_back();
  throwError(env, "ERR_INVALID_GRAMMAR", what + (reason.empty() ? std::string() : ": " + reason));
}

}  // namespace

void checkGrammarCoded(const std::string& gbnf, int32_t nVocab) { checkGrammarOrThrow(gbnf, nVocab); }

// jsonSchemaToGrammar(schema: string, bestEffort?: boolean) -> string
Napi::Value JsonSchemaToGrammar(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string schema = argString(info, 0, "schema");
  bool bestEffort = info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  try {
    return Napi::String::New(env, convertSchema(schema, bestEffort));
  } catch (const CodedError& e) {
    throwError(env, e.code, e.what());
  }
}

// jsonSchemaToGrammarAsync(schema: string, bestEffort?: boolean) -> Promise<string>, off the JS thread.
Napi::Value JsonSchemaToGrammarAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string schema = argString(info, 0, "schema");
  bool bestEffort = info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  return PromiseWorker<std::string>::Start(
      env, "llama-addon.jsonSchemaToGrammar", [schema, bestEffort] { return convertSchema(schema, bestEffort); },
      [](Napi::Env e, std::string& g) -> Napi::Value { return Napi::String::New(e, g); });
}

// matchesGrammar(grammar, text) -> Promise<boolean>, off the JS thread.
Napi::Value MatchesGrammar(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model) {
  Napi::Env env = info.Env();
  std::string gbnf = argString(info, 0, "grammar");
  std::string text = argString(info, 1, "text");
  if (text.size() > kMatchMaxBytes) {
    throwError(env, "ERR_LIMIT_EXCEEDED", "The text is " + std::to_string(text.size()) + " bytes; matchesGrammar takes at most " +
                                              std::to_string(kMatchMaxBytes));
  }
  return PromiseWorker<bool>::Start(
      env, "llama-addon.matchesGrammar", [model, gbnf, text] { return matchGrammar(model->vocab, gbnf, text); },
      [](Napi::Env e, bool& ok) -> Napi::Value { return Napi::Boolean::New(e, ok); });
}

}  // namespace la
