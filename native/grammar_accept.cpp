// How a grammar in use accepts text: llama.cpp's llama_grammar_accept and llama_grammar_accept_token
// (src/llama-grammar.cpp), defined again here with the same results but bounded work.
//
// llama.cpp keeps a grammar's parse states as pushdown stacks and, for every character, rebuilds them: each
// stack whose top matches is advanced to the next characters it may read, and every stack made is checked
// against all the stacks made so far by a linear search that compares them element by element. The work for
// one character is therefore the number of stacks squared times their depth. A grammar whose stacks deepen
// with the text (`root ::= [a-z] root x | ...`) made each character slower than the last: 1,579 characters
// took 19 s in matchesGrammar and the same grammar froze a context's engine thread while generating.
//
// Here duplicates are found through a hash of each stack, so one character costs about the elements written,
// and that work is bounded: more than kGrammarMaxStepWork elements for one character, or more than
// kGrammarMaxStacks stacks after it, is a GrammarStatesError (ERR_LIMIT_EXCEEDED to callers) instead of
// unbounded time. The stacks and their meaning are llama.cpp's own; only the bookkeeping differs, and the
// order of the stacks (which nothing depends on: every use asks whether any stack matches) may differ.
//
// The addon's definitions come first in the lookup scope of the libraries it loads (on Linux, as for the
// Jinja limits in template_limits.cpp), so llama.cpp's own calls (llama_grammar_accept_str for matching,
// llama_grammar_accept_impl for the grammar sampler) reach them. test/hardening-parsers.test.ts checks both.
#include <cstdint>
#include <climits>
#include <cstdlib>
#ifdef __linux__
#include <dlfcn.h>
#endif
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "grammar_check.h"
#include "llama-grammar.h"

namespace {

// The budget of GrammarWorkBudget on this thread; SIZE_MAX: none.
thread_local size_t t_budgetLeft = SIZE_MAX;

using Stack = llama_grammar_stack;
using Stacks = llama_grammar_stacks;

bool endOfSequence(const llama_grammar_element* pos) {
  return pos->type == LLAMA_GRETYPE_END || pos->type == LLAMA_GRETYPE_ALT;
}

// Whether `chr` is in the character range at `pos` (a set, its complement or "."), and the element after it.
std::pair<bool, const llama_grammar_element*> matchChar(const llama_grammar_element* pos, uint32_t chr) {
  bool found = false;
  bool positive = pos->type == LLAMA_GRETYPE_CHAR || pos->type == LLAMA_GRETYPE_CHAR_ANY;
  if (!positive && pos->type != LLAMA_GRETYPE_CHAR_NOT) throw std::runtime_error("grammar stack is not at a character");
  do {
    if (pos[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
      found = found || (pos->value <= chr && chr <= pos[1].value);
      pos += 2;
    } else if (pos->type == LLAMA_GRETYPE_CHAR_ANY) {
      found = true;
      pos += 1;
    } else {
      found = found || pos->value == chr;
      pos += 1;
    }
  } while (pos->type == LLAMA_GRETYPE_CHAR_ALT);
  return {found == positive, pos};
}

bool matchToken(const llama_grammar_element* pos, llama_token token) {
  if (pos->type == LLAMA_GRETYPE_TOKEN) return pos->value == (uint32_t)token;
  if (pos->type == LLAMA_GRETYPE_TOKEN_NOT) return pos->value != (uint32_t)token;
  return false;
}

size_t hashStack(const Stack& s) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ s.size();
  for (const llama_grammar_element* p : s) {
    h ^= (uint64_t)(uintptr_t)p;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
  }
  return (size_t)h;
}

// A list of distinct stacks, with a hash index for finding duplicates.
class StackSet {
 public:
  explicit StackSet(Stacks& items) : items_(items) {}

  // Appends the stack unless an equal one is there; returns whether it was appended.
  bool insert(const Stack& s) {
    size_t h = hashStack(s);
    auto range = index_.equal_range(h);
    for (auto it = range.first; it != range.second; ++it) {
      if (items_[it->second] == s) return false;
    }
    index_.emplace(h, items_.size());
    items_.push_back(s);
    return true;
  }

 private:
  Stacks& items_;
  std::unordered_multimap<size_t, size_t> index_;
};

// One character's (or one token's) step: the stacks it makes, each once, and the work spent making them.
class Step {
 public:
  Step(const llama_grammar_rules& rules, Stacks& out) : rules_(rules), out_(out), outSet_(out), seenSet_(seen_) {}

  void add(const Stack& s) {
    charge(s.size());
    outSet_.insert(s);
  }

