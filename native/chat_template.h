// ChatTemplate: a parsed chat template, rendered with llama.cpp's `common` chat support (its Jinja engine,
// the one llama-server uses), or with llama.cpp's built-in templates.
#pragma once
#include <napi.h>

#include <memory>

#include "model.h"

namespace la {

struct ChatTemplateState;

class ChatTemplate : public Napi::ObjectWrap<ChatTemplate> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  // model.chatTemplate(source: string | null): parses `source` (Jinja, or the name of a built-in
  // template), or the model's own template when null. Throws ERR_INVALID_TEMPLATE.
  static Napi::Value Create(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model);
  // model.chatTemplateAsync(source: string | null) -> Promise of the same, parsed and probed off the JS
  // thread (a model's template is untrusted input, and the probe renders it).
  static Napi::Value CreateAsync(const Napi::CallbackInfo& info, std::shared_ptr<ModelHandle> model);
  explicit ChatTemplate(const Napi::CallbackInfo& info);

 private:
  // apply(messages: { role, content, ... }[], addGenerationPrompt, options?) -> { prompt, stops, grammar, ... }
  Napi::Value Apply(const Napi::CallbackInfo& info);
  // applyAsync(...) -> Promise of the same, rendered off the JS thread.
  Napi::Value ApplyAsync(const Napi::CallbackInfo& info);
  Napi::Value Parse(const Napi::CallbackInfo& info);
  // info() -> { source, jinja, name }
  Napi::Value Info(const Napi::CallbackInfo& info);
  std::shared_ptr<ChatTemplateState> state_;
};

}  // namespace la
