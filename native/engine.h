// Engine: one thread per llama_context that owns its batch loop. Every step it puts the next token of
// every running generation, and prompt chunks of new ones, into one llama_batch and decodes it once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "llama.h"
#include "candidates.h"
#include "lora_set.h"
#include "model_handle.h"
#include "prompt.h"
#include "run_queue.h"
#include "thread_pools.h"
#include "thread_tuner.h"

struct common_sampler;

namespace la {

// The stack of a context's engine thread (see Engine::start).
constexpr size_t kEngineStackBytes = 64u << 20;

class Engine;

// A piece of generated output: text that is safe to show (whole UTF-8 characters, no part of a stop
// string) and the tokens that produced it.
// Log-probability of a generated token under the model (softmax of its raw logits), and the most likely
// alternatives at that position.
struct TokenAlt {
  int32_t token = 0;
  std::string text;
  float logprob = 0;
};
struct TokenProb {
  int32_t token = 0;
  std::string text;
  float logprob = 0;
  std::vector<TokenAlt> top;
};

struct Chunk {
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<TokenProb> probs;  // one per token when logprobs were asked for
};

struct GenResult {
  std::string stopReason;  // eog | stop | maxTokens | abort | contextFull | error
  std::string errorCode;   // with stopReason error: the LlamaError code (ERR_DECODE, ERR_INVALID_GRAMMAR, ...)
  std::string error;
  std::string text;
  std::vector<int32_t> tokens;  // every generated token, end-of-generation token excluded
  std::vector<TokenProb> probs;
  int32_t promptTokens = 0;
  int32_t evaluatedTokens = 0;  // prompt tokens decoded (not reused from the cache)
  std::vector<int32_t> sequence;  // the tokens held in the sequence's KV cache afterwards
  int32_t discarded = 0;          // tokens dropped by context shifts during this generation
  int32_t drafted = 0, accepted = 0;  // speculative decoding: draft tokens proposed and accepted
  bool started = false;           // false: it ended before the engine touched the sequence
  // Its cells left the shared KV cache (kvUnified) for others to grow into: their state (llama.cpp's
  // per-sequence state, one stream), empty when it could not be copied.
  bool evicted = false;
  std::vector<uint8_t> evictedState;
  double promptMs = 0, generateMs = 0, timeToFirstTokenMs = 0;
};

struct GenState;

// What the engine hands a generation's output to: it knows nothing of N-API, so that the engine can run
// without Node (native/generation.cpp's sink wakes JS through a thread-safe function). Both calls come from
// the engine thread (or a worker that ends a generation before it starts) with the generation's mu held.
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  // Output is ready, the generation paused on a full queue, or it ended (g.done).
  virtual void notify(GenState& g) = 0;
  // After the last notify: no call follows.
  virtual void release(GenState& g) = 0;
};

// One generation request. Configuration is written on the JS thread before it is queued and is
// read-only afterwards; the "engine" part is touched by the engine thread only; the queue part is
// shared and guarded by `mu`.
struct GenState {
  ~GenState();

  // configuration
  int32_t seq = 0;
  PromptTokens prompt;  // the whole sequence: kept prefix + new prompt (prompt.h: text tokens and media)
  int32_t keep = 0;     // positions already in the KV cache that stay
  // Before anything else: drop `discardCount` cached tokens at `discardAt` and move the later ones back
  // (a context shift planned by JS for a prompt that would not fit).
  int32_t discardAt = 0, discardCount = 0;
  // When the sequence is full: drop `shiftDiscard` tokens after the first `shiftKeep`, move the later ones
  // back, and go on (llama.cpp's context shift). How many is JS's rule (lib/core/session.ts, shiftRule);
  // 0: no shift, the generation ends with contextFull.
  int32_t shiftKeep = 0;
  int32_t shiftDiscard = 0;
  int32_t maxTokens = 0;
  std::vector<std::string> stops;
  common_sampler* sampler = nullptr;  // llama.cpp common's sampler: chain, grammar, lazy triggers
  CandidateFilter candidates;         // samples `sampler`'s chain over the tokens it can keep (candidates.h)
  bool acceptPrompt = false;          // feed prompt tokens to the sampler (penalties)
  std::vector<llama_token> preserved;  // tokens rendered as text (tool-call markers), sorted
  size_t capacity = 32;       // bounded queue, in tokens: the engine pauses this generation when it is full
  int32_t logprobs = -1;      // >= 0: report each token's log-probability and this many alternatives
  int32_t priority = 0;       // higher goes first when a step cannot take everyone
  LoraSet lora;               // adapters this request decodes with (a batch holds one set only)
  int32_t draftMax = 0;       // speculative decoding: most draft tokens per step (0: none)
  bool hasGrammar = false;
  bool grammarLazy = false;   // the grammar applies from a trigger on
  int32_t lookupNgram = 0;    // prompt lookup: n-gram size to match (0: use the draft model)
  bool stream = true;         // false: no chunks, one notification at the end (complete())
  int64_t tQueued = 0;

