#include "grammar_check.h"

#include <algorithm>
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
  while (*p) {
    char c = *p;
    if (c == '#') {
      while (*p && *p != '\n' && *p != '\r') p++;
    } else if (c == '"' || c == '[') {
      char close = c == '"' ? '"' : ']';
      p++;
      while (*p && *p != close) {
        if (*p == '\\' && p[1]) p++;
        p++;
      }
      if (*p) p++;
    } else if (c == '(') {
      if (++depth > kGrammarMaxNesting) {
        throw GrammarLimitError("The grammar nests groups more than " + std::to_string(kGrammarMaxNesting) +
                                " deep (at \"" + excerpt(p) + "\")");
      }
      p++;
    } else if (c == ')') {
      if (depth > 0) depth--;
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
      if (*p == ',') {
        p++;
        unsigned long long hi = number(hasMax);
        if (hasMax && hasMin && lo > hi) {
          throw GrammarSyntaxError("Invalid repetition \"" + std::string(start, (size_t)(p - start + (*p == '}' ? 1 : 0))) +
                                   "\": the minimum " + std::to_string(lo) + " is greater than the maximum " +
                                   std::to_string(hi));
        }
      }
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
  while (*pos) pos = parser.parse_rule(pos);
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
  // Rules that may match the empty string: a fixed point.
  std::vector<char> nullable(n, 0);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; r++) {
      if (nullable[r]) continue;
      bool allNull = true;
      for (const auto& e : rules[r]) {
        if (e.type == LLAMA_GRETYPE_END || e.type == LLAMA_GRETYPE_ALT) {
          if (allNull) {
            nullable[r] = 1;
            changed = true;
            break;
          }
          allNull = true;
        } else if (e.type == LLAMA_GRETYPE_RULE_REF) {
          allNull = allNull && nullable[e.value];
        } else {
          allNull = false;
        }
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
  auto nameOf = [&](uint32_t id) {
    for (const auto& kv : parser.symbol_ids) {
      if (kv.second == id) return kv.first;
    }
    return std::string("?");
  };
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
      for (uint32_t s : edges[r]) {
        d = std::max(d, depth[s]);
        p += paths[s];
      }
      depth[r] = d + 1;
      paths[r] = std::min(p, 1e18);
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

}  // namespace

void checkGrammar(const std::string& gbnf) {
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
  checkLeading(parser);
}

}  // namespace la
