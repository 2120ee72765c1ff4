// Limits on rendering Jinja chat templates (see template_limits.cpp for how they are enforced).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace la {

constexpr size_t kTemplateMaxDepth = 300;          // nested nodes while rendering (macro calls included)
constexpr uint64_t kTemplateMaxSteps = 300000;     // nodes evaluated per render
constexpr uint64_t kTemplateMaxBytes = 64u << 20;  // bytes of strings built per render
constexpr int64_t kTemplateMaxMillis = 2000;       // wall-clock time per render (a call may render several times)
constexpr int64_t kTemplateMaxLoop = 10000;        // values of one range() call, items of one for loop
constexpr size_t kTemplateMaxSource = 1u << 20;    // template source, bytes
constexpr size_t kTemplateMaxNesting = 100;        // brackets inside a tag, and blocks, nested in the source
constexpr size_t kTemplateMaxTagTokens = 4000;     // operators and words in one tag (the parser recurses on chains)
constexpr int64_t kTemplateMaxItems = 100000;      // items of one list or mapping

// Thrown when a render exceeds a limit. Not a std::exception, so that the interpreter's own handlers (which
// catch std::exception to report template errors or ignore them) let it through to the addon.
struct TemplateLimit {
  std::string what;
};

// A render's budget: counts from zero while the outermost one lives on the thread.
class TemplateBudget {
 public:
  TemplateBudget();
  ~TemplateBudget();
  TemplateBudget(const TemplateBudget&) = delete;
  TemplateBudget& operator=(const TemplateBudget&) = delete;

};

// Throws TemplateLimit when the source is too large or nests too deep for the (recursive) parser.
void checkTemplateSource(const std::string& source);

}  // namespace la