  // llama_grammar_advance_stack: the stacks `stack` leads to whose top is a character or a token (or that
  // are empty: the grammar may end there), expanding rule references on the way.
  void advance(Stack stack) {
    std::vector<Stack> todo;
    todo.push_back(std::move(stack));
    while (!todo.empty()) {
      Stack cur = std::move(todo.back());
      todo.pop_back();
      if (cur.empty()) {
        add(cur);
        continue;
      }
      const llama_grammar_element* pos = cur.back();
      switch (pos->type) {
        case LLAMA_GRETYPE_RULE_REF: {
          // Only stacks that expand are remembered: the others end in `out_`, which has its own index.
          charge(cur.size());
          if (!seenSet_.insert(cur)) break;
          if (pos->value >= rules_.size()) throw std::runtime_error("grammar refers to a rule it does not have");
          const llama_grammar_element* sub = rules_[pos->value].data();
          while (true) {
            Stack next(cur.begin(), cur.end() - 1);
            if (!endOfSequence(pos + 1)) next.push_back(pos + 1);
            if (!endOfSequence(sub)) next.push_back(sub);
            charge(next.size());
            todo.push_back(std::move(next));
            while (!endOfSequence(sub)) sub++;
            if (sub->type != LLAMA_GRETYPE_ALT) break;
            sub++;
          }
          break;
        }
        case LLAMA_GRETYPE_CHAR:
        case LLAMA_GRETYPE_CHAR_NOT:
        case LLAMA_GRETYPE_CHAR_ANY:
        case LLAMA_GRETYPE_TOKEN:
        case LLAMA_GRETYPE_TOKEN_NOT:
          add(cur);
          break;
        default:
          throw std::runtime_error("grammar stack is in the middle of an element");
      }
    }
  }

  // llama_grammar_accept_chr: `stack` reads `chr` if its top is a character range that holds it.
  void acceptChar(const Stack& stack, uint32_t chr) {
    if (stack.empty()) return;
    const llama_grammar_element* pos = stack.back();
    if (pos->type == LLAMA_GRETYPE_TOKEN || pos->type == LLAMA_GRETYPE_TOKEN_NOT) return;
    auto match = matchChar(pos, chr);
    if (!match.first) return;
    Stack next(stack.begin(), stack.end() - 1);
    if (!endOfSequence(match.second)) next.push_back(match.second);
    charge(next.size());
    advance(std::move(next));
  }

 private:
  void charge(size_t elements) {
    if (t_budgetLeft != SIZE_MAX) {
      if (t_budgetLeft < elements + 1) {
        throw la::GrammarStatesError("matching this text needs more than " + std::to_string(la::kGrammarMaxMatchWork) +
                                     " steps in all (its parse states are deep or many)");
      }
      t_budgetLeft -= elements + 1;
    }
    work_ += elements + 1;
    if (work_ > la::kGrammarMaxStepWork) {
      throw la::GrammarStatesError("the grammar's parse states grew too large to follow: accepting one character "
                                   "took more than " + std::to_string(la::kGrammarMaxStepWork) +
                                   " steps (they deepen or multiply with the text)");
    }
  }

  const llama_grammar_rules& rules_;
  Stacks& out_;
  StackSet outSet_;
  Stacks seen_;
  StackSet seenSet_;
  size_t work_ = 0;
};

void checkCount(const Stacks& stacks) {
  if (stacks.size() > la::kGrammarMaxStacks) {
    throw la::GrammarStatesError("the grammar is too ambiguous: more than " + std::to_string(la::kGrammarMaxStacks) +
                                 " parse states at once");
  }
}

// Reads a token's text as code points, continuing `partial` (a character split across tokens): llama.cpp's
// decode_utf8. The list ends with a 0; an invalid sequence gives {0} and n_remain -1.
std::pair<std::vector<uint32_t>, llama_partial_utf8> decodeUtf8(const std::string& src, llama_partial_utf8 partial) {
  static const int lookup[] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4};
  const char* pos = src.c_str();
  std::vector<uint32_t> cps;
  cps.reserve(src.size() + 1);
  uint32_t value = partial.value;
  int remain = partial.n_remain;
  while (*pos != 0 && remain > 0) {
    uint8_t b = (uint8_t)*pos;
    if ((b >> 6) != 2) {
      cps.push_back(0);
      return {std::move(cps), llama_partial_utf8{0, -1}};
    }
    value = (value << 6) + (b & 0x3F);
    ++pos;
    --remain;
  }
  if (partial.n_remain > 0 && remain == 0) cps.push_back(value);
  while (*pos != 0) {
    uint8_t first = (uint8_t)*pos;
    remain = lookup[first >> 4] - 1;
    if (remain < 0) {
      cps.clear();
      cps.push_back(0);
      return {std::move(cps), llama_partial_utf8{0, remain}};
    }
    uint8_t mask = (uint8_t)((1 << (7 - remain)) - 1);
    value = first & mask;
    ++pos;
    while (*pos != 0 && remain > 0) {
      value = (value << 6) + ((uint8_t)*pos & 0x3F);
      ++pos;
      --remain;
    }
    if (remain == 0) cps.push_back(value);
  }
  cps.push_back(0);
  return {std::move(cps), llama_partial_utf8{value, remain}};
}

