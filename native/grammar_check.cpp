#include "grammar_check.h"

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
      const char* start = p;
      char close = c == '"' ? '"' : ']';
      p++;
      while (*p && *p != close) {
        if (*p == '\\' && p[1]) p++;
        p++;
      }
      if (*p) p++;
      item(c == '"' ? (double)(p - start) : 2.0);
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
