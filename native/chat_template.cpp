#include "chat_template.h"

#include <vector>

#include "addon_data.h"
#include "chat.h"  // llama.cpp's common/chat.h
#include "errors.h"
#include "guard.h"
#include "log.h"
#include "promise_worker.h"
#include "template_limits.h"

namespace la {

struct ChatTemplateState {
  common_chat_templates_ptr jinja;  // null for a built-in template
  std::string builtin;              // the template llama_chat_apply_template renders, when not Jinja
  std::string source;
  std::string name;  // built-in template name, when one was chosen by name
};

namespace {

std::vector<std::string> builtinNames() {
  std::vector<const char*> names(128);
  int32_t n = llama_chat_builtin_templates(names.data(), names.size());
  if (n > (int32_t)names.size()) {
    names.resize((size_t)n);
    n = llama_chat_builtin_templates(names.data(), names.size());
  }
  return std::vector<std::string>(names.begin(), names.begin() + std::max(0, n));
}

bool isBuiltinName(const std::string& s) {
  for (const auto& n : builtinNames()) {
    if (n == s) return true;
  }
  return false;
}

// The built-in renderer, for templates selected by name or recognized by llama.cpp when Jinja fails.
std::string applyBuiltin(const std::string& tmpl, const std::vector<common_chat_msg>& msgs, bool addAss) {
  std::vector<llama_chat_message> chat;
  size_t total = 0;
  for (const auto& m : msgs) {
    chat.push_back({m.role.c_str(), m.content.c_str()});
    total += m.role.size() + m.content.size();
  }
  std::vector<char> buf(total * 2 + 256);
  int32_t n = llama_chat_apply_template(tmpl.c_str(), chat.data(), chat.size(), addAss, buf.data(), (int32_t)buf.size());
  if (n > (int32_t)buf.size()) {
    buf.resize((size_t)n);
    n = llama_chat_apply_template(tmpl.c_str(), chat.data(), chat.size(), addAss, buf.data(), (int32_t)buf.size());
  }
  if (n < 0) throw std::runtime_error("llama.cpp does not know this template");
  return std::string(buf.data(), (size_t)n);
}

}  // namespace

void ChatTemplate::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "NativeChatTemplate",
                                    {
                                        InstanceMethod<&ChatTemplate::Apply>("apply"),
                                        InstanceMethod<&ChatTemplate::ApplyAsync>("applyAsync"),
                                        InstanceMethod<&ChatTemplate::Info>("info"),
                                        InstanceMethod<&ChatTemplate::Parse>("parse"),
                                    });
  addonData(env)->chatTemplateCtor = Napi::Persistent(ctor);
  exports.Set("NativeChatTemplate", ctor);
}

namespace {

// Parses a template and lets llama.cpp's `common` learn what it supports (it renders it with probe
// messages): on the JS thread for chatTemplate(), on a worker for chatTemplateAsync(). Throws CodedError.
std::shared_ptr<ChatTemplateState> buildTemplate(const std::shared_ptr<ModelHandle>& model, bool fromModel, std::string source) {
  auto st = std::make_shared<ChatTemplateState>();
  if (fromModel) {
    source = model->facts.hasChatTemplate ? model->facts.chatTemplate : std::string();
  }
  if (!fromModel && isBuiltinName(source)) {
    st->builtin = source;
    st->name = source;
    st->source = source;
    return st;
  }
  std::string logged;
  LogCapture capture;
  try {
    checkTemplateSource(source);
    TemplateBudget budget;  // common renders the template with probe messages to learn what it supports
    // An empty override makes common read the model's template, and use ChatML when it has none.
    // Its parser logs the reason of a failure and throws a bare exception: the log is kept for the error.
    st->jinja = common_chat_templates_init(model->model, fromModel ? std::string() : source);
    st->source = common_chat_templates_source(st->jinja.get());
  } catch (const TemplateLimit& e) {
    throw CodedError("ERR_LIMIT_EXCEEDED", "The chat template exceeds a limit: " + e.what);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    logged = capture.take();
    while (!logged.empty() && (logged.back() == '\n' || logged.back() == ' ')) logged.pop_back();
    // A model template that is not valid Jinja: llama.cpp's built-in templates recognize many by content.
    std::vector<common_chat_msg> probe(1);
    probe[0].role = "user";
    probe[0].content = "x";
    bool builtinOk = false;
    if (fromModel && !source.empty()) {
      try {
        applyBuiltin(source, probe, true);
        builtinOk = true;
      } catch (const std::exception&) {
      }
    }
    if (!builtinOk) {
      std::string why = e.what();
      if (why == "std::exception" || why.empty()) why = logged.empty() ? "no reason given" : logged;
      throw CodedError("ERR_INVALID_TEMPLATE", std::string("The chat template could not be parsed: ") + why);
    }
    st->builtin = source;
    st->source = source;
  }
  return st;
}

// The arguments of chatTemplate() and chatTemplateAsync(): (source: string | null).
std::pair<bool, std::string> readSource(const Napi::CallbackInfo& info) {
  bool fromModel = info[0].IsNull() || info[0].IsUndefined();
  std::string source = fromModel ? std::string() : argString(info, 0, "template");
  if (!fromModel && source.empty()) throwArg(info.Env(), "template", "a non-empty string", info[0]);
  return {fromModel, source};
}

}  // namespace