  // engine thread only
  bool heldOnce = false;  // it has waited a step for the rest of the burst it came with (Engine::step)
  size_t promptPos = 0;
  int32_t nPast = 0;
  bool hasNext = false;
  llama_token next = 0;
  int32_t iBatch = -1;
  int32_t inBatch = 0;
  PromptTokens cache;  // what the sequence holds (prompt, then each token as it is decoded)
  int32_t shiftedFrom = -1;        // cells from here on were moved and no decode has rotated them yet
  bool evict = false;              // finish() moves the sequence's cells to the result (GenResult::evicted)
  std::vector<llama_token> drafts;  // this step's draft tokens, decoded after `next`
  int32_t iFirst = -1;              // batch row of `next`
  std::string pending;
  std::vector<int32_t> pendingTokens;
  std::vector<TokenProb> pendingProbs;
  int64_t tStart = 0, tFirst = 0;
  GenResult building;

  // shared
  std::mutex mu;
  // Output not yet taken by JS. Everything produced since the last take() is merged into one chunk, so a
  // fast model hands JS one object per wake-up rather than one per token.
  std::deque<Chunk> queue;
  size_t queuedTokens = 0;
  bool done = false;
  bool notifyPending = false;
  bool deferredNotify = false;  // data arrived within kNotifyIntervalUs of the last notification
  bool notifyAtStepEnd = false;  // a notification push() decided on, sent when the step ends
  int64_t lastNotifyUs = 0;
  bool pauseNotified = false;
  GenResult result;
  std::atomic<bool> aborted{false};
  // Where notifications go (JS, through a thread-safe function: native/generation.cpp); null: nowhere.
  std::shared_ptr<GenerationSink> sink;
  std::weak_ptr<Engine> engine;

  bool full() const { return queuedTokens >= capacity; }
};

// KV streams of a context's cache: one per sequence, or one for all with kvUnified (llama.cpp's kv_unified,
// where each sequence may use all n_ctx cells) or a single sequence.
inline uint32_t kvStreams(llama_context* ctx) {
  return llama_n_ctx_seq(ctx) == llama_n_ctx(ctx) ? 1 : llama_n_seq_max(ctx);
}

class Engine : public std::enable_shared_from_this<Engine> {
 public:
  // promptChunk: most prompt tokens per step while other generations are producing tokens. draftCtx: a
  // context of the draft model for speculative decoding (owned by the engine), or null.
  Engine(std::shared_ptr<ModelHandle> model, llama_context* ctx, int32_t promptChunk,
         std::shared_ptr<ModelHandle> draftModel = nullptr, llama_context* draftCtx = nullptr,
         std::unique_ptr<ThreadPools> pools = nullptr);
  // Engine thread only (tasks): sets the context's LoRA adapters, if they differ. Throws on failure.
  void applyLora(const LoraSet& set);
  ~Engine();

  void start();
  void submit(std::shared_ptr<GenState> gen);
  // Ends a generation that was never submitted (its sampler could not be built) with an error; any thread.
  void fail(std::shared_ptr<GenState> gen, const std::string& code, const std::string& error);
  // Runs `fn` on the engine thread between two steps, in order with the generations submitted before it.
  // If the engine stops first, `fn` runs on the stopping thread with a null context.
  void post(std::function<void(llama_context*)> fn);
  void clearSequence(int32_t seq);
  void wake();
  // Stops the loop, ends every generation with stopReason "abort", joins the thread and frees the
  // llama_context. Idempotent; must not be called from the engine thread.
  void stop();

