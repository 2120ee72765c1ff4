#include "grammar_check.h"

#include <set>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <vector>

#include "llama-grammar.h"

namespace la {

namespace {

std::string excerpt(const char* at) {
  std::string s(at, strnlen(at, 40));
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

// A lexical pass over the GBNF text, before llama.cpp's recursive parser sees it: nesting depth of groups
// and repetition bounds. Strings, character classes, token references and comments are skipped.
void scanText(const std::string& gbnf) {
  if (gbnf.size() > kGrammarMaxBytes) {
    throw GrammarLimitError("The grammar is " + std::to_string(gbnf.size()) + " bytes; the limit is " +
                            std::to_string(kGrammarMaxBytes));
  }
  if (std::memchr(gbnf.data(), '\0', gbnf.size()) != nullptr) {
    throw GrammarSyntaxError("The grammar contains a NUL character");
  }
  const char* p = gbnf.c_str();
  size_t depth = 0;
  // Elements the parser will make: repetitions copy what they repeat ("a..."{0,1000} is 1000 copies of the
  // literal), so each group's size is tracked as written and multiplied by each repetition's count.
  struct Frame {
    double total = 0, last = 0;
  };
  std::vector<Frame> frames(1);
  double expanded = 0;
  auto item = [&](double size) {
    frames.back().last = size;
    frames.back().total += size;
  };
  auto repeat = [&](double factor) {
    Frame& f = frames.back();
    f.total += f.last * (factor - 1);
    f.last *= factor;
    if (f.total > (double)kGrammarMaxElements) {
      throw GrammarLimitError("The grammar expands to more than " + std::to_string(kGrammarMaxElements) +
                              " elements (repetitions copy what they repeat; at \"" + excerpt(p) + "\")");
    }
  };
  auto endRule = [&] {
    if (frames.size() == 1) {
      expanded += frames[0].total;
      frames[0] = Frame{};
    }
    if (expanded > (double)kGrammarMaxElements) {
      throw GrammarLimitError("The grammar expands to more than " + std::to_string(kGrammarMaxElements) + " elements");
    }
  };
  while (*p) {
    char c = *p;
    if (c == '#') {
      while (*p && *p != '\n' && *p != '\r') p++;
    } else if (c == '\n' || c == '\r') {
      endRule();
      p++;
    } else if (c == '"' || c == '[') {
      // An empty character class: llama.cpp reads it as nothing at all, so that it matched the empty
      // string where no character can match ("[^]" is any character).
      if (c == '[' && p[1] == ']') throw GrammarSyntaxError("The grammar has an empty character class [], which no character matches");
      // "[^]" reads as "any character" in regular expressions, but llama.cpp reads it as nothing at all.
      if (c == '[' && p[1] == '^' && p[2] == ']') {
        throw GrammarSyntaxError("The grammar has an empty negated class [^], which llama.cpp reads as nothing at all; write [\\x00-\\U0010FFFF] for any character");
      }
      const char* start = p;
      char close = c == '"' ? '"' : ']';
      p++;
      while (*p && *p != close) {
        if (*p == '\\' && p[1]) p++;
        p++;
      }
      if (*p) p++;
      item(c == '"' ? (double)(p - start) : 2.0);
    } else if (c == '<' && p[1] == '[') {
      // A token reference <[id]>: llama.cpp reads the id into 32 bits, so <[4294967596]> became token 300.
      const char* digits = p + 2;
      const char* end = digits;
      while (*end >= '0' && *end <= '9') end++;
      if (end - digits > 10 || (end > digits && std::strtoull(digits, nullptr, 10) > 2147483647ull)) {
        throw GrammarSyntaxError("The token reference <[" + std::string(digits, (size_t)std::min<ptrdiff_t>(end - digits, 40)) +
                                 "]> names no token (token ids are below 2^31)");
      }
      p = end;
      item(1);
    } else if (std::isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.') {
      while (std::isalnum((unsigned char)*p) || *p == '_' || *p == '-') p++;
      if (c == '.') p++;
      item(1);
    } else if (c == '*' || c == '+') {
      repeat(2);
      p++;
    } else if (c == '(') {
      if (++depth > kGrammarMaxNesting) {
        throw GrammarLimitError("The grammar nests groups more than " + std::to_string(kGrammarMaxNesting) +
                                " deep (at \"" + excerpt(p) + "\")");
      }
      frames.emplace_back();
      p++;
    } else if (c == ')') {
      if (depth > 0) depth--;
      if (frames.size() > 1) {
        double size = std::max(1.0, frames.back().total);
        frames.pop_back();
        item(size);
      }
      p++;
    } else if (c == '{') {
      // {m}, {m,}, {m,n}, {,n}: the bounds must be ordered (llama.cpp loops on {3,2}).
      const char* start = p++;
      auto number = [&](bool& present) -> unsigned long long {
        while (*p == ' ' || *p == '\t') p++;
        unsigned long long v = 0;
        present = false;
        while (*p >= '0' && *p <= '9') {
          present = true;
          v = v > 1000000000ull ? v : v * 10 + (unsigned long long)(*p - '0');
          p++;
        }
        while (*p == ' ' || *p == '\t') p++;
        return v;
      };
      bool hasMin = false, hasMax = false;
      unsigned long long lo = number(hasMin);
      unsigned long long most = lo;
      if (*p == ',') {
        p++;
        unsigned long long hi = number(hasMax);
        if (hasMax && hasMin && lo > hi) {
          throw GrammarSyntaxError("Invalid repetition \"" + std::string(start, (size_t)(p - start + (*p == '}' ? 1 : 0))) +
                                   "\": the minimum " + std::to_string(lo) + " is greater than the maximum " +
                                   std::to_string(hi));
        }
        // llama.cpp turns a maximum past its repetition threshold into "no maximum": m copies and one more.
        most = hasMax && hi <= 2000 ? hi : lo + 1;
      }
      repeat((double)std::max<unsigned long long>(most, 1));
    } else {
      p++;
    }
  }
}

// Parses with llama.cpp's own parser, rule by rule, so that its reason comes back as an exception instead of
// being printed to stderr (llama_grammar_parser::parse prints it).
void parseRules(llama_grammar_parser& parser, const std::string& gbnf) {
  auto space = [](const char* pos) {
    while (*pos == ' ' || *pos == '\t' || *pos == '#' || *pos == '\r' || *pos == '\n') {
      if (*pos == '#') {
        while (*pos && *pos != '\r' && *pos != '\n') pos++;
      } else {
        pos++;
      }
    }
    return pos;
  };
  const char* pos = space(gbnf.c_str());
  std::set<std::string> defined;
  while (*pos) {
    // A rule defined twice: llama.cpp takes the last definition and drops the first without a word.
    const char* end = pos;
    while ((*end >= 'a' && *end <= 'z') || (*end >= 'A' && *end <= 'Z') || (*end >= '0' && *end <= '9') || *end == '-' || *end == '_') end++;
    std::string name(pos, end);
    if (!name.empty() && !defined.insert(name).second) throw std::runtime_error("The rule \"" + name + "\" is defined twice");
    pos = parser.parse_rule(pos);
  }
  for (const auto& rule : parser.rules) {
    if (rule.empty()) throw std::runtime_error("Undefined rule");
    for (const auto& elem : rule) {
      if (elem.type == LLAMA_GRETYPE_RULE_REF && (elem.value >= parser.rules.size() || parser.rules[elem.value].empty())) {
        for (const auto& kv : parser.symbol_ids) {
          if (kv.second == elem.value) throw std::runtime_error("Undefined rule identifier '" + kv.first + "'");
        }
        throw std::runtime_error("Undefined rule");
      }
    }
  }
  if (parser.symbol_ids.find("root") == parser.symbol_ids.end()) throw std::runtime_error("Grammar does not contain a \"root\" symbol");
}

// A rule's name in the grammar's source ("?" for none).
std::string ruleName(const llama_grammar_parser& parser, uint32_t id) {
  for (const auto& kv : parser.symbol_ids) {
    if (kv.second == id) return kv.first;
  }
  return "?";
}

// The rules each rule can start with (a rule reference preceded only by rules that may match nothing):
// llama.cpp follows these edges recursively (left-recursion check) and without memory, so a long chain
// overflows the stack and a wide one takes exponential time. Checked here without recursion.
void checkLeading(const llama_grammar_parser& parser) {
  const llama_grammar_rules& rules = parser.rules;
  size_t n = rules.size();
  if (n > kGrammarMaxRules) {
    throw GrammarLimitError("The grammar has " + std::to_string(n) + " rules (groups and repetitions included); the limit is " +
                            std::to_string(kGrammarMaxRules));
  }
  // Rules with an empty alternative. llama.cpp's walk treats only these as possibly empty (not rules made
  // of empty rules), so the edges below are exactly the ones it follows.
  std::vector<char> nullable(n, 0);
  for (size_t r = 0; r < n; r++) {
    bool atStart = true;
    for (const auto& e : rules[r]) {
      if (e.type == LLAMA_GRETYPE_END || e.type == LLAMA_GRETYPE_ALT) {
        if (atStart) {
          nullable[r] = 1;
          break;
        }
        atStart = true;
      } else {
        atStart = false;
      }
    }
  }
  // Alternatives that start with a character, a token or nothing: each is one parse state when llama.cpp
  // enters the rule (llama_grammar_advance_stack), and it deduplicates states by a linear search, so a rule
  // with tens of thousands of alternatives took seconds to enter (32,000 words: 1.6 s on the JS thread).
  std::vector<double> direct(n, 0);
  for (size_t r = 0; r < n; r++) {
    bool atStart = true;
    for (const auto& e : rules[r]) {
      if (e.type == LLAMA_GRETYPE_END || e.type == LLAMA_GRETYPE_ALT) {
        if (atStart) direct[r] += 1;
        atStart = true;
        if (e.type == LLAMA_GRETYPE_END) break;
      } else {
        if (atStart && e.type != LLAMA_GRETYPE_RULE_REF) direct[r] += 1;
        atStart = false;
      }
    }
  }
  std::vector<std::vector<uint32_t>> edges(n);
  for (size_t r = 0; r < n; r++) {
    bool leading = true;
    for (const auto& e : rules[r]) {
      if (e.type == LLAMA_GRETYPE_END || e.type == LLAMA_GRETYPE_ALT) {
        leading = true;
      } else if (e.type == LLAMA_GRETYPE_RULE_REF) {
        if (leading) edges[r].push_back(e.value);
        leading = leading && nullable[e.value];
      } else {
        leading = false;
      }
    }
  }
  // Iterative depth-first search: a cycle is left recursion; depth and the number of paths are bounded.
  std::vector<char> state(n, 0);  // 0 new, 1 on the path, 2 done
  std::vector<uint32_t> depth(n, 0);
  std::vector<double> paths(n, 0);
  std::vector<double> starts(n, 0);  // parse states on entering the rule, at most (before deduplication)
  auto nameOf = [&](uint32_t id) { return ruleName(parser, id); };
  for (uint32_t root = 0; root < n; root++) {
    if (state[root] != 0) continue;
    std::vector<std::pair<uint32_t, size_t>> stack{{root, 0}};
    state[root] = 1;
    while (!stack.empty()) {
      auto& [r, next] = stack.back();
      if (next < edges[r].size()) {
        uint32_t s = edges[r][next++];
        if (state[s] == 1) throw GrammarSyntaxError("The grammar is left-recursive: rule \"" + nameOf(s) + "\" can start with itself");
        if (state[s] == 0) {
          state[s] = 1;
          stack.push_back({s, 0});
        }
        continue;
      }
      uint32_t d = 0;
      double p = 1;
      double st = direct[r];
      for (uint32_t s : edges[r]) {
        d = std::max(d, depth[s]);
        p += paths[s];
        st += starts[s];
      }
      depth[r] = d + 1;
      paths[r] = std::min(p, 1e18);
      starts[r] = std::min(st, 1e18);
      if (starts[r] > (double)kGrammarMaxStacks) {
        throw GrammarLimitError("The grammar is too ambiguous: rule \"" + nameOf(r) + "\" can start in more than " +
                                std::to_string(kGrammarMaxStacks) + " ways (one parse state each; the limit is " +
                                std::to_string(kGrammarMaxStacks) + " at once)");
      }
      if (depth[r] > kGrammarMaxChain) {
        throw GrammarLimitError("The grammar's rules start with other rules more than " + std::to_string(kGrammarMaxChain) +
                                " deep (from rule \"" + nameOf(r) + "\")");
      }
      if (paths[r] > kGrammarMaxPaths) {
        throw GrammarLimitError("The grammar is too ambiguous: rule \"" + nameOf(r) + "\" can start in more than " +
                                std::to_string((long long)kGrammarMaxPaths) + " ways");
      }
      state[r] = 2;
      stack.pop_back();
    }
  }
}

// Left recursion that llama.cpp's check misses: through rules that can match nothing only because they are
// made of such rules (`x? y?`), which its check does not count as empty but its parser walks through. A
// cycle of rules that start with each other grows the parse stack when one of its references is followed
// by more of its alternative (`root ::= ([a-z]? | "x") root " "`: entering it took every byte of memory,
// found by the fuzzer); a cycle of references that end their alternatives (`(x? " ")+`, which the
// JSON-schema and tool-call grammars use) comes back to the same stack, and the parser stops there.
void checkGrowingCycles(const llama_grammar_parser& parser) {
  const llama_grammar_rules& rules = parser.rules;
  const size_t n = rules.size();
  // Rules that can match nothing, transitively; an alternative made only of references waits for each.
  std::vector<char> nullable(n, 0);
  {
    std::vector<uint32_t> pending, altRule, queue;
    std::vector<std::vector<uint32_t>> users(n);
    for (size_t r = 0; r < n; r++) {
      uint32_t refs = 0;
      bool terminal = false;
      std::vector<uint32_t> seen;
      for (const auto& e : rules[r]) {
        if (e.type == LLAMA_GRETYPE_END || e.type == LLAMA_GRETYPE_ALT) {
          if (!terminal) {
            uint32_t a = (uint32_t)pending.size();
            pending.push_back(refs);
            altRule.push_back((uint32_t)r);
            for (uint32_t ref : seen) users[ref].push_back(a);
            if (refs == 0 && !nullable[r]) {
              nullable[r] = 1;
              queue.push_back((uint32_t)r);
            }
          }
          refs = 0;
          terminal = false;
          seen.clear();
          if (e.type == LLAMA_GRETYPE_END) break;
        } else if (e.type == LLAMA_GRETYPE_RULE_REF && e.value < n) {
          refs++;
          seen.push_back(e.value);
        } else {
          terminal = true;
        }
      }
    }
    while (!queue.empty()) {
      uint32_t s = queue.back();
      queue.pop_back();
      for (uint32_t a : users[s]) {
        if (pending[a] > 0 && --pending[a] == 0 && !nullable[altRule[a]]) {
          nullable[altRule[a]] = 1;
          queue.push_back(altRule[a]);
        }
      }
    }
  }
  // Leading references, and whether each ends its alternative.
  struct Edge {
    uint32_t to;
    bool tail;
  };
  std::vector<std::vector<Edge>> edges(n);
  for (size_t r = 0; r < n; r++) {
    bool leading = true;
    const auto& rule = rules[r];
    for (size_t i = 0; i < rule.size(); i++) {
      const auto& e = rule[i];
      if (e.type == LLAMA_GRETYPE_END || e.type == LLAMA_GRETYPE_ALT) {
        leading = true;
        if (e.type == LLAMA_GRETYPE_END) break;
      } else if (e.type == LLAMA_GRETYPE_RULE_REF && e.value < n) {
        bool tail = i + 1 >= rule.size() || rule[i + 1].type == LLAMA_GRETYPE_END || rule[i + 1].type == LLAMA_GRETYPE_ALT;
        if (leading) edges[r].push_back({e.value, tail});
        leading = leading && nullable[e.value];
      } else {
        leading = false;
      }
    }
  }
  // Strongly connected components (Tarjan's, without recursion).
  std::vector<int32_t> index(n, -1), low(n, 0), comp(n, -1);
  std::vector<char> onStack(n, 0);
  std::vector<uint32_t> stack;
  int32_t counter = 0, comps = 0;
  for (uint32_t start = 0; start < n; start++) {
    if (index[start] >= 0) continue;
    std::vector<std::pair<uint32_t, size_t>> work{{start, 0}};
    index[start] = low[start] = counter++;
    stack.push_back(start);
    onStack[start] = 1;
    while (!work.empty()) {
      auto& [v, next] = work.back();
      if (next < edges[v].size()) {
        uint32_t w = edges[v][next++].to;
        if (index[w] < 0) {
          index[w] = low[w] = counter++;
          stack.push_back(w);
          onStack[w] = 1;
          work.push_back({w, 0});
        } else if (onStack[w]) {
          low[v] = std::min(low[v], index[w]);
        }
        continue;
      }
      if (low[v] == index[v]) {
        uint32_t w;
        do {
          w = stack.back();
          stack.pop_back();
          onStack[w] = 0;
          comp[w] = comps;
        } while (w != v);
        comps++;
      }
      uint32_t done = v;
      work.pop_back();
      if (!work.empty()) low[work.back().first] = std::min(low[work.back().first], low[done]);
    }
  }
  for (uint32_t r = 0; r < n; r++) {
    for (const Edge& e : edges[r]) {
      if (!e.tail && comp[e.to] == comp[r]) {
        throw GrammarSyntaxError("The grammar is left-recursive: rule \"" + ruleName(parser, e.to) +
                                 "\" can start with itself (through rules that can match nothing)");
      }
    }
  }
}

}  // namespace

void checkGrammar(const std::string& gbnf, int32_t nVocab) {
  scanText(gbnf);
  llama_grammar_parser parser;
  try {
    parseRules(parser, gbnf);
  } catch (const GrammarLimitError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    std::string why = e.what();
    if (why.size() > 200) why = why.substr(0, 200) + "...";
    throw GrammarSyntaxError(why);
  }
  if (nVocab >= 0) {
    for (const auto& rule : parser.rules) {
      for (const auto& e : rule) {
        if ((e.type == LLAMA_GRETYPE_TOKEN || e.type == LLAMA_GRETYPE_TOKEN_NOT) && (int64_t)e.value >= nVocab) {
          throw GrammarSyntaxError("The token reference <[" + std::to_string(e.value) + "]> names no token: the vocabulary has tokens 0 to " +
                                   std::to_string(nVocab - 1));
        }
      }
    }
  }
  checkLeading(parser);
  checkGrowingCycles(parser);
}

}  // namespace la