Napi::Value ChatTemplate::Create(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model) {
  Napi::Env env = info.Env();
  auto [fromModel, source] = readSource(info);
  std::shared_ptr<ChatTemplateState> st;
  try {
    st = buildTemplate(model, fromModel, std::move(source));
  } catch (const CodedError& e) {
    throwError(env, e.code, e.what());
  }
  return newWrapped(env, addonData(env)->chatTemplateCtor, st);
}

Napi::Value ChatTemplate::CreateAsync(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model) {
  auto [fromModel, source] = readSource(info);
  return PromiseWorker<std::shared_ptr<ChatTemplateState>>::Start(
      info.Env(), "llama-addon.chatTemplate",
      [model = std::move(model), fromModel = fromModel, source = std::move(source)] { return buildTemplate(model, fromModel, source); },
      [](Napi::Env env, std::shared_ptr<ChatTemplateState>& st) -> Napi::Value {
        return newWrapped(env, addonData(env)->chatTemplateCtor, st);
      });
}

ChatTemplate::ChatTemplate(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<ChatTemplate>(info), state_(takeWrapped<ChatTemplateState>(info, "NativeChatTemplate")) {}

namespace {

std::string strProp(Napi::Env env, const Napi::Object& o, const char* key, const char* what) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return std::string();
  if (!v.IsString()) throwError(env, "ERR_INVALID_MESSAGE", std::string("Invalid ") + what + ": expected " + key + " to be a string, received " + typeName(v));
  return v.As<Napi::String>().Utf8Value();
}

std::vector<common_chat_msg> readMessages(Napi::Env env, const Napi::Value& value) {
  if (!value.IsArray()) throwArg(env, "messages", "an array", value);
  Napi::Array arr = value.As<Napi::Array>();
  std::vector<common_chat_msg> msgs;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsObject()) throwArg(env, "messages", "objects with role and content", v);
    Napi::Object o = v.As<Napi::Object>();
    Napi::Value role = o.Get("role"), content = o.Get("content");
    if (!role.IsString() || !content.IsString()) {
      throwError(env, "ERR_INVALID_MESSAGE",
                 "Invalid message " + std::to_string(i) + ": expected string role and content, received " +
                     typeName(role) + " and " + typeName(content));
    }
    common_chat_msg m;
    m.role = role.As<Napi::String>().Utf8Value();
    m.content = content.As<Napi::String>().Utf8Value();
    m.tool_call_id = strProp(env, o, "toolCallId", "message");
    m.tool_name = strProp(env, o, "toolName", "message");
    m.reasoning_content = strProp(env, o, "reasoning", "message");
    Napi::Value calls = o.Get("toolCalls");
    if (calls.IsArray()) {
      Napi::Array ca = calls.As<Napi::Array>();
      for (uint32_t j = 0; j < ca.Length(); j++) {
        Napi::Value c = ca.Get(j);
        if (!c.IsObject()) throwError(env, "ERR_INVALID_MESSAGE", "Invalid tool call in message " + std::to_string(i));
        Napi::Object co = c.As<Napi::Object>();
        common_chat_tool_call call;
        call.name = strProp(env, co, "name", "tool call");
        call.arguments = strProp(env, co, "arguments", "tool call");
        call.id = strProp(env, co, "id", "tool call");
        m.tool_calls.push_back(std::move(call));
      }
    }
    msgs.push_back(std::move(m));
  }
  return msgs;
}

