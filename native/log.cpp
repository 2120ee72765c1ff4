#include "log.h"
#include "engine.h"  // cuttingOffStep()

#include <atomic>
#include <cstdio>
#include <mutex>

#include <algorithm>
#include <cstdarg>
#include <vector>

#include "errors.h"
#include "llama.h"

// From llama.cpp's common/log.h (not included: its name clashes with this file's header).
struct common_log;
void common_log_set_verbosity_thold(int verbosity);

namespace la {
namespace {

std::atomic<int> g_level{(int)LogLevel::Warn};
std::mutex g_sink_mutex;
Napi::ThreadSafeFunction g_sink;  // JS logger; empty when logs go to stderr
bool g_has_sink = false;

struct PendingLine {
  int level = (int)LogLevel::Info;
  std::string text;
};
thread_local PendingLine t_line;
thread_local bool t_sharedStream = false;  // see SharedStreamScope
thread_local LogCapture* t_capture = nullptr;  // the innermost LogCapture of this thread

LogLevel fromGgml(ggml_log_level level, LogLevel previous) {
  switch (level) {
    case GGML_LOG_LEVEL_DEBUG: return LogLevel::Debug;
    case GGML_LOG_LEVEL_INFO: return LogLevel::Info;
    case GGML_LOG_LEVEL_WARN: return LogLevel::Warn;
    case GGML_LOG_LEVEL_ERROR: return LogLevel::Error;
    case GGML_LOG_LEVEL_CONT: return previous;
    default: return LogLevel::Info;
  }
}

const char* levelName(int level) {
  switch ((LogLevel)level) {
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warn: return "warn";
    case LogLevel::Error: return "error";
    default: return "info";
  }
}

struct LogMessage {
  int level;
  std::string text;
};

// llama.cpp warnings that are known to be harmless, shown at the info level instead, so that loading a model
// with default options prints nothing but real problems (README, Logging). Each names its reason.
bool knownHarmless(const std::string& t) {
  // A special token id of 0xFFFFFFFF is how converters write "none"; llama.cpp then uses none.
  if (t.find("bad special token:") != std::string::npos && t.find("= 4294967295,") != std::string::npos) return true;
  // llama.cpp adds the EOS token to the end-of-generation set itself.
  if (t.find("special_eos_id is not in special_eog_ids") != std::string::npos) return true;
  // llama.cpp corrects the token's type itself.
  if (t.find("control-looking token:") != std::string::npos && t.find("will be overridden") != std::string::npos) return true;
  // llama.cpp rounds context sizes up to a multiple of 256: past a training context only by that rounding.
  unsigned seq = 0, train = 0;
  size_t at = t.find("n_ctx_seq (");
  if (at != std::string::npos && std::sscanf(t.c_str() + at, "n_ctx_seq (%u) > n_ctx_train (%u)", &seq, &train) == 2) {
    // An embedding context shares one KV stream among its sequences (native/context.cpp), each within
    // contextSize: its stream is larger than the training context without any sequence being so.
    return seq < train + 256 || t_sharedStream;
  }
  // The same rounding, per sequence; the context reports the size it has (LlamaContext.contextSize).
  if (t.find("n_ctx is not divisible by n_seq_max") != std::string::npos) return true;
  // A batch that finds no room in a KV cache that all sequences share: the engine ends the generation that
  // needed the most cells with contextFull and goes on with the others (native/engine.cpp).
  if (t.find("failed to find a memory slot for batch") != std::string::npos) return true;
  // A model without a pooling type of its own (-1) and the caller's choice: nothing is overridden.
  if (t.find("model default pooling_type is [-1], but") != std::string::npos) return true;
  return false;
}

void deliver(int level, std::string text);

void emit(int level, std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (text.empty()) return;
  if (level == (int)LogLevel::Warn && knownHarmless(text)) level = (int)LogLevel::Info;
  // A step cut off on purpose (an abort, a dispose): llama.cpp's "failed to compute graph" errors and its
  // warning that it removed the step's cells are what was asked for.
  if (level >= (int)LogLevel::Warn && cuttingOffStep()) level = (int)LogLevel::Debug;
  if (t_capture != nullptr && level >= (int)LogLevel::Warn && t_capture->hold(level, text)) return;
  deliver(level, std::move(text));
}

void deliver(int level, std::string text) {
  if (level < g_level.load(std::memory_order_relaxed)) return;
  {
    std::lock_guard<std::mutex> lock(g_sink_mutex);
    if (g_has_sink) {
      auto* msg = new LogMessage{level, std::move(text)};
      napi_status st = g_sink.NonBlockingCall(msg, [](Napi::Env env, Napi::Function fn, LogMessage* m) {
        if (env != nullptr && fn != nullptr) {
          try {
            fn.Call({Napi::String::New(env, levelName(m->level)), Napi::String::New(env, m->text)});
          } catch (...) {  // nothing may escape a callback from another thread
            // the logger threw, or its environment is going away: the line is dropped
          }
        }
        delete m;
      });
      if (st != napi_ok) delete msg;
      return;
    }
  }
  std::fprintf(stderr, "[llama-addon %s] %s\n", levelName(level), text.c_str());
}

void onLog(ggml_log_level level, const char* text, void*) {
  if (text == nullptr) return;
  PendingLine& line = t_line;
  int lvl = (int)fromGgml(level, (LogLevel)line.level);
  if (level != GGML_LOG_LEVEL_CONT && !line.text.empty()) {
    emit(line.level, std::move(line.text));
    line.text.clear();
  }
  line.level = lvl;
  line.text += text;
  if (!line.text.empty() && line.text.back() == '\n') {
    emit(line.level, std::move(line.text));
    line.text.clear();
  }
}

// llama.cpp's common library logs through its own logger (common/log.h), which formats a line only when
// its verbosity threshold lets it through: keep that threshold where ours is.
void syncCommonThreshold(int level) {
#ifdef __linux__
  // Warnings always reach common_log_add (our emit() filters them by level after captures have seen them):
  // an operation that fails puts them in its error whatever the level.
  static const int thold[] = {5, 3, 2, 2, 2};  // Debug, Info, Warn, Error, Silent (common's LOG_LEVEL_*)
  common_log_set_verbosity_thold(thold[std::min(std::max(level, 0), 4)]);
#else
  (void)level;  // no interposition of common_log_add: common's own logger stays silent
#endif
}

Napi::Value SetLogLevel(const Napi::CallbackInfo& info) {
  int64_t level = argInteger(info, 0, "level", 0, 4);
  g_level.store((int)level);
  syncCommonThreshold((int)level);
  return info.Env().Undefined();
}

Napi::Value SetLogSink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction() && !info[0].IsNull() && !info[0].IsUndefined()) {
    throwArg(env, "logger", "a function or null", info[0]);
  }
  std::lock_guard<std::mutex> lock(g_sink_mutex);
  if (g_has_sink) {
    g_sink.Release();
    g_has_sink = false;
  }
  if (info[0].IsFunction()) {
    g_sink = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "llama-addon.log", 0, 1);
    g_sink.Unref(env);  // a logger never keeps the process alive
    g_has_sink = true;
  }
  return env.Undefined();
}

}  // namespace

