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
#include <algorithm>
#include <cmath>
#include <cstdint>
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
#include "llama-vocab.h"

namespace {

// The budget of GrammarWorkBudget on this thread; SIZE_MAX: none.
thread_local size_t t_budgetLeft = SIZE_MAX;
thread_local size_t t_budgetSteps = 0;
thread_local const char* t_budgetWhat = "";

void chargeBudget(size_t steps) {
  if (t_budgetLeft == SIZE_MAX) return;
  if (t_budgetLeft < steps) {
    throw la::GrammarStatesError(std::string(t_budgetWhat) + " needs more than " + std::to_string(t_budgetSteps) +
                                 " steps in all (the grammar's parse states are deep or many)");
  }
  t_budgetLeft -= steps;
}

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
    chargeBudget(elements + 1);
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

// Whether some completion of a character split across tokens (`partial`) could be in the range at `pos`:
// llama.cpp's llama_grammar_match_partial_char.
bool matchPartialChar(const llama_grammar_element* pos, llama_partial_utf8 partial) {
  bool positive = pos->type == LLAMA_GRETYPE_CHAR || pos->type == LLAMA_GRETYPE_CHAR_ANY;
  if (!positive && pos->type != LLAMA_GRETYPE_CHAR_NOT) throw std::runtime_error("grammar stack is not at a character");
  uint32_t value = partial.value;
  int remain = partial.n_remain;
  if (remain < 0 || (remain == 1 && value < 2)) return false;
  uint32_t low = value << (remain * 6);
  uint32_t high = low | ((1u << (remain * 6)) - 1);
  if (low == 0) {
    if (remain == 2) low = 1u << 11;
    else if (remain == 3) low = 1u << 16;
  }
  do {
    if (pos[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
      if (pos->value <= high && low <= pos[1].value) return positive;
      pos += 2;
    } else if (pos->type == LLAMA_GRETYPE_CHAR_ANY) {
      return true;
    } else {
      if (low <= pos->value && pos->value <= high) return positive;
      pos += 1;
    }
  } while (pos->type == LLAMA_GRETYPE_CHAR_ALT);
  return !positive;
}

// A candidate token while the sampler filters: its code points from `at` on (0-terminated).
struct Candidate {
  size_t index;
  const uint32_t* at;
  llama_partial_utf8 partial;
  llama_token id;
};

// Marks in `ok` the candidates that some stack of `stacks` accepts: llama.cpp's
// llama_grammar_reject_candidates, computed on sets of stacks. llama.cpp followed each stack into the rest of
// each candidate's text separately, and the stacks each one led to separately again, so the work multiplied
// by the number of stacks at every character (400 alternatives of "a": 96 s for one token). Here candidates
// are grouped by which stacks read their next code point; each group goes on with the union of those stacks'
// successors, each stack once (Step), which does not depend on the code point read. All candidates have
// read the same number of code points.
void acceptCandidates(const llama_grammar_rules& rules, const Stacks& stacks, std::vector<Candidate>& cands,
                      std::vector<char>& ok, bool atTokenStart = true) {
  if (stacks.empty() || cands.empty()) return;
  // The stacks at a character range, which candidates' code points are read by.
  std::vector<const Stack*> chars;
  for (const Stack& s : stacks) {
    if (!s.empty() && s.back()->type != LLAMA_GRETYPE_TOKEN && s.back()->type != LLAMA_GRETYPE_TOKEN_NOT) chars.push_back(&s);
  }
  chargeBudget(cands.size() * (stacks.size() + 1) / 8);
  // Groups of reading candidates by the set of stacks that read their next code point (a bit string).
  std::vector<std::pair<std::string, std::vector<Candidate>>> groups;
  std::string sig(chars.size(), '\0');
  for (const Candidate& c : cands) {
    if (*c.at == 0) {
      // The token's text ends here: fine unless it ends inside a character no stack can complete.
      bool accepted = c.partial.n_remain == 0;
      for (size_t i = 0; !accepted && i < chars.size(); i++) accepted = matchPartialChar(chars[i]->back(), c.partial);
      if (accepted) ok[c.index] = 1;
      continue;
    }
    // A stack waiting for a token id takes the whole token by its id, at the token's start only: a stack that
    // reaches a token element after reading part of the token's text is not at a token boundary. (llama.cpp
    // let it take the token there, and accepting the token then left no parse state: `"a" !<[id]> "b"`
    // failed every generation with "Unexpected empty grammar stack"; found by a hostile review.)
    bool accepted = false;
    for (size_t i = 0; atTokenStart && !accepted && i < stacks.size(); i++) accepted = !stacks[i].empty() && matchToken(stacks[i].back(), c.id);
    if (accepted) {
      ok[c.index] = 1;
      continue;
    }
    bool any = false;
    for (size_t i = 0; i < chars.size(); i++) {
      bool m = matchChar(chars[i]->back(), *c.at).first;
      sig[i] = m ? '\1' : '\0';
      any = any || m;
    }
    if (!any) continue;
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& x) { return x.first == sig; });
    if (g == groups.end()) {
      groups.emplace_back(sig, std::vector<Candidate>());
      g = groups.end() - 1;
    }
    g->second.push_back(Candidate{c.index, c.at + 1, c.partial, c.id});
  }
  if (groups.empty()) return;
  // Each stack's successors once, for the groups that need them.
  std::vector<Stacks> after(chars.size());
  std::vector<char> made(chars.size(), 0);
  for (auto& [signature, group] : groups) {
    Stacks next;
    {
      Step step(rules, next);
      for (size_t i = 0; i < chars.size(); i++) {
        if (!signature[i]) continue;
        if (!made[i]) {
          Step own(rules, after[i]);
          const Stack& s = *chars[i];
          // The character read does not matter here: the element after the range is the same for all.
          auto end = matchChar(s.back(), 0).second;
          Stack rest(s.begin(), s.end() - 1);
          if (!endOfSequence(end)) rest.push_back(end);
          own.advance(std::move(rest));
          made[i] = 1;
        }
        for (const Stack& t : after[i]) step.add(t);
      }
    }
    acceptCandidates(rules, next, group, ok, false);
  }
}

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