const char* triggerType(common_grammar_trigger_type t) {
  switch (t) {
    case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN: return "token";
    case COMMON_GRAMMAR_TRIGGER_TYPE_WORD: return "word";
    case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN: return "pattern";
    case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: return "patternFull";
  }
  return "word";
}

}  // namespace

namespace {

// apply()'s arguments, copied out of JS: messages, addGenerationPrompt, options?: { tools?, toolChoice?,
// parallelToolCalls?, jsonSchema? }.
common_chat_templates_inputs readApply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  common_chat_templates_inputs in;
  in.messages = readMessages(env, info[0]);
  in.add_generation_prompt = argBool(info, 1, "addGenerationPrompt");
  in.use_jinja = true;
  in.reasoning_format = COMMON_REASONING_FORMAT_AUTO;
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object o = info[2].As<Napi::Object>();
    Napi::Value tools = o.Get("tools");
    if (tools.IsArray()) {
      Napi::Array ta = tools.As<Napi::Array>();
      for (uint32_t i = 0; i < ta.Length(); i++) {
        Napi::Value t = ta.Get(i);
        if (!t.IsObject()) throwArg(env, "tools", "objects { name, description, parameters }", t);
        Napi::Object to = t.As<Napi::Object>();
        common_chat_tool tool;
        tool.name = strProp(env, to, "name", "tool");
        tool.description = strProp(env, to, "description", "tool");
        tool.parameters = strProp(env, to, "parameters", "tool");
        in.tools.push_back(std::move(tool));
      }
    }
    std::string choice = strProp(env, o, "toolChoice", "option");
    in.tool_choice = choice == "required" ? COMMON_CHAT_TOOL_CHOICE_REQUIRED
                     : choice == "none"   ? COMMON_CHAT_TOOL_CHOICE_NONE
                                          : COMMON_CHAT_TOOL_CHOICE_AUTO;
    Napi::Value parallel = o.Get("parallelToolCalls");
    in.parallel_tool_calls = parallel.IsBoolean() && parallel.As<Napi::Boolean>().Value();
    in.json_schema = strProp(env, o, "jsonSchema", "option");
  }
  return in;
}

// Renders on any thread, several at once: common_chat_templates_apply reads the parsed template (const)
// and renders into a context of its own; the limits' counters are per thread (template_limits.cpp).
// Throws CodedError: ERR_LIMIT_EXCEEDED, ERR_INVALID_TEMPLATE.
common_chat_params runApply(const ChatTemplateState& st, const common_chat_templates_inputs& in) {
  common_chat_params p;
  try {
    TemplateBudget budget;
    if (st.jinja) {
      p = common_chat_templates_apply(st.jinja.get(), in);
    } else {
      if (!in.tools.empty()) throw std::runtime_error("tools need a Jinja chat template");
      p.prompt = applyBuiltin(st.builtin, in.messages, in.add_generation_prompt);
    }
  } catch (const TemplateLimit& e) {
    throw CodedError("ERR_LIMIT_EXCEEDED", "The chat template exceeds a limit while rendering: " + e.what);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    throw CodedError("ERR_INVALID_TEMPLATE", std::string("The chat template failed to render: ") + e.what());
  }
  return p;
}

