// Limits on GBNF grammars, checked before llama.cpp's grammar code (recursive, and unbounded in time on
// some inputs) sees a grammar: size, group nesting, rule count, chains of leading rules and their number,
// ordered repetition bounds. The limits are documented in lib/base/limits.ts and README's Errors section.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace la {

constexpr size_t kGrammarMaxBytes = 4u << 20;   // grammar text, UTF-8 bytes
constexpr size_t kGrammarMaxNesting = 256;      // nested groups ( ... )
constexpr size_t kGrammarMaxElements = 1u << 22;  // elements after repetitions are expanded
constexpr size_t kGrammarMaxRules = 65536;      // rules after parsing (groups and repetitions become rules)
constexpr size_t kGrammarMaxChain = 1000;       // rules starting with rules starting with rules ...
constexpr double kGrammarMaxPaths = 1e6;        // ways a rule can start (llama.cpp walks each)
constexpr size_t kGrammarMaxStacks = 8192;      // parse states at once, while generating or matching
constexpr size_t kGrammarMaxStepWork = 1u << 21;  // stack elements written to accept one character
constexpr size_t kGrammarMaxMatchWork = 1u << 30;  // ... and to match one text (matchesGrammar)
constexpr size_t kGrammarMaxApplyWork = 1u << 25;  // ... and to filter the candidates of one sampled token

// The grammar does not parse, or is left-recursive, or has a repetition {m,n} with m > n.
struct GrammarSyntaxError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The grammar parses but exceeds one of the limits above.
struct GrammarLimitError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A grammar in use (generation or matchesGrammar) holds more than kGrammarMaxStacks parse states, or
// accepting one character would write more than kGrammarMaxStepWork stack elements (parse states that
// deepen with the text): an ambiguous grammar would otherwise take time exponential, and a deepening one
// time quadratic or worse, in the length of the text (native/grammar_accept.cpp).
struct GrammarStatesError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The grammar cannot read a text it is given to accept (grammar_accept.cpp). A token the sampler chose under
// the grammar is always readable, so in a generation this is a lazy grammar's trigger: llama.cpp hands the
// grammar the output from the trigger on, and the grammar does not begin with it. `piece` is that text.
struct GrammarRejectedText : std::runtime_error {
  GrammarRejectedText(const std::string& message, std::string text) : std::runtime_error(message), piece(std::move(text)) {}
  std::string piece;
};

// While one lives, the grammar work of this thread (stack elements written, grammar_accept.cpp) counts against
// `steps` in all; past it a GrammarStatesError. matchesGrammar holds one (each character's work is bounded,
// but a text of a million characters with parse states a thousand deep would still take many minutes), and
// so does the sampler's filter for each token.
class GrammarWorkBudget {
 public:
  // `what`: the work, for the error's message ("matching this text").
  GrammarWorkBudget(size_t steps, const char* what);
  ~GrammarWorkBudget();
  GrammarWorkBudget(const GrammarWorkBudget&) = delete;
  GrammarWorkBudget& operator=(const GrammarWorkBudget&) = delete;
};

// Throws GrammarSyntaxError or GrammarLimitError; returns when llama.cpp can take the grammar safely.
// nVocab >= 0: token references (<[id]>, !<[id]>) must name tokens of a vocabulary of that size.
void checkGrammar(const std::string& gbnf, int32_t nVocab = -1);

}  // namespace la