la::GrammarWorkBudget::GrammarWorkBudget(size_t steps, const char* what) {
  t_budgetLeft = steps;
  t_budgetSteps = steps;
  t_budgetWhat = what;
}
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
    throw la::GrammarRejectedText("Unexpected empty grammar stack after accepting piece: " + piece + " (" +
                                      std::to_string(token) + ")", piece);
  }
}
// The grammar sampler's filter: every candidate token whose text no parse state can read is set to -inf
// (llama.cpp's llama_grammar_apply_impl, with acceptCandidates above). Its work for one token is bounded by
// kGrammarMaxApplyWork stack elements; past that, a GrammarStatesError ends the generation with
// ERR_LIMIT_EXCEEDED instead of holding the context's engine thread for minutes.
__attribute__((visibility("default"))) void llama_grammar_apply_impl(const struct llama_grammar& grammar, llama_token_data_array* cur_p) {
  if (useReference()) {
    using Apply = void (*)(const llama_grammar&, llama_token_data_array*);
    return reference<Apply>("_Z24llama_grammar_apply_implRK13llama_grammarP22llama_token_data_array")(grammar, cur_p);
  }
  if (grammar.vocab == nullptr) throw std::runtime_error("the grammar has no vocabulary");
  if (grammar.awaiting_trigger) return;
  bool allowEog = false;
  for (const Stack& s : grammar.stacks) allowEog = allowEog || s.empty();
  std::vector<std::vector<uint32_t>> decoded;
  decoded.reserve(cur_p->size);
  std::vector<Candidate> cands;
  cands.reserve(cur_p->size);
  for (size_t i = 0; i < cur_p->size; i++) {
    llama_token id = cur_p->data[i].id;
    const std::string& piece = grammar.vocab->token_to_piece(id);
    if (grammar.vocab->is_eog(id)) {
      if (!allowEog) cur_p->data[i].logit = -INFINITY;
    } else if (piece.empty() || piece[0] == 0) {
      cur_p->data[i].logit = -INFINITY;
    } else {
      auto d = decodeUtf8(piece, grammar.partial_utf8);
      decoded.push_back(std::move(d.first));
      cands.push_back(Candidate{i, nullptr, d.second, id});
    }
  }
  for (size_t k = 0; k < cands.size(); k++) cands[k].at = decoded[k].data();
  std::vector<char> ok(cur_p->size, 0);
  {
    la::GrammarWorkBudget budget(la::kGrammarMaxApplyWork, "choosing the next token under the grammar");
    acceptCandidates(grammar.rules, grammar.stacks, cands, ok);
  }
  for (const Candidate& c : cands) {
    if (!ok[c.index]) cur_p->data[c.index].logit = -INFINITY;
  }
}
#endif
