#include "grammar.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#ifndef _WIN32
#include <unistd.h>
#endif

#include "errors.h"
#include "guard.h"
#include "json-schema-to-grammar.h"
#include "llama-grammar.h"  // llama.cpp's own parser, to check a text against a grammar
#include "log.h"
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
  std::vector<llama_token> ids = common_tokenize(vocab, text, false, true);
  return ids.size() == 1 ? ids[0] : LLAMA_TOKEN_NULL;
}

// llama.cpp's grammar parser prints its reason to stderr rather than to the log: catch it in a temporary
// file while the parser runs (on the JS thread, which writes nothing else meanwhile).
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
  // The first line written, without the grammar source llama.cpp echoes after it.
  std::string finish() {
    std::string out;
#ifndef _WIN32
    if (saved_ >= 0) {
      fflush(stderr);
      dup2(saved_, 2);
      close(saved_);
      saved_ = -1;
      rewind(tmp_);
      char buf[1024];
      size_t n = fread(buf, 1, sizeof buf - 1, tmp_);
      out.assign(buf, n);
      size_t nl = out.find('\n');
      if (nl != std::string::npos) out.resize(nl);
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

std::mutex g_stderrMu;  // one capture at a time in the process (worker threads included)

// Parses a grammar with llama.cpp's parser; null and the reason when it does not parse. stderr is caught
// for the few microseconds of the parse only, one parse at a time in the process.
llama_grammar* parseGrammar(const llama_vocab* vocab, const std::string& gbnf, std::string& reason) {
  std::lock_guard<std::mutex> lock(g_stderrMu);
  StderrCapture capture;
  llama_grammar* g = nullptr;
  try {
    AbortGuard guard;
    g = llama_grammar_init_impl(vocab, gbnf.c_str(), "root", false, nullptr, 0, nullptr, 0);
  } catch (const std::exception& e) {
    reason = e.what();
  }
  std::string printed = capture.finish();
  if (g == nullptr && reason.empty()) reason = printed;
  return g;
}

[[noreturn]] void grammarError(Napi::Env env, const std::string& what, const std::string& logged) {
  std::string reason = logged;
  while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' ')) reason.pop_back();
  throwError(env, "ERR_INVALID_GRAMMAR", what + (reason.empty() ? std::string() : ": " + reason));
}

}  // namespace

common_sampler* makeSampler(Napi::Env env, const std::shared_ptr<ModelHandle>& modelPtr, const Napi::Object& o,
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
  if (!grammar.empty()) {
    std::string reason;
    llama_grammar* parsed = parseGrammar(vocab, grammar, reason);
    if (parsed == nullptr) grammarError(env, "The grammar could not be parsed", reason);
    llama_grammar_free_impl(parsed);
  }
  preserved.assign(sp.preserved_tokens.begin(), sp.preserved_tokens.end());
  std::sort(preserved.begin(), preserved.end());

  beginCapture();
  common_sampler* s = nullptr;
  std::string error;
  try {
    AbortGuard guard;
    s = common_sampler_init(model.model, sp);
  } catch (const std::exception& e) {
    error = e.what();
  }
  std::string logged = endCapture();
  if (s == nullptr) {
    if (!sp.grammar.empty() || sp.grammar_lazy) {
      grammarError(env, "The grammar could not be parsed", logged.empty() ? error : logged);
    }
    throwError(env, "ERR_INVALID_ARGUMENT", "Invalid sampling options: " + (error.empty() ? logged : error));
  }
  // Output under a grammar is guaranteed to be valid UTF-8 as well.
  if (!sp.grammar.empty()) prependToChain(common_sampler_get(s), makeUtf8Guard(modelPtr));
  return s;
}

Napi::Value JsonSchemaToGrammar(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string schema = argString(info, 0, "schema");
  std::string grammar;
  std::string error;
  try {
    AbortGuard guard;
    grammar = json_schema_to_grammar(common_json::parse(schema));
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (!error.empty()) grammarError(env, "The JSON schema could not be converted to a grammar", error);
  return Napi::String::New(env, grammar);
}

Napi::Value MatchesGrammar(const Napi::CallbackInfo& info, const ModelHandle& model) {
  Napi::Env env = info.Env();
  std::string gbnf = argString(info, 0, "grammar");
  std::string text = argString(info, 1, "text");
  std::string reason;
  llama_grammar* g = parseGrammar(model.vocab, gbnf, reason);
  if (g == nullptr) grammarError(env, "The grammar could not be parsed", reason);
  bool complete = false;
  try {
    AbortGuard guard;
    llama_grammar_accept_str(*g, text);
    if (g->partial_utf8.n_remain <= 0) {
      for (const auto& stack : g->stacks) complete = complete || stack.empty();
    }
  } catch (const std::exception&) {
    complete = false;  // the text leaves the grammar
  }
  llama_grammar_free_impl(g);
  return Napi::Boolean::New(env, complete);
}

}  // namespace la