#ifdef __linux__
// LLAMA_ADDON_GRAMMAR_REFERENCE=1 (read once) runs llama.cpp's own functions instead, with only the bound
// on the number of parse states checked after them (what the addon did before this file): only for
// test/grammar-accept.test.ts, which compares the two on random grammars and texts.
bool useReference() {
  static const bool on = [] {
    const char* v = std::getenv("LLAMA_ADDON_GRAMMAR_REFERENCE");
    return v != nullptr && std::string(v) == "1";
  }();
  return on;
}

template <typename F>
F reference(const char* symbol) {
  F f = reinterpret_cast<F>(dlsym(RTLD_NEXT, symbol));
  if (f == nullptr) throw std::runtime_error(std::string("llama.cpp's ") + symbol + " was not found");
  return f;
}
#endif

}  // namespace

la::GrammarWorkBudget::GrammarWorkBudget(size_t steps) { t_budgetLeft = steps; }
la::GrammarWorkBudget::~GrammarWorkBudget() { t_budgetLeft = SIZE_MAX; }

#ifdef __linux__
// One character (a code point) read by every parse state of the grammar.
__attribute__((visibility("default"))) void llama_grammar_accept(struct llama_grammar* grammar, uint32_t chr) {
  if (useReference()) {
    reference<void (*)(llama_grammar*, uint32_t)>("_Z20llama_grammar_acceptP13llama_grammarj")(grammar, chr);
    return checkCount(grammar->stacks);
  }
  Stacks next;
  next.reserve(grammar->stacks.size());
  Step step(grammar->rules, next);
  for (const Stack& stack : grammar->stacks) step.acceptChar(stack, chr);
  checkCount(next);
  grammar->stacks = std::move(next);
}

// A sampled token: parse states waiting for a token (`<[id]>`, `!<[id]>`) match its id, the others read its
// text, character by character (all of them together: each character's step is a function of each stack
// alone, so stepping the set is stepping each stack).
__attribute__((visibility("default"))) void llama_grammar_accept_token(struct llama_grammar& grammar, llama_token token,
                                                                      const std::string& piece) {
  if (useReference()) {
    bool waitsForToken = false;
    for (const Stack& stack : grammar.stacks) {
      waitsForToken = waitsForToken || (!stack.empty() && (stack.back()->type == LLAMA_GRETYPE_TOKEN ||
                                                           stack.back()->type == LLAMA_GRETYPE_TOKEN_NOT));
    }
    if (!waitsForToken) return llama_grammar_accept_str(grammar, piece);  // through the function above
    using AcceptToken = void (*)(llama_grammar&, llama_token, const std::string&);
    reference<AcceptToken>("_Z26llama_grammar_accept_tokenR13llama_grammariRKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE")(
        grammar, token, piece);
    return checkCount(grammar.stacks);
  }
  const auto decoded = decodeUtf8(piece, grammar.partial_utf8);
  const std::vector<uint32_t>& cps = decoded.first;
  Stacks out;
  Stacks reading;
  {
    Step step(grammar.rules, out);
    for (const Stack& stack : grammar.stacks) {
      if (stack.empty()) continue;
      const llama_grammar_element* pos = stack.back();
      if (pos->type == LLAMA_GRETYPE_TOKEN || pos->type == LLAMA_GRETYPE_TOKEN_NOT) {
        if (!matchToken(pos, token)) continue;
        Stack next(stack.begin(), stack.end() - 1);
        if (!endOfSequence(pos + 1)) next.push_back(pos + 1);
        step.advance(std::move(next));
      } else {
        reading.push_back(stack);
      }
    }
  }
  for (size_t i = 0; i + 1 < cps.size() && !reading.empty(); i++) {
    Stacks next;
    Step step(grammar.rules, next);
    for (const Stack& stack : reading) step.acceptChar(stack, cps[i]);
    checkCount(next);
    reading = std::move(next);
  }
  {
    // The token-matched stacks and the ones that read the text, each once.
    Stacks merged;
    Step step(grammar.rules, merged);
    for (const Stack& s : out) step.add(s);
    for (const Stack& s : reading) step.add(s);
    out = std::move(merged);
  }
  checkCount(out);
  grammar.stacks = std::move(out);
  grammar.partial_utf8 = decoded.second;
  if (grammar.stacks.empty()) {
    throw std::runtime_error("Unexpected empty grammar stack after accepting piece: " + piece + " (" +
                             std::to_string(token) + ")");
  }
}
#endif
