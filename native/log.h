// Routing of llama.cpp's and ggml's log output through the library (see lib/base/log.ts).
#pragma once
#include <napi.h>
#include <string>

namespace la {

enum class LogLevel : int { Debug = 0, Info = 1, Warn = 2, Error = 3, Silent = 4 };

void installLogger();
// A line of the library's own, through the same level filter and logger as llama.cpp's.
void logLine(LogLevel level, const std::string& text);
void setLogLevel(LogLevel level);
// Starts capturing error messages logged on the calling thread (for error reports of a failed load).
void beginCapture();
std::string endCapture();
void registerLogExports(Napi::Env env, Napi::Object exports);
// While one lives on a thread (creating a context whose sequences share one KV stream, each within a
// context size no larger than the training context), llama.cpp's "n_ctx_seq > n_ctx_train" is not a warning.
class SharedStreamScope {
 public:
  explicit SharedStreamScope(bool on);
  ~SharedStreamScope();
  SharedStreamScope(const SharedStreamScope&) = delete;
  SharedStreamScope& operator=(const SharedStreamScope&) = delete;

 private:
  bool previous_;
};
void shutdownLogger();

}  // namespace la