  // Prompts on their way (JS thread): requests that arrived and are being prepared (a server's request
  // parsed, its chat rendered and tokenized), counted up when one arrives and down when its generation is
  // queued or it fails. An engine that waits for prompts arriving together waits for these too (step()).
  void expectPrompts(int32_t delta);
  int32_t promptsExpected();
  // threads: 'auto' (before start()): each decode step's thread count is chosen by a ThreadTuner, one per kind
  // of step, up to these counts (thread_tuner.h). 0 keeps the context's fixed count for that kind.
  void tuneThreads(int32_t maxThreads, int32_t maxThreadsBatch);
  // The counts the last steps used (any thread).
  int32_t threadsInUse() const { return tgNow_.load(); }
  int32_t threadsBatchInUse() const { return ppNow_.load(); }

  // Engine thread only: while a task runs that can be aborted (a beam search), the flag its abort sets; a
  // decode of the task is then cut off as soon as it is set (abortStep). Null again when the task ends.
  struct CancellableTask {
    Engine& engine;
    CancellableTask(Engine& e, const std::atomic<bool>* flag) : engine(e) { e.taskCancel_.store(flag); }
    ~CancellableTask() { engine.taskCancel_.store(nullptr); }
  };

  llama_context* ctx() const { return ctx_; }
  const std::shared_ptr<ModelHandle>& model() const { return model_; }
  int32_t seqCapacity() const { return nCtxSeq_; }

 private:
  struct Command {
    enum Kind { Generate, Task } kind;
    std::shared_ptr<GenState> gen;
    std::function<void(llama_context*)> task;
  };

  void run();
  bool step();  // one engine step; false when stopping
  bool runnable(GenState& g);
  // Orders the step's rows by sequence and fills small gaps between sequences with placeholder rows, so that
  // llama.cpp decodes the step in as few passes as it can (engine.cpp); dropPlaceholders() takes their cells
  // back after the decode.
  void arrangeBatch();
  void dropPlaceholders();
  // Decodes the media chunk at g.promptPos (its own llama_decode); false: g ended (contextFull, error).
  bool decodeMedia(GenState& g);
  bool makeRoom(GenState& g);  // context shift for a full sequence; false when it is not possible
  // Takes what this step added for `g` back out (the batch did not fit in the KV cache): it goes on next step.
  void unbatch(GenState& g);
  void makeDraft(GenState& g, int32_t room);  // fills g.drafts (draft model or prompt lookup)
  void startGeneration(const std::shared_ptr<GenState>& g);
  void handleToken(GenState& g, llama_token t, int32_t iBatch);
  void push(GenState& g, Chunk&& c);
  void flushDeferredNotifications();
  // Ends a request; with reason "error", `code` is the LlamaError code and `error` the message.
  void finish(GenState& g, const char* reason, const std::string& code = "", const std::string& error = "");

