// The documented limits on untrusted input: every parser and interpreter that a caller's (or an attacker's)
// input reaches has a bound on size, nesting, iterations or time, checked before or while llama.cpp runs.
// The native side enforces the same numbers (native/*.h); exceeding one is a LlamaError ERR_LIMIT_EXCEEDED.

/** Limits on input, in bytes (UTF-8), levels or counts. The same values are enforced in C++. */
export const limits = Object.freeze({
  /** Text given to one `tokenize` call (and so one prompt or message), bytes: 16 MiB. */
  tokenizeBytes: 16 * 2 ** 20,
  /**
   * Characters in one run of non-whitespace (or of whitespace) for BPE vocabularies: their pre-tokenizer's
   * regular expressions recurse once per character; long runs are tokenized on a thread with a stack sized
   * for them, up to this many.
   */
  tokenizeRun: 4 * 2 ** 20,
  /** A GBNF grammar's text, bytes: 4 MiB. */
  grammarBytes: 4 * 2 ** 20,
  /** Groups `( ... )` nested in a grammar. */
  grammarNesting: 256,
  /** Rules of a parsed grammar (each group and repetition becomes one). */
  grammarRules: 65536,
  /** Rules that start with a rule that starts with a rule ... (llama.cpp follows these recursively). */
  grammarChain: 1000,
  /** Ways one rule can start (llama.cpp walks each when it checks for left recursion). */
  grammarPaths: 1_000_000,
  /** Elements of a grammar once its repetitions are expanded (`"..."{0,1000}` makes 1000 copies). */
  grammarElements: 4 * 2 ** 20,
  /** Repetition counts `{m,n}` in a grammar (llama.cpp's own limit; larger maxima mean "unbounded"). */
  grammarRepetition: 2000,
  /** Text given to `matchesGrammar`, bytes: 1 MiB. */
  matchBytes: 2 ** 20,
  /** Parse states a grammar keeps at once, while generating or in `matchesGrammar` (an ambiguous grammar needs many). */
  grammarStates: 8192,
  /**
   * Stack elements a grammar may write to read one character, while generating or in `matchesGrammar`: parse
   * states that deepen or multiply with the text (`root ::= x+ "!"`, `x ::= [a-z] x? "b"?`) would otherwise
   * make each character slower than the last.
   */
  grammarStepWork: 2 ** 21,
  /** The same steps in all for one `matchesGrammar` call: a text nested 60,000 deep took minutes. */
  grammarMatchWork: 2 ** 30,
  /** The same steps for choosing one token under a grammar (the sampler's filter of every candidate token). */
  grammarSampleWork: 2 ** 25,
  /** A JSON schema's text, bytes: 1 MiB. */
  schemaBytes: 2 ** 20,
  /** Objects and arrays nested in a JSON schema. */
  schemaDepth: 128,
  /** A Jinja chat template's source, bytes: 1 MiB. */
  templateBytes: 2 ** 20,
  /** Brackets within one tag, and blocks, nested in a template's source. */
  templateNesting: 100,
  /** Operators and words (outside strings) in one tag of a template: its parser recurses on chains of them. */
  templateTagTokens: 4000,
  /** Items of one list or mapping while rendering (none may contain itself). */
  templateItems: 100_000,
  /** Nodes nested while rendering (macro calls included: a recursive macro stops here). */
  templateDepth: 300,
  /** Nodes evaluated per render. */
  templateSteps: 300_000,
  /** Bytes of strings built per render: 64 MiB. */
  templateStringBytes: 64 * 2 ** 20,
  /** Values of one `range()` call, and items of one `for` loop, in a template. */
  templateLoop: 10_000,
  /** Wall-clock time of one template call (it may render several times to learn what the template does), ms. */
  templateMillis: 2000,
  /** A session file `session.load` reads, bytes: 16 GiB (less where one Buffer cannot hold that). */
  sessionFileBytes: 16 * 2 ** 30,
  /** CPU threads of a context (`threads`, `threadsBatch`): ggml's maximum. */
  threads: 512,
});

/** The names of {@link limits}. */
export type LimitName = keyof typeof limits;

/**
 * String prompts (and rendered conversations) of at least this many characters are tokenized off the JS
 * thread when a generation starts; shorter ones take well under a millisecond on the calling thread.
 * @internal
 */
export const ASYNC_TOKENIZE_CHARS = 16384;
