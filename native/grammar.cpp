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

// The JSON-schema converter prints its warnings to stderr: catch them in a temporary file while it runs,
// one conversion at a time in the process, and put back whatever else other threads wrote meanwhile.
class StderrCapture {
 public:
  StderrCapture() {
#ifndef _WIN32
    fflush(stderr);
    tmp_ = tmpfile();
    if (tmp_ != nullptr) {
      saved_ = dup(2);
      if (saved_ < 0 || dup2(fileno(tmp_), 2) < 0) {
        if (saved_ >= 0) close(saved_);
        saved_ = -1;
      }
    }
#endif
  }
  // Everything written to stderr meanwhile.
  std::string finish() {
    std::string out;
#ifndef _WIN32
    if (saved_ >= 0) {
      fflush(stderr);
      dup2(saved_, 2);
      close(saved_);
      saved_ = -1;
      rewind(tmp_);
      char buf[4096];
      size_t n;
      while ((n = fread(buf, 1, sizeof buf, tmp_)) > 0 && out.size() < (1u << 20)) out.append(buf, n);
    }
    if (tmp_ != nullptr) {
      fclose(tmp_);
      tmp_ = nullptr;
    }
#endif
    return out;
  }
  ~StderrCapture() { finish(); }

 private:
  FILE* tmp_ = nullptr;
  int saved_ = -1;
};

std::mutex g_stderrMu;

// A grammar llama.cpp can take safely (grammar_check.h), or a thrown ERR_INVALID_GRAMMAR/ERR_LIMIT_EXCEEDED.

void checkGrammarOrThrow(const std::string& gbnf) {
  try {
    checkGrammar(gbnf);
  } catch (const GrammarLimitError& e) {
    throw CodedError("ERR_LIMIT_EXCEEDED", e.what());
  } catch (const GrammarSyntaxError& e) {
    throw CodedError("ERR_INVALID_GRAMMAR", std::string("The grammar could not be parsed: ") + e.what());
  }
}

llama_grammar* parseGrammar(const llama_vocab* vocab, const std::string& gbnf) {
  checkGrammarOrThrow(gbnf);
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
  std::string grammar, error, printed;
  {
    std::lock_guard<std::mutex> lock(g_stderrMu);
    StderrCapture capture;
    try {
      grammar = json_schema_to_grammar(common_json::parse(schema));
    } catch (const std::exception& e) {
      error = e.what();
    }
    printed = capture.finish();
  }
  std::string warning;
  const std::string marker = "WARNING: JSON schema conversion was incomplete: ";
  size_t at = printed.find(marker);
  if (at != std::string::npos) {
    size_t end = printed.find('\n', at);
    warning = printed.substr(at + marker.size(), end == std::string::npos ? std::string::npos : end - at - marker.size());
    printed.erase(at, end == std::string::npos ? std::string::npos : end - at + 1);
  }
  if (!printed.empty()) std::fwrite(printed.data(), 1, printed.size(), stderr);  // other threads' output
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
// states are bounded (kGrammarMaxStacks), so an ambiguous grammar is an error rather than exponential time.
bool matchGrammar(const llama_vocab* vocab, const std::string& gbnf, const std::string& text) {
  llama_grammar* g = parseGrammar(vocab, gbnf);
  bool complete = false;
  std::string limit;
  try {
    size_t i = 0;
    while (i < text.size()) {
      unsigned char c = (unsigned char)text[i];
      size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
      len = std::min(len, text.size() - i);
      llama_grammar_accept_str(*g, text.substr(i, len));
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
  } catch (const GrammarStatesError&) {
    limit = "The grammar is too ambiguous to match this text: more than " + std::to_string(kGrammarMaxStacks) +
            " parse states at once";
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

void prepareSampler(Napi::Env env, const std::shared_ptr<ModelHandle>& modelPtr, const Napi::Object& o,
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

common_sampler* buildSampler(const std::shared_ptr<ModelHandle>& modelPtr, const common_params_sampling& sp) {
  const ModelHandle& model = *modelPtr;
  if (!sp.grammar.empty()) checkGrammarOrThrow(common_grammar_value(sp.grammar));
  beginCapture();
  common_sampler* s = nullptr;
  std::string error;
  try {
    AbortGuard guard;
    s = common_sampler_init(model.model, const_cast<common_params_sampling&>(sp));
  } catch (const GrammarStatesError&) {
    endCapture();
    throw;
  } catch (const std::bad_alloc&) {
    endCapture();
    throw CodedError("ERR_LIMIT_EXCEEDED", "Out of memory while building the sampler");
  } catch (const std::exception& e) {
    error = e.what();
  }
  std::string logged = endCapture();
  if (s == nullptr) {
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
