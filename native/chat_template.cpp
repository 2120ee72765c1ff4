#include "chat_template.h"

#include <vector>

#include "addon_data.h"
#include "chat.h"  // llama.cpp's common/chat.h
#include "errors.h"
#include "guard.h"

namespace la {

struct ChatTemplateState {
  std::shared_ptr<ModelHandle> model;
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
                                        InstanceMethod<&ChatTemplate::Info>("info"),
                                    });
  addonData(env)->chatTemplateCtor = Napi::Persistent(ctor);
  exports.Set("NativeChatTemplate", ctor);
}

Napi::Value ChatTemplate::Create(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model) {
  Napi::Env env = info.Env();
  bool fromModel = info[0].IsNull() || info[0].IsUndefined();
  std::string source = fromModel ? std::string() : argString(info, 0, "template");
  if (!fromModel && source.empty()) throwArg(env, "template", "a non-empty string", info[0]);
  auto st = std::make_shared<ChatTemplateState>();
  st->model = model;
  if (fromModel) {
    source = model->facts.hasChatTemplate ? model->facts.chatTemplate : std::string();
  }
  if (!fromModel && isBuiltinName(source)) {
    st->builtin = source;
    st->name = source;
    st->source = source;
  } else {
    try {
      AbortGuard guard;
      // An empty override makes common read the model's template, and use ChatML when it has none.
      st->jinja = common_chat_templates_init(model->model, fromModel ? std::string() : source);
      st->source = common_chat_templates_source(st->jinja.get());
    } catch (const std::exception& e) {
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
        throwError(env, "ERR_INVALID_TEMPLATE",
                   std::string("The chat template could not be parsed: ") + e.what());
      }
      st->builtin = source;
      st->source = source;
    }
  }
  return newWrapped(env, addonData(env)->chatTemplateCtor, st);
}

ChatTemplate::ChatTemplate(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<ChatTemplate>(info), state_(takeWrapped<ChatTemplateState>(info, "NativeChatTemplate")) {}

Napi::Value ChatTemplate::Apply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) throwArg(env, "messages", "an array", info[0]);
  bool addAss = argBool(info, 1, "addGenerationPrompt");
  Napi::Array arr = info[0].As<Napi::Array>();
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
    msgs.push_back(std::move(m));
  }
  const ChatTemplateState& st = *state_;
  std::string prompt;
  std::vector<std::string> stops;
  try {
    AbortGuard guard;
    if (st.jinja) {
      common_chat_templates_inputs in;
      in.messages = msgs;
      in.add_generation_prompt = addAss;
      in.use_jinja = true;
      common_chat_params p = common_chat_templates_apply(st.jinja.get(), in);
      prompt = std::move(p.prompt);
      stops = std::move(p.additional_stops);
    } else {
      prompt = applyBuiltin(st.builtin, msgs, addAss);
    }
  } catch (const std::exception& e) {
    throwError(env, "ERR_INVALID_TEMPLATE", std::string("The chat template failed to render: ") + e.what());
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("prompt", Napi::String::New(env, prompt));
  Napi::Array s = Napi::Array::New(env, stops.size());
  for (uint32_t i = 0; i < stops.size(); i++) s.Set(i, stops[i]);
  out.Set("stops", s);
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
