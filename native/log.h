// Routing of llama.cpp's and ggml's log output through the library (see lib/base/log.ts).
#pragma once
#include <napi.h>
#include <string>
#include <utility>
#include <vector>

namespace la {

enum class LogLevel : int { Debug = 0, Info = 1, Warn = 2, Error = 3, Silent = 4 };

void installLogger();
// A line of the library's own, through the same level filter and logger as llama.cpp's.
void logLine(LogLevel level, const std::string& text);
void setLogLevel(LogLevel level);
// Holds back the warnings and errors that llama.cpp logs on this thread while it lives, for the error of
// an operation that fails: take() gives them (errors first, then at most ~1 KB of warnings) and they are
// not logged, since the error carries them. Lines not taken are logged when it ends, so an operation that
// succeeds logs as if nothing had been captured. Captures nest (the inner one holds).
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::string take();
  // Takes the first held line that contains `marker` out (it is not logged): the text after the marker, or
  // "" when no held line has it.
  std::string takeLine(const std::string& marker);
  bool hold(int level, const std::string& text);  // @internal: from the log callback

 private:
  static constexpr size_t kMaxHeld = 256;
  static constexpr size_t kWarningChars = 1024;
  LogCapture* outer_;
  std::vector<std::pair<int, std::string>> held_;
};
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