  std::shared_ptr<ModelHandle> model_;
  llama_context* ctx_;
  llama_batch batch_{};
  int32_t nBatch_ = 0;
  int32_t nUbatch_ = 0;
  int32_t nCtxSeq_ = 0;
  bool canShift_ = false;
  bool sharedCells_ = false;  // one KV buffer for several sequences (kvUnified)
  int32_t nStreams_ = 1;      // KV streams: one per sequence, or one (kvUnified, or one sequence)
  bool placeholdersOk_ = false;  // arrangeBatch may fill missing sequences with placeholder rows
  llama_token placeholderToken_ = 0;
  std::vector<std::pair<llama_seq_id, llama_pos>> placeholders_;  // this step's placeholder rows
  int32_t nSwa_ = 0;
  int32_t promptChunk_ = 0;
  // Microseconds a token of a large step (a prompt chunk) took lately (0: none yet): what a prompt's decode
  // will take, which sizes the wait for other prompts that arrive with it (step()).
  double promptTokenUs_ = 0;
  double genStepUs_ = 0;  // and a step of generations alone: what a generation's tokens will take
  int64_t generatingSince_ = INT64_MAX;  // the first token of the current run of steps with generations (step())
  int64_t stepEndUs_ = 0;  // when the last step ended (nowUs()): the wait for prompts arriving together counts from it
  LoraSet currentLora_;  // adapters set on the context
  int32_t loraRun_ = 0;  // steps decoded with currentLora_ in a row while other sets waited
  std::shared_ptr<ModelHandle> draftModel_;
  llama_context* draftCtx_ = nullptr;
  std::unique_ptr<ThreadPools> pools_;  // attached to ctx_ and draftCtx_; freed after them
  static constexpr double kGatherMaxUs = 20000; // the longest wait for prompts arriving together (step())
  static constexpr double kGatherExpectedUs = 50000; // ... while more are on their way (expectPrompts())
  int32_t expected_ = 0;  // prompts on their way (expectPrompts(); under mu_)
  // Waits for prompts arriving together that found none in a row (engine thread); from kGatherAloneRuns on,
  // the wait is kGatherAloneUs at most, until a prompt arrives before missWindowEnd_ (nowUs(); 0: none),
  // the end of the window the last wait would have had.
  static constexpr int kGatherAloneRuns = 4;
  static constexpr double kGatherAloneUs = 1000;  // the wait then (for prompts submitted together)
  int gatherAlone_ = 0;
  int64_t missWindowEnd_ = 0;
  static constexpr int32_t kGatherTokens = 32;  // generated tokens counted in what a generation will take
  static constexpr int32_t kLargeStep = ThreadTuners::kLargeStep;
  ThreadTuners tuners_;  // a tuner per shape of step (native/thread_tuner.h)
  RunQueueMeter waits_;  // the compute threads' run-queue waits, for the tuners
  int32_t maxThreads_ = 0, maxThreadsBatch_ = 0;  // 0: that kind of step does not adapt
  std::atomic<int32_t> tgNow_{0}, ppNow_{0};
  llama_batch draftBatch_{};
  std::vector<std::vector<llama_token>> draftSeqs_;  // tokens each sequence of the draft context holds
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Command> commands_;
  bool stopping_ = false;
  // llama.cpp's abort callback, asked between the nodes of a step's compute graph: a step ends at once when
  // the context stops, or when every generation in it was aborted (a long prompt alone: an abort or a
  // dispose waits for a node, not for the step's seconds). Generations that share the step with one that
  // goes on are not cut off: they end after it, as before.
  static bool abortStep(void* engine);
  std::atomic<bool> stopRequested_{false};
  std::atomic<const std::atomic<bool>*> taskCancel_{nullptr};  // (CancellableTask)
  std::vector<GenState*> stepGens_;  // this step's generations, while it decodes; engine thread only
  // Holds stepGens_ for one decode (of the target or the draft model); then clears it and the cut-off mark.
  struct DecodingFor {
    std::vector<GenState*>& gens;
    ~DecodingFor();
  };
  std::mutex stopMu_;
  bool stopped_ = false;
  std::vector<std::shared_ptr<GenState>> active_;  // engine thread only
  size_t rr_ = 0;
  // LLAMA_ADDON_PROFILE=1 (read when the engine is made): where the engine thread's time goes, summed over
  // the steps that decode, printed to stderr when the engine stops (a developer's tool: see the README's
  // Performance section). Times in microseconds; `sync` is the wait for the backend to finish the step's
  // work (llama_decode returns before a GPU is done), `sample` the samplers, `handle` detokenizing, stop
  // strings and queueing output, `rest` everything else between two decodes.
  struct Profile {
    bool on = false;
    bool perStep = false;  // LLAMA_ADDON_PROFILE=steps: also a line per step
    int64_t steps = 0, tokens = 0;
    int64_t graphsReused = 0;  // llama.cpp's count of steps that reused the last step's compute graph
    int64_t sampled = 0, sampledSubset = 0;  // tokens sampled one at a time, and of those over a subset (candidates.h)
    int64_t decodeUs = 0, syncUs = 0, sampleUs = 0, handleUs = 0, stepUs = 0;
  } profile_;
  void printProfile() const;
};

int64_t nowUs();
// Whether a llama_decode on this thread is being cut off on purpose (Engine::abortStep): the warnings and
// errors llama.cpp logs about it are then logged at the debug level (native/log.cpp).
bool cuttingOffStep();
// Notifications to JS are coalesced: at most one per this interval while tokens keep coming, so a fast
// model does not wake the JS thread (and take a core from ggml) for every token. The first chunk, a full
// queue and the end are notified at once.
constexpr int64_t kNotifyIntervalUs = 2000;
// Stops every engine of the process: at process exit, before static destructors run.
void stopAllEngines();
// Tells the generation's sink that there is something to take (data, a pause, the end). Call with g.mu held.
void notifySink(GenState& g);

}  // namespace la