// { prompt, stops, grammar, grammarLazy, grammarTriggers, preservedTokens, generationPrompt, parser, format }
Napi::Value appliedToJs(Napi::Env env, const common_chat_params& p) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("prompt", Napi::String::New(env, p.prompt));
  Napi::Array stops = Napi::Array::New(env, p.additional_stops.size());
  for (uint32_t i = 0; i < p.additional_stops.size(); i++) stops.Set(i, p.additional_stops[i]);
  out.Set("stops", stops);
  out.Set("grammar", p.grammar);
  out.Set("grammarLazy", p.grammar_lazy);
  Napi::Array triggers = Napi::Array::New(env, p.grammar_triggers.size());
  for (uint32_t i = 0; i < p.grammar_triggers.size(); i++) {
    Napi::Object t = Napi::Object::New(env);
    t.Set("type", triggerType(p.grammar_triggers[i].type));
    t.Set("value", p.grammar_triggers[i].value);
    if (p.grammar_triggers[i].token != LLAMA_TOKEN_NULL) t.Set("token", p.grammar_triggers[i].token);
    triggers.Set(i, t);
  }
  out.Set("grammarTriggers", triggers);
  Napi::Array preserved = Napi::Array::New(env, p.preserved_tokens.size());
  for (uint32_t i = 0; i < p.preserved_tokens.size(); i++) preserved.Set(i, p.preserved_tokens[i]);
  out.Set("preservedTokens", preserved);
  out.Set("generationPrompt", p.generation_prompt);
  out.Set("parser", p.parser);
  out.Set("format", (double)p.format);
  return out;
}

}  // namespace

// apply(messages, addGenerationPrompt, options?) -> applied, on the JS thread.
Napi::Value ChatTemplate::Apply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  common_chat_templates_inputs in = readApply(info);
  common_chat_params p;
  try {
    p = runApply(*state_, in);
  } catch (const CodedError& e) {
    throwError(env, e.code, e.what());
  }
  return appliedToJs(env, p);
}

// applyAsync(messages, addGenerationPrompt, options?) -> Promise<applied>: the same, rendered on a worker
// (a template may take up to its time limit, and a JSON schema's conversion runs inside the render).
Napi::Value ChatTemplate::ApplyAsync(const Napi::CallbackInfo& info) {
  common_chat_templates_inputs in = readApply(info);
  return PromiseWorker<common_chat_params>::Start(
      info.Env(), "llama-addon.chatTemplate", [st = state_, in = std::move(in)] { return runApply(*st, in); },
      [](Napi::Env env, common_chat_params& p) { return appliedToJs(env, p); });
}

// parse(text, { parser, format, generationPrompt, partial }) -> { content, reasoning, toolCalls: [{ id, name, arguments }] }
Napi::Value ChatTemplate::Parse(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string text = argString(info, 0, "text");
  if (!info[1].IsObject()) throwArg(env, "options", "an object", info[1]);
  Napi::Object o = info[1].As<Napi::Object>();
  common_chat_parser_params pp;
  pp.reasoning_format = COMMON_REASONING_FORMAT_AUTO;
  pp.generation_prompt = strProp(env, o, "generationPrompt", "option");
  Napi::Value format = o.Get("format");
  if (format.IsNumber()) pp.format = (common_chat_format)format.As<Napi::Number>().Int32Value();
  Napi::Value partial = o.Get("partial");
  bool isPartial = partial.IsBoolean() && partial.As<Napi::Boolean>().Value();
  common_chat_msg msg;
  try {
    AbortGuard guard;
    std::string parser = strProp(env, o, "parser", "option");
    if (!parser.empty()) pp.parser.load(parser);
    msg = common_chat_parse(text, isPartial, pp);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throwError(env, "ERR_INVALID_TEMPLATE", std::string("The reply could not be parsed: ") + e.what());
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("content", msg.content);
  out.Set("reasoning", msg.reasoning_content);
  Napi::Array calls = Napi::Array::New(env, msg.tool_calls.size());
  for (uint32_t i = 0; i < msg.tool_calls.size(); i++) {
    Napi::Object c = Napi::Object::New(env);
    c.Set("id", msg.tool_calls[i].id);
    c.Set("name", msg.tool_calls[i].name);
    c.Set("arguments", msg.tool_calls[i].arguments);
    calls.Set(i, c);
  }
  out.Set("toolCalls", calls);
  return out;
}

Napi::Value ChatTemplate::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("source", state_->source);
  o.Set("jinja", state_->jinja != nullptr);
  if (!state_->name.empty()) o.Set("name", state_->name);
  return o;
}

}  // namespace la
