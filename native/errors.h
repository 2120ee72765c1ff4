// Errors thrown by the addon carry a stable `code`; lib/base/errors.ts turns them into LlamaError.
#pragma once
#include <napi.h>
#include <memory>
#include <string>

namespace la {

inline Napi::Error makeError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

[[noreturn]] inline void throwError(Napi::Env env, const char* code, const std::string& message) {
  throw makeError(env, code, message);
}

// Strict argument checks at the native boundary, mirrored by lib/base/validate.ts.
inline std::string typeName(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "boolean";
    case napi_number: return "number";
    case napi_string: return "string";
    case napi_symbol: return "symbol";
    case napi_object: return v.IsArray() ? "array" : v.IsTypedArray() ? "typed array" : "object";
    case napi_function: return "function";
    case napi_external: return "external";
    case napi_bigint: return "bigint";
  }
  return "unknown";
}

[[noreturn]] inline void throwArg(Napi::Env env, const char* what, const char* expected, const Napi::Value& got) {
  throwError(env, "ERR_INVALID_ARGUMENT",
             std::string("Invalid argument ") + what + ": expected " + expected + ", received " + typeName(got));
}

inline std::string argString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsString()) throwArg(info.Env(), what, "a string", info[i]);
  return info[i].As<Napi::String>().Utf8Value();
}

inline double argNumber(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) throwArg(info.Env(), what, "a number", info[i]);
  return info[i].As<Napi::Number>().DoubleValue();
}

inline int64_t argInteger(const Napi::CallbackInfo& info, size_t i, const char* what, int64_t lo, int64_t hi) {
  double d = argNumber(info, i, what);
  if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) {
    throwError(info.Env(), "ERR_INVALID_ARGUMENT",
               std::string("Invalid argument ") + what + ": expected an integer from " + std::to_string(lo) + " to " +
                   std::to_string(hi) + ", received " + info[i].ToString().Utf8Value());
  }
  return (int64_t)d;
}

inline bool argBool(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsBoolean()) throwArg(info.Env(), what, "a boolean", info[i]);
  return info[i].As<Napi::Boolean>().Value();
}

inline Napi::Int32Array argTokens(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throwArg(info.Env(), what, "an Int32Array", info[i]);
  }
  return info[i].As<Napi::Int32Array>();
}

// Reads an optional property of an options object; undefined when absent.
inline Napi::Value opt(const Napi::Object& o, const char* key) { return o.Has(key) ? o.Get(key) : Napi::Value(); }

// Native objects are created by the addon itself: a factory boxes a shared_ptr into an External and calls
// the class constructor, which takes it back out. JS cannot call the constructors directly.
template <typename T>
Napi::Object newWrapped(Napi::Env env, Napi::FunctionReference& ctor, std::shared_ptr<T> value) {
  auto* boxed = new std::shared_ptr<T>(std::move(value));
  return ctor.New({Napi::External<std::shared_ptr<T>>::New(env, boxed)});
}

template <typename T>
std::shared_ptr<T> takeWrapped(const Napi::CallbackInfo& info, const char* className) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    throwError(info.Env(), "ERR_INVALID_ARGUMENT", std::string(className) + " cannot be constructed directly");
  }
  auto* boxed = info[0].As<Napi::External<std::shared_ptr<T>>>().Data();
  std::shared_ptr<T> value = std::move(*boxed);
  delete boxed;
  return value;
}

}  // namespace la
