// Routing of llama.cpp's and ggml's log output through the library (see lib/log.ts).
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
void shutdownLogger();

}  // namespace la