void logLine(LogLevel level, const std::string& text) { emit((int)level, text); }

SharedStreamScope::SharedStreamScope(bool on) : previous_(t_sharedStream) { t_sharedStream = on; }
SharedStreamScope::~SharedStreamScope() { t_sharedStream = previous_; }

void installLogger() {
  llama_log_set(onLog, nullptr);
  syncCommonThreshold(g_level.load());
}

void setLogLevel(LogLevel level) {
  g_level.store((int)level);
  syncCommonThreshold((int)level);
}

LogCapture::LogCapture() : outer_(t_capture) { t_capture = this; }

LogCapture::~LogCapture() {
  t_capture = outer_;
  // Lines that no error took are logged now, in their order (through an outer capture, if any).
  for (auto& line : held_) {
    try {
      emit(line.first, std::move(line.second));
    } catch (...) {  // a destructor must not throw: a line that cannot be logged is dropped
    }
  }
}

bool LogCapture::hold(int level, const std::string& text) {
  if (held_.size() >= kMaxHeld) return false;  // past the bound, lines are logged as they come
  held_.emplace_back(level, text);
  return true;
}

std::string LogCapture::takeLine(const std::string& marker) {
  for (auto it = held_.begin(); it != held_.end(); ++it) {
    size_t at = it->second.find(marker);
    if (at == std::string::npos) continue;
    std::string rest = it->second.substr(at + marker.size());
    held_.erase(it);
    return rest;
  }
  return std::string();
}

std::string LogCapture::take() {
  // Errors first (the reason), then warnings, which llama.cpp's quantizer, for one, prints by the dozen:
  // at most kWarningChars of them, then a count of the rest.
  std::string errors, warnings;
  size_t more = 0;
  for (const auto& line : held_) {
    if (line.first >= (int)LogLevel::Error) {
      if (!errors.empty()) errors += "; ";
      errors += line.second;
    } else if (warnings.size() + line.second.size() <= kWarningChars) {
      if (!warnings.empty()) warnings += "; ";
      warnings += line.second;
    } else {
      more++;
    }
  }
  held_.clear();
  if (more > 0) warnings += (warnings.empty() ? "" : "; ") + std::string("(and ") + std::to_string(more) + " more warnings)";
  if (errors.empty()) return warnings;
  return warnings.empty() ? errors : errors + " (warnings: " + warnings + ")";
}


void shutdownLogger() {
  std::lock_guard<std::mutex> lock(g_sink_mutex);
  if (g_has_sink) {
    g_sink.Abort();
    g_has_sink = false;
  }
}

void registerLogExports(Napi::Env env, Napi::Object exports) {
  exports.Set("setLogLevel", Napi::Function::New(env, SetLogLevel, "setLogLevel"));
  exports.Set("setLogSink", Napi::Function::New(env, SetLogSink, "setLogSink"));
}

}  // namespace la

#ifdef __linux__
// llama.cpp's common library writes its log lines (LOG_WRN, LOG_ERR, ...) through common_log_add, which it
// calls through its PLT: the addon's definition comes first in the lookup scope of the libraries it loads
// (as for the Jinja limits, template_limits.cpp), so those lines take the same way as llama.cpp's own, to
// setLogger or stderr, filtered by setLogLevel, instead of common's printer thread writing to the terminal.
__attribute__((visibility("default"))) void common_log_add(struct common_log*, enum ggml_log_level level, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  char small[512];
  int n = std::vsnprintf(small, sizeof small, fmt, args);
  va_end(args);
  if (n < 0) {
    va_end(copy);
    return;
  }
  if ((size_t)n < sizeof small) {
    va_end(copy);
    la::onLog(level == GGML_LOG_LEVEL_NONE ? GGML_LOG_LEVEL_INFO : level, small, nullptr);
    return;
  }
  std::vector<char> big((size_t)n + 1);
  std::vsnprintf(big.data(), big.size(), fmt, copy);
  va_end(copy);
  la::onLog(level == GGML_LOG_LEVEL_NONE ? GGML_LOG_LEVEL_INFO : level, big.data(), nullptr);
}
#endif
