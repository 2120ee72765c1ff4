#include "engine.h"
#include "output.h"
#include "batch.h"

#include "grammar_check.h"
#include "guard.h"
#include "large_stack.h"
#include "common/sampling.h"  // llama.cpp's

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <shared_mutex>

namespace la {

int64_t nowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {
// Every started engine, so that process exit can stop their threads before static destructors run.
std::mutex g_liveMu;
std::vector<std::weak_ptr<Engine>> g_live;
// Set once the process exits: JS can no longer receive anything.
std::atomic<bool> g_exiting{false};
}  // namespace

void stopAllEngines() {
  g_exiting.store(true);
  std::vector<std::weak_ptr<Engine>> live;
  {
    std::lock_guard<std::mutex> lock(g_liveMu);
    live.swap(g_live);
  }
  for (auto& w : live) {
    if (auto e = w.lock()) e->stop();
  }
}

void notifySink(GenState& g) {
  if (g.sink && !g_exiting.load()) g.sink->notify(g);
}

GenState::~GenState() {
  if (sampler != nullptr) common_sampler_free(sampler);
}

// ------------------------------------------------------------------ engine

Engine::Engine(std::shared_ptr<ModelHandle> model, llama_context* ctx, int32_t promptChunk,
               std::shared_ptr<ModelHandle> draftModel, llama_context* draftCtx, std::unique_ptr<ThreadPools> pools)
    : model_(std::move(model)), ctx_(ctx), promptChunk_(promptChunk), draftModel_(std::move(draftModel)), draftCtx_(draftCtx),
      pools_(std::move(pools)) {
  if (pools_) {
    pools_->attach(ctx_);
    if (draftCtx_ != nullptr) pools_->attach(draftCtx_);
  }
  if (draftCtx_ != nullptr) {
    draftBatch_ = llama_batch_init((int32_t)llama_n_batch(draftCtx_), 0, 1);
    draftSeqs_.resize(llama_n_seq_max(draftCtx_));
  }
  llama_set_abort_callback(ctx_, &Engine::abortStep, this);
  if (draftCtx_ != nullptr) llama_set_abort_callback(draftCtx_, &Engine::abortStep, this);  // (makeDraft)
  nBatch_ = (int32_t)llama_n_batch(ctx_);
  nUbatch_ = (int32_t)llama_n_ubatch(ctx_);
  nCtxSeq_ = (int32_t)llama_n_ctx_seq(ctx_);
  canShift_ = llama_memory_can_shift(llama_get_memory(ctx_));
  nStreams_ = (int32_t)kvStreams(ctx_);
  sharedCells_ = nStreams_ == 1 && llama_n_seq_max(ctx_) > 1;
  nSwa_ = llama_model_n_swa(model_->model);
  {
    const char* off = std::getenv("LLAMA_ADDON_NO_PLACEHOLDERS");  // tests compare with and without
    placeholdersOk_ = canShift_ && nSwa_ == 0 && !llama_model_is_recurrent(model_->model) &&
                      !llama_model_is_hybrid(model_->model) && !(off != nullptr && off[0] != '\0' && std::string(off) != "0");
    llama_token bos = llama_vocab_bos(model_->vocab);
    placeholderToken_ = bos >= 0 && bos < llama_vocab_n_tokens(model_->vocab) ? bos : 0;
  }
  batch_ = llama_batch_init(nBatch_, 0, 1);
  tgNow_ = llama_n_threads(ctx_);
  ppNow_ = llama_n_threads_batch(ctx_);
  const char* prof = std::getenv("LLAMA_ADDON_PROFILE");
  profile_.on = prof != nullptr && prof[0] != '\0' && std::string(prof) != "0";
  profile_.perStep = profile_.on && std::string(prof) == "steps";
}

void Engine::printProfile() const {
  const Profile& p = profile_;
  if (!p.on || p.steps == 0) return;
  double n = (double)p.steps;
  int64_t rest = p.stepUs - p.decodeUs - p.syncUs - p.sampleUs - p.handleUs;
  std::fprintf(stderr,
               "llama-addon engine profile: %lld steps, %lld tokens; per step (us): decode %.1f, sync %.1f, sample %.1f, "
               "handle %.1f, rest %.1f, total %.1f; %lld of %lld tokens sampled over a subset of the vocabulary; "
               "compute graph reused %lld times\n",
               (long long)p.steps, (long long)p.tokens, p.decodeUs / n, p.syncUs / n, p.sampleUs / n, p.handleUs / n,
               rest / n, p.stepUs / n, (long long)p.sampledSubset, (long long)p.sampled,
               (long long)p.graphsReused);
}

void Engine::expectPrompts(int32_t delta) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    expected_ = std::max<int32_t>(0, expected_ + delta);
  }
  cv_.notify_all();
}

int32_t Engine::promptsExpected() {
  std::lock_guard<std::mutex> lock(mu_);
  return expected_;
}

void Engine::tuneThreads(int32_t maxThreads, int32_t maxThreadsBatch) {
  maxThreads_ = std::max(0, maxThreads);
  maxThreadsBatch_ = std::max(0, maxThreadsBatch);
  tuners_.resetAll();
}

Engine::~Engine() {
  stop();
  llama_batch_free(batch_);
  if (draftBatch_.token != nullptr) llama_batch_free(draftBatch_);
}

void Engine::start() {
  {
    std::lock_guard<std::mutex> lock(g_liveMu);
    g_live.erase(std::remove_if(g_live.begin(), g_live.end(), [](const std::weak_ptr<Engine>& w) { return w.expired(); }),
                 g_live.end());
    g_live.push_back(weak_from_this());
  }
  // The per-token work runs on a thread with a large stack (reserved, committed only as used): std::regex,
  // which matches the chat templates' tool-call trigger patterns over the output, recurses once per
  // character it consumes (about 200 bytes each), and a thread's usual 8 MiB overflowed at ~50,000.
  thread_ = std::thread([self = shared_from_this()] {
    bool ran = false;
    try {
      onLargeStack(kEngineStackBytes, [&] {
        ran = true;
        self->run();
      });
    } catch (...) {
    }
    if (!ran) self->run();  // no thread with that stack could be started: run here
  });
}

void Engine::submit(std::shared_ptr<GenState> gen) {
  gen->tQueued = nowUs();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      commands_.push_back(Command{Command::Generate, std::move(gen), nullptr});
      gen = nullptr;
    }
  }
  // Submitted after the engine stopped (a sampler built off the JS thread while the context was disposed).
  if (gen) {
    finish(*gen, "abort");
    return;
  }
  cv_.notify_one();
}

void Engine::fail(std::shared_ptr<GenState> gen, const std::string& code, const std::string& error) {
  finish(*gen, "error", code, error);
}

void Engine::post(std::function<void(llama_context*)> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      commands_.push_back(Command{Command::Task, nullptr, std::move(fn)});
      fn = nullptr;
    }
  }
  if (fn) {
    fn(nullptr);
    return;
  }
  cv_.notify_one();
}

void Engine::clearSequence(int32_t seq) {
  post([seq](llama_context* ctx) {
    if (ctx != nullptr) llama_memory_seq_rm(llama_get_memory(ctx), seq, -1, -1);
  });
}

void Engine::wake() {
  { std::lock_guard<std::mutex> lock(mu_); }
  cv_.notify_one();
}

namespace {
thread_local bool t_cuttingOff = false;
}  // namespace

bool cuttingOffStep() { return t_cuttingOff; }

Engine::DecodingFor::~DecodingFor() {
  gens.clear();
  t_cuttingOff = false;
}

bool Engine::abortStep(void* engine) {
  // Called by ggml's first compute thread, which is the engine thread itself (ggml_graph_compute runs it as
  // thread 0), or by Metal's encoders while the engine thread waits in llama_decode: stepGens_ does not
  // change while a decode runs, and the generations it points to live in active_ until after it.
  auto* self = static_cast<Engine*>(engine);
  bool cut = self->stopRequested_.load(std::memory_order_relaxed);
  if (!cut) {
    const std::atomic<bool>* task = self->taskCancel_.load(std::memory_order_relaxed);
    cut = task != nullptr && task->load(std::memory_order_relaxed);
  }
  if (!cut && !self->stepGens_.empty()) {  // a task's decode (beams, embeddings) ends only on stop or its abort
    cut = std::all_of(self->stepGens_.begin(), self->stepGens_.end(),
                      [](const GenState* g) { return g->aborted.load(std::memory_order_relaxed); });
  }
  if (cut) t_cuttingOff = true;  // (on the thread that will log about it; cleared after llama_decode)
  return cut;
}

void Engine::stop() {
  std::lock_guard<std::mutex> stopLock(stopMu_);
  if (stopped_) return;
  stopped_ = true;
  stopRequested_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  // Whatever never reached the loop ends here.
  for (auto& c : commands_) {
    if (c.kind == Command::Generate) finish(*c.gen, "abort");
    else c.task(nullptr);
  }
  commands_.clear();
  if (ctx_ != nullptr) {
    llama_free(ctx_);
    ctx_ = nullptr;
  }
  if (draftCtx_ != nullptr) {
    llama_free(draftCtx_);
    draftCtx_ = nullptr;
  }
  pools_.reset();
}

void Engine::unbatch(GenState& g) {
  if (g.hasNext) {
    g.cache.truncate(g.cache.size() - (size_t)g.inBatch);  // `next` and its drafts, added when batched
    g.drafts.clear();
  } else {
    g.promptPos -= (size_t)g.inBatch;
  }
  g.inBatch = 0;
  g.iBatch = -1;
}

bool Engine::makeRoom(GenState& g) {
  // llama.cpp's context shift, as JS asked for it: keep the first shiftKeep tokens, drop the next
  // shiftDiscard (at most all but the last), move the others back.
  // A cut never splits a media chunk: the kept prefix ends before one, the dropped part takes it whole.
  // The last position always stays.
  int32_t keep = (int32_t)g.cache.boundaryBefore((size_t)std::max(0, std::min(g.shiftKeep, g.nPast - 2)));
  int32_t end = (int32_t)g.cache.boundaryAfter((size_t)std::min(keep + std::max(0, g.shiftDiscard), g.nPast - 1));
  int32_t discard = end - keep;
  if (!canShift_ || discard <= 0 || end > g.nPast - 1) {
    finish(g, "contextFull");
    return false;
  }
  llama_memory_t mem = llama_get_memory(ctx_);
  llama_memory_seq_rm(mem, g.seq, keep, keep + discard);
  llama_memory_seq_add(mem, g.seq, keep + discard, g.nPast, -discard);
  g.cache.erase((size_t)keep, (size_t)(keep + discard));
  g.nPast -= discard;
  g.shiftedFrom = keep;
  g.building.discarded += discard;
  return true;
}

void Engine::arrangeBatch() {
  // With a KV stream per sequence, llama.cpp splits a batch into micro-batches (each a pass over the weights)
  // of sequences with consecutive ids that add the same number of rows (llama_batch_allocr::split_equal,
  // sequential): it scans the rows in order, so a sequence out of order, or one missing between two others,
  // starts another pass. Rows go in order of sequence (each sequence's own rows keep theirs), and a few
  // missing sequences get a placeholder row (a token at their next position, no output, removed after the
  // decode), so that one pass takes a row of every sequence of the step. 16 sequences generating on the 415M
  // model, two of them between turns: a step took 129-139 ms in two passes against 82-90 ms in one.
  const int32_t n = batch_.n_tokens;
  if (nStreams_ <= 1) return;
  std::vector<int32_t> rows(n);
  for (int32_t i = 0; i < n; i++) rows[i] = i;
  std::stable_sort(rows.begin(), rows.end(), [&](int32_t a, int32_t b) { return batch_.seq_id[a][0] < batch_.seq_id[b][0]; });
  // Placeholders only where they cost less than the passes they save: at most 3 rows per pass saved (on this
  // project's 2-core machine a pass of the 415M model costs about as much as 3 more rows; on a GPU a pass
  // costs far more), never in a full sequence, and only in models whose cells can be taken back exactly (not
  // recurrent state; not sliding-window layers, where a later position lets go of older cells that a shorter
  // next prompt could still need).
  std::vector<std::pair<llama_seq_id, llama_pos>> fill;
  if (placeholdersOk_) {
    std::vector<llama_seq_id> seqs;
    for (int32_t i : rows) {
      llama_seq_id q = batch_.seq_id[i][0];
      if (seqs.empty() || seqs.back() != q) seqs.push_back(q);
    }
    int32_t holes = seqs.back() - seqs.front() + 1 - (int32_t)seqs.size();
    int32_t runs = 1;  // runs of consecutive sequence ids: the passes the step's first rows take without
    for (size_t k = 1; k < seqs.size(); k++) runs += seqs[k] != seqs[k - 1] + 1 ? 1 : 0;
    if (holes > 0 && holes <= 3 * (runs - 1) && n + holes <= nBatch_) {
      llama_memory_t mem = llama_get_memory(ctx_);
      for (size_t k = 0; k + 1 < seqs.size(); k++) {
        for (llama_seq_id q = seqs[k] + 1; q < seqs[k + 1]; q++) {
          llama_pos at = llama_memory_seq_pos_max(mem, q) + 1;
          if (at + 1 >= nCtxSeq_) {
            fill.clear();
            k = seqs.size();
            break;
          }
          fill.emplace_back(q, at);
        }
      }
    }
  }
  bool sorted = fill.empty();
  for (int32_t i = 0; sorted && i < n; i++) sorted = rows[i] == i;
  if (sorted) return;
  struct Row {
    llama_token token;
    llama_pos pos;
    llama_seq_id seq;
    int8_t logits;
    int32_t from;  // its index before, or -1 for a placeholder
  };
  std::vector<Row> out;
  out.reserve((size_t)n + fill.size());
  size_t f = 0;
  for (int32_t i : rows) {
    llama_seq_id q = batch_.seq_id[i][0];
    for (; f < fill.size() && fill[f].first < q; f++) out.push_back({placeholderToken_, fill[f].second, fill[f].first, 0, -1});
    out.push_back({batch_.token[i], batch_.pos[i], q, batch_.logits[i], i});
  }
  std::vector<int32_t> moved((size_t)n, -1);
  batch_.n_tokens = 0;
  for (const Row& r : out) {
    int32_t at = batchAdd(batch_, r.token, r.pos, r.seq, r.logits != 0);
    if (r.from >= 0) moved[(size_t)r.from] = at;
  }
  for (auto& sp : active_) {
    if (sp->inBatch == 0) continue;
    if (sp->iBatch >= 0) sp->iBatch = moved[(size_t)sp->iBatch];
    if (sp->iFirst >= 0 && sp->hasNext) sp->iFirst = moved[(size_t)sp->iFirst];
  }
  placeholders_ = std::move(fill);
}

void Engine::dropPlaceholders() {
  if (placeholders_.empty()) return;
  llama_memory_t mem = llama_get_memory(ctx_);
  for (const auto& [q, at] : placeholders_) llama_memory_seq_rm(mem, q, at, -1);
  placeholders_.clear();
}

bool Engine::decodeMedia(GenState& g) {
  MediaChunk* m = g.prompt.mediaAt(g.promptPos);
  int32_t n = m->positions();
  int32_t ret;
  std::string failure;
  try {
    AbortGuard guard;
    ret = m->decode(ctx_, g.seq, g.nPast);
  } catch (const std::exception& e) {
    ret = -100;
    failure = e.what();
  }
  if (ret != 0) {
    llama_memory_seq_rm(llama_get_memory(ctx_), g.seq, g.nPast, -1);
    finish(g, ret == 1 ? "contextFull" : "error", ret == 1 ? "" : "ERR_DECODE",
           ret == 1 ? ""
                    : "the media chunk at position " + std::to_string(g.promptPos) + " did not decode: " +
                          (failure.empty() ? "status " + std::to_string(ret) : failure));
    return false;
  }
  g.promptPos += (size_t)n;
  g.nPast += n;
  g.shiftedFrom = -1;  // its llama_decode applied any pending shift
  return true;
}

// Why sampling failed: with a grammar, it left no token (after logitBias, say).
struct SamplingFailure {
  const char* code;
  std::string message;
};
// The sampler chose a token that the grammar and logitBias had set to -infinity: there was none to choose.
struct NoTokenAllowed : std::runtime_error {
  NoTokenAllowed() : std::runtime_error("every token's logit is -infinity") {}
};
static SamplingFailure samplingError(const GenState& g, const std::exception& e) {
  if (dynamic_cast<const GrammarStatesError*>(&e) != nullptr) return {"ERR_LIMIT_EXCEEDED", e.what()};
  if (auto* r = dynamic_cast<const GrammarRejectedText*>(&e); r != nullptr && g.grammarLazy) {
    return {"ERR_INVALID_GRAMMAR",
            "the lazy grammar does not accept the output from its trigger on: it rejected \"" + r->piece +
                "\" (a lazy grammar constrains the output from the start of what its trigger matched, a word's first "
                "character or a pattern's first group, so the grammar must begin with that text)"};
  }
  if (dynamic_cast<const NoTokenAllowed*>(&e) != nullptr) {
    return {"ERR_INVALID_GRAMMAR", "no token is allowed here by the grammar and logitBias: the grammar allows no token of this "
                                   "vocabulary after the text so far, or logitBias bans every one it allows"};
  }
  if (g.hasGrammar) return {"ERR_INVALID_GRAMMAR", std::string("no token is allowed here by the grammar and logitBias (") + e.what() + ")"};
  return {"ERR_NATIVE", std::string("sampling failed: ") + e.what()};
}

void Engine::applyLora(const LoraSet& set) {
  if (set == currentLora_) return;
  std::vector<llama_adapter_lora*> adapters;
  std::vector<float> scales;
  for (const auto& [a, sc] : set) {
    adapters.push_back(a);
    scales.push_back(sc);
  }
  if (llama_set_adapters_lora(ctx_, adapters.data(), adapters.size(), scales.data()) != 0) {
    throw std::runtime_error("llama.cpp could not apply the LoRA adapters");
  }
  currentLora_ = set;
}

bool Engine::runnable(GenState& g) {
  if (g.aborted.load()) return true;
  std::lock_guard<std::mutex> lock(g.mu);
  return !g.full();
}

void Engine::startGeneration(const std::shared_ptr<GenState>& g) {
  llama_memory_t mem = llama_get_memory(ctx_);
  int32_t n = (int32_t)g->prompt.size();
  if (n == 0 || g->prompt[(size_t)n - 1] == LLAMA_TOKEN_NULL) {
    // Its last position's logits choose the first token: a media chunk's decode leaves none to sample.
    finish(*g, "error", "ERR_INVALID_ARGUMENT", n == 0 ? "the prompt is empty" : "the prompt ends with a media chunk; it must end with text");
    return;
  }
  if (g->discardCount > 0) {
    // JS planned a context shift for this prompt: the cache holds the tokens it was planned against.
    if (canShift_ && llama_memory_seq_pos_max(mem, g->seq) + 1 >= g->discardAt + g->discardCount) {
      llama_memory_seq_rm(mem, g->seq, g->discardAt, g->discardAt + g->discardCount);
      llama_memory_seq_add(mem, g->seq, g->discardAt + g->discardCount, -1, -g->discardCount);
      g->shiftedFrom = g->discardAt;  // moved cells are rotated by the next decode
    } else {
      g->keep = std::min(g->keep, g->discardAt);
    }
  }
  // The last token must be decoded again for its logits, even when everything is cached.
  // Never trust `keep` beyond what the cache really holds for the sequence, nor inside a media chunk.
  llama_pos held = llama_memory_seq_pos_max(mem, g->seq) + 1;
  g->keep = (int32_t)g->prompt.boundaryBefore((size_t)std::max(0, std::min({g->keep, n - 1, (int32_t)held})));
  if (!llama_memory_seq_rm(mem, g->seq, g->keep, -1)) {
    // Partial removal is not possible for every model (recurrent state): start the sequence afresh.
    llama_memory_seq_rm(mem, g->seq, -1, -1);
    g->keep = 0;
  }
  if (g->keep > 0 && nSwa_ > 0 && llama_memory_seq_pos_min(mem, g->seq) > std::max(0, g->keep - nSwa_)) {
    // Sliding-window layers no longer hold the cells the kept tokens' successors attend to.
    llama_memory_seq_rm(mem, g->seq, -1, -1);
    g->keep = 0;
  }
  g->cache = g->prompt;
  if (g->prompt.hasMedia()) g->draftMax = 0;  // drafts read the cache as tokens (speculative.cpp)
  g->promptPos = (size_t)g->keep;
  g->nPast = g->keep;
  g->tStart = nowUs();
  g->building.promptTokens = n;
  g->building.evaluatedTokens = n - g->keep;
  if (g->acceptPrompt) {
    for (llama_token t : g->prompt.tokens()) {
      if (t == LLAMA_TOKEN_NULL) continue;  // inside a media chunk
      common_sampler_accept(g->sampler, t, false);
      g->candidates.accept(t);
    }
  }
  active_.push_back(g);
}

void Engine::push(GenState& g, Chunk&& c) {
  if (!g.stream) return;  // nobody reads chunks: the text is in the result, and JS is woken only at the end
  bool notify = false;
  {
    std::lock_guard<std::mutex> lock(g.mu);
    enqueue(g, std::move(c));
    if (!g.notifyPending) {
      int64_t now = nowUs();
      if (now - g.lastNotifyUs >= kNotifyIntervalUs) {
        g.notifyPending = true;
        g.deferredNotify = false;
        g.lastNotifyUs = now;
        notify = true;
      } else {
        g.deferredNotify = true;
      }
    }
    if (g.full() && !g.pauseNotified) {  // tell JS the generation now waits for its consumer
      g.pauseNotified = true;
      notify = true;
    }
    // JS is woken once the step's tokens are all handled (flushDeferredNotifications): a wake-up here would
    // let the JS thread take this core in the middle of the step's handling, for each generation in turn.
    if (notify) g.notifyAtStepEnd = true;
  }
}

void Engine::flushDeferredNotifications() {
  bool anyRunnable = false;
  for (auto& g : active_) anyRunnable = anyRunnable || runnable(*g);
  int64_t now = nowUs();
  for (auto& sp : active_) {
    GenState& g = *sp;
    std::lock_guard<std::mutex> lock(g.mu);
    // What push() decided on during the step, sent first, as push() once sent it.
    if (g.notifyAtStepEnd && !g.done) notifySink(g);
    g.notifyAtStepEnd = false;
    // Flush when the interval has passed, or when the engine is about to sleep.
    if (g.deferredNotify && !g.notifyPending && !g.done && (!anyRunnable || now - g.lastNotifyUs >= kNotifyIntervalUs)) {
      g.deferredNotify = false;
      g.notifyPending = true;
      g.lastNotifyUs = now;
      notifySink(g);
    }
  }
}

void Engine::finish(GenState& g, const char* reason, const std::string& code, const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(g.mu);
    if (g.done) return;
  }
  GenResult& r = g.building;
  bool stopped = std::string(reason) == "stop";
  if (!stopped && (!g.pending.empty() || !g.pendingTokens.empty())) {
    r.text += g.pending;
  }
  if (!stopped && g.stream && (!g.pending.empty() || !g.pendingTokens.empty())) {
    Chunk c{std::move(g.pending), std::move(g.pendingTokens), std::move(g.pendingProbs)};
    g.pending.clear();
    g.pendingTokens.clear();
    g.pendingProbs.clear();
    std::lock_guard<std::mutex> lock(g.mu);
    enqueue(g, std::move(c));
  }
  int64_t tEnd = nowUs();
  r.stopReason = reason;
  r.errorCode = code;
  r.error = error;
  if (g.shiftedFrom >= 0 && ctx_ != nullptr) {
    // Cells moved by a shift that no decode has applied yet hold keys for their old positions: drop them,
    // so that nothing saves or copies them.
    llama_memory_seq_rm(llama_get_memory(ctx_), g.seq, g.shiftedFrom, -1);
    g.nPast = std::min(g.nPast, g.shiftedFrom);
  }
  g.cache.truncate(std::min(g.cache.size(), (size_t)std::max(0, g.nPast)));
  r.sequence = g.cache.tokens();
  if (g.evict && ctx_ != nullptr) {
    // The sequence's cells go to host memory with the result (`sequence` says what they hold), and leave
    // the KV cache. A state that cannot be copied is dropped: the session decodes its tokens again.
    r.evicted = true;
    size_t size = llama_state_seq_get_size(ctx_, g.seq);
    r.evictedState.resize(size);
    if (size == 0 || llama_state_seq_get_data(ctx_, r.evictedState.data(), size, g.seq) != size) r.evictedState.clear();
    llama_memory_seq_rm(llama_get_memory(ctx_), g.seq, -1, -1);
  }
  r.started = g.tStart != 0;
  if (g.tStart == 0) g.tStart = tEnd;
  int64_t tFirst = g.tFirst != 0 ? g.tFirst : tEnd;
  r.promptMs = (double)(tFirst - g.tStart) / 1000.0;
  r.generateMs = (double)(tEnd - tFirst) / 1000.0;
  r.timeToFirstTokenMs = g.tFirst != 0 ? (double)(g.tFirst - g.tQueued) / 1000.0 : 0.0;
  std::lock_guard<std::mutex> lock(g.mu);
  g.result = std::move(r);
  g.done = true;
  notifySink(g);
  if (g.sink && !g_exiting.load()) g.sink->release(g);
}

void Engine::handleToken(GenState& g, llama_token t, int32_t iBatch) {
  const llama_vocab* vocab = model_->vocab;
  if (g.tFirst == 0) g.tFirst = nowUs();
  if (llama_vocab_is_eog(vocab, t)) {
    finish(g, "eog");
    return;
  }
  g.building.tokens.push_back(t);
  g.pendingTokens.push_back(t);
  if (g.logprobs >= 0) {
    TokenProb p = tokenProb(ctx_, vocab, iBatch, t, g.logprobs);
    g.building.probs.push_back(p);
    g.pendingProbs.push_back(std::move(p));
  }
  g.pending += tokenPiece(vocab, t, std::binary_search(g.preserved.begin(), g.preserved.end(), t));

  // A stop string anywhere in the held-back text ends the generation; the text before it is emitted.
  size_t stopAt = std::string::npos;
  for (const auto& s : g.stops) {
    size_t p = g.pending.find(s);
    if (p < stopAt) stopAt = p;
  }
  if (stopAt != std::string::npos) {
    Chunk c{g.pending.substr(0, stopAt), std::move(g.pendingTokens), std::move(g.pendingProbs)};
    g.building.text += c.text;
    g.pending.clear();
    g.pendingTokens.clear();
    g.pendingProbs.clear();
    push(g, std::move(c));
    finish(g, "stop");
    return;
  }
  size_t cut = utf8Boundary(g.pending, g.pending.size() - stopPrefixSuffix(g.pending, g.stops));
  if (cut > 0) {
    Chunk c{g.pending.substr(0, cut), std::move(g.pendingTokens), std::move(g.pendingProbs)};
    g.pending.erase(0, cut);
    g.pendingTokens.clear();
    g.pendingProbs.clear();
    g.building.text += c.text;
    push(g, std::move(c));
  }
  if ((int32_t)g.building.tokens.size() >= g.maxTokens) {
    finish(g, "maxTokens");
  } else if (g.nPast >= nCtxSeq_ && !(canShift_ && g.shiftDiscard > 0 && g.nPast - g.shiftKeep >= 2)) {
    finish(g, "contextFull");
  } else {
    g.hasNext = true;
    g.next = t;
  }
}

void Engine::run() {
  {
    // The threads whose waits the tuners read: this one (ggml's first) and the pools' (none known: all).
    std::vector<int> watched = pools_ ? pools_->workerThreads() : std::vector<int>{};
    if (!watched.empty()) watched.push_back(RunQueueMeter::currentThread());
    waits_.watch(watched);
  }
  for (;;) {
    try {
      if (!step()) break;
      flushDeferredNotifications();
      stepEndUs_ = nowUs();
    } catch (const std::exception& e) {
      // Nothing may escape the engine thread: end what is running with the error and go on.
      for (auto& g : active_) finish(*g, "error", "ERR_NATIVE", std::string("engine error: ") + e.what());
      active_.clear();
    } catch (...) {
      for (auto& g : active_) finish(*g, "error", "ERR_NATIVE", "engine error: unknown native error");
      active_.clear();
    }
  }
  // Stopping: end every generation still running.
  for (auto& g : active_) finish(*g, "abort");
  active_.clear();
  if (profile_.on && ctx_ != nullptr) profile_.graphsReused = llama_perf_context(ctx_).n_reused;
  printProfile();
}

bool Engine::step() {
  llama_memory_t mem = llama_get_memory(ctx_);
  std::shared_lock<std::shared_mutex> adapters(model_->adaptersMu, std::defer_lock);
  {
    std::deque<Command> commands;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        if (stopping_ || !commands_.empty()) return true;
        for (auto& g : active_) {
          if (runnable(*g)) return true;
        }
        return false;
      });
      if (stopping_) return false;
      // Prompts that arrive together (a burst of clients) are best decoded together: then they generate
      // in step, a row each in one pass, and their next turns arrive together too, where one that starts a
      // step ahead of the others leaves them passes of their own at the end. Requests reach the engine a
      // millisecond or so apart (each is parsed, templated and tokenized in turn: 16 clients' burst spread
      // over 16 ms), so an engine that had nothing to run waits for more while they come: up to 0.5% of what
      // the generations that came will take together at the pace of recent steps (their new prompt tokens,
      // then up to 32 steps of generation together: many end sooner than their maxTokens), counted from the
      // first one's arrival or from the end of the last step, whichever is later (the next turns of clients
      // whose answers ended in one step arrive while the engine is still busy with the next, and reached it
      // a step apart), 20 ms at most, and none under 1 ms (a request to a tiny model does not wait). The
      // wait ends as soon as their prompts fill a batch, and at an abort or a stop. (It does not end when
      // they seem to stop coming: the first of a burst came alone, 7 to 9 ms before the others, in 2 of 6
      // turns of 4 clients, and a quiet time of 6 ms cut them apart.) Where 4 waits in a row found no
      // company, there is none, until a prompt comes within the window the last one would have had.
      bool idle = std::none_of(active_.begin(), active_.end(), [&](const std::shared_ptr<GenState>& g) { return runnable(*g); });
      if (missWindowEnd_ != 0) {
        // A prompt that came within the window the last wait would have had, were it not cut: a burst (the
        // first of 4 clients' turns went alone, and the others came 1-10 ms later): the full wait is back.
        for (const Command& c : commands_) {
          if (c.kind == Command::Generate && c.gen->tQueued <= missWindowEnd_) gatherAlone_ = 0;
        }
        if (nowUs() > missWindowEnd_) missWindowEnd_ = 0;
      }
      // (A prompt token's pace is known after a step with 8 prompt tokens or more; until then, and for
      // traffic of short prompts only, what the generations will take is counted alone.)
      double gatherFullUs = 0;
      int64_t gatherFirst = INT64_MAX;
      const bool cutAlone = gatherAlone_ >= kGatherAloneRuns;
      if (idle && genStepUs_ > 0) {
        for (;;) {
          double promptUs = 0, genUs = 0;
          int64_t first = INT64_MAX, promptTokens = 0;
          bool abort = false;
          for (const Command& c : commands_) {
            if (c.kind != Command::Generate) continue;
            int64_t fresh = std::max<int64_t>(0, (int64_t)c.gen->prompt.size() - std::max(0, c.gen->keep));
            promptUs += (double)fresh * promptTokenUs_;
            genUs = std::max(genUs, (double)std::clamp(c.gen->maxTokens, 0, kGatherTokens) * genStepUs_);
            promptTokens += fresh;
            first = std::min(first, c.gen->tQueued);
            abort = abort || c.gen->aborted.load();
          }
          double waitUs = std::min(kGatherMaxUs, 0.005 * (promptUs + genUs));
          gatherFullUs = std::max(gatherFullUs, waitUs);
          gatherFirst = first;
          // Prompts that kept coming alone (one client, or requests far apart): a wait of 1 ms, until one
          // misses the step of another (see below). A lone client's every request waited its window in vain
          // (7 ms of its 0.9 s TTFT on the 415M model; 20 ms on larger ones); with no wait at all, a burst
          // of prompts submitted 0.3 ms apart after lone ones was split in 2 of 4 tries (a hostile review).
          // Prompts known to be on their way are still waited for (below).
          if (cutAlone) waitUs = std::min(waitUs, kGatherAloneUs);
          // Prompts on their way (expectPrompts(): requests that have arrived and are being prepared) are
          // waited for longer, up to 5% of that work and kGatherExpectedUs from the first one's arrival: they
          // are coming, and the wait ends when they do. Without them, 4 clients' second turns, which reach
          // the server within a millisecond, went to the engine 5-9 ms apart (each parsed, rendered and
          // tokenized in turn) and were split in 2 of 3 rounds (40 tokens, then 120: 762-820 ms against
          // 700 for all 160 in one step).
          int32_t expecting = expected_;
          double expectedUs = expecting > 0 ? std::min(kGatherExpectedUs, 0.05 * (promptUs + genUs)) : 0;
          if (expectedUs < 1000) expectedUs = 0;
          if (abort || first == INT64_MAX || (waitUs < 1000 && expectedUs == 0) || promptTokens >= nBatch_) break;
          int64_t until = waitUs < 1000 ? first : (cutAlone ? first : std::max(first, stepEndUs_)) + (int64_t)waitUs;
          until = std::max(until, first + (int64_t)expectedUs);
          int64_t left = until - nowUs();
          if (left <= 0) break;
          size_t seen = commands_.size();
          // Woken by the next arrival, an abort (Generation::Abort wakes the engine) or a stop, then counted
          // again. (Without the abort in the condition, an AbortSignal's abort waited out the window: a
          // hostile review.)
          auto anyAborted = [&] {
            return std::any_of(commands_.begin(), commands_.end(),
                               [](const Command& c) { return c.kind == Command::Generate && c.gen->aborted.load(); });
          };
          cv_.wait_for(lock, std::chrono::microseconds(left), [&] {
            return stopping_ || commands_.size() != seen || anyAborted() || expected_ != expecting;
          });
          if (stopping_) return false;
          if (commands_.size() == seen && expected_ == expecting) break;  // the time is up, or an abort
        }
        // Whether this wait found company, and what it would have waited, to tell whether a prompt that
        // comes later would have joined it.
        if (gatherFirst != INT64_MAX) {
          int generations = (int)std::count_if(commands_.begin(), commands_.end(), [](const Command& c) { return c.kind == Command::Generate; });
          if (profile_.perStep) {
            // LLAMA_ADDON_PROFILE=steps: how long the engine waited for prompts arriving together, for how many.
            std::fprintf(stderr, "llama-addon gather: %d prompts, waited %.1f ms of a window of %.1f ms%s\n", generations,
                         (double)(nowUs() - gatherFirst) / 1000.0, gatherFullUs / 1000.0,
                         cutAlone ? " (cut to 1 ms: prompts came alone)" : "");
          }
          gatherAlone_ = generations > 1 ? 0 : std::min(gatherAlone_ + 1, kGatherAloneRuns);
          missWindowEnd_ = gatherFirst + (int64_t)gatherFullUs;
        }
      }
      commands.swap(commands_);
    }
    int64_t stepStart = profile_.on ? nowUs() : 0;
    adapters.lock();  // not while waiting: an adapter may load meanwhile
    for (auto& c : commands) {
      // Each command settles whatever happens, or its caller would wait forever.
      try {
        if (c.kind == Command::Task) {
          c.task(ctx_);
        } else if (c.gen->aborted.load()) {
          finish(*c.gen, "abort");
        } else {
          startGeneration(c.gen);
        }
      } catch (const std::exception& e) {
        if (c.kind == Command::Generate) {
          active_.erase(std::remove(active_.begin(), active_.end(), c.gen), active_.end());
          llama_memory_seq_rm(mem, c.gen->seq, -1, -1);
          finish(*c.gen, "error", "ERR_NATIVE", std::string("could not start: ") + e.what());
        }
      } catch (...) {
        if (c.kind == Command::Generate) {
          active_.erase(std::remove(active_.begin(), active_.end(), c.gen), active_.end());
          llama_memory_seq_rm(mem, c.gen->seq, -1, -1);
          finish(*c.gen, "error", "ERR_NATIVE", "could not start: unknown native error");
        }
      }
    }

    // Drop aborted generations; fill one batch: running generations first, then prompt chunks.
    for (auto it = active_.begin(); it != active_.end();) {
      if ((*it)->aborted.load()) {
        finish(**it, "abort");
        it = active_.erase(it);
      } else {
        ++it;
      }
    }
    if (active_.empty()) return true;
    auto dropFinished = [&] {
      active_.erase(std::remove_if(active_.begin(), active_.end(),
                                   [](const std::shared_ptr<GenState>& g) {
                                     std::lock_guard<std::mutex> lock(g->mu);
                                     return g->done;
                                   }),
                    active_.end());
    };
    batch_.n_tokens = 0;
    auto add = [&](GenState& g, llama_token t, bool logits) {
      int32_t i = batchAdd(batch_, t, g.nPast + g.inBatch, g.seq, logits);
      g.inBatch++;
      if (logits) g.iBatch = i;
    };
    size_t n = active_.size();
    rr_ = (rr_ + 1) % n;
    std::vector<GenState*> order;
    order.reserve(n);
    for (size_t k = 0; k < n; k++) {
      GenState* g = active_[(rr_ + k) % n].get();
      g->iBatch = -1;
      g->inBatch = 0;
      if (runnable(*g)) order.push_back(g);
    }
    // Higher priority first; equal priorities take turns (the rotation above).
    std::stable_sort(order.begin(), order.end(), [](const GenState* a, const GenState* b) { return a->priority > b->priority; });
    // One batch decodes with one set of LoRA adapters: the first request's, and the others wait their turn.
    // Switching sets costs llama.cpp a new reservation, so the current set runs a few steps in a row first.
    if (!order.empty()) {
      LoraSet set = order.front()->lora;
      bool currentWaits = std::any_of(order.begin(), order.end(), [&](const GenState* g) { return g->lora == currentLora_; });
      if (set != currentLora_ && currentWaits && loraRun_ < 16) set = currentLora_;
      loraRun_ = set == currentLora_ ? loraRun_ + 1 : 0;
      order.erase(std::remove_if(order.begin(), order.end(), [&](const GenState* g) { return g->lora != set; }), order.end());
      try {
        applyLora(set);
      } catch (const std::exception& e) {
        for (GenState* g : order) finish(*g, "error", "ERR_INVALID_ADAPTER", e.what());
        dropFinished();
        return true;
      }
    }
    bool generating = false;
    // The next tokens of running generations: who gets a place follows the order above; within the batch
    // they go by sequence id, since llama.cpp splits a batch whose sequences come out of order (one KV stream
    // per sequence) into several micro-batches, each a pass over the weights.
    std::vector<GenState*> next;
    for (GenState* g : order) {
      if (g->hasNext && (int32_t)next.size() < nBatch_) next.push_back(g);
    }
    std::sort(next.begin(), next.end(), [](const GenState* a, const GenState* b) { return a->seq < b->seq; });
    if (next.empty()) {
      generatingSince_ = INT64_MAX;
    } else if (generatingSince_ == INT64_MAX) {
      for (const GenState* g : next) generatingSince_ = std::min(generatingSince_, g->tFirst);
    }
    const int64_t firstTokenAt = generatingSince_;
    // Prompts that were waiting before the engine's current run of generating steps began (its first token)
    // came with those generations: a burst of clients cut by the batch size (below). The others came later.
    int64_t waitingPrompts = 0, burstPrompts = 0, burstRest = 0, waitingChunks = 0;
    bool burstMedia = false;  // a media chunk decodes on its own: the burst's rest may not go in one step
    for (GenState* g : order) {
      if (g->hasNext || g->promptPos >= g->prompt.size()) continue;
      if (g->tQueued < firstTokenAt) {
        burstPrompts++;
        burstRest += (int64_t)(g->prompt.size() - g->promptPos);
        burstMedia = burstMedia || g->prompt.hasMedia();
      } else {
        waitingPrompts++;
        waitingChunks += std::min<int64_t>((int64_t)(g->prompt.size() - g->promptPos), promptChunk_);
      }
    }
    // A burst whose rest is decoded whole in this step (below) decodes it alone: the generations that came
    // with it, started a step ahead, wait for it, and from the next step they all generate in step. (With a
    // row of each beside it, one KV stream per sequence made llama.cpp split the step into more passes over
    // the weights: micro-batches hold as many tokens of each of a run of sequences, and a generation's one
    // token made a pass of one token a sequence. And those that started ahead ended a step ahead, a tail
    // step of their own, and their clients' next turns came a step apart: 16 clients on the 415M model.)
    // They lose a step: that step takes the burst's prompts' time either way (it is made as if they
    // generated in it: prompts that came later take their chunks, not more), and their next token comes
    // from the step after it. A generation waits so once at most, and only where the rest fits beside the
    // later generations' rows, drafts included, and the chunks of the prompts that came later (which may
    // go first, by priority). (Waits that repeated while a prompt of a higher priority, or drafts, took
    // the step kept a generation out for seconds; a hostile review.) The later ones go first below.
    const size_t firstOfBurst = (size_t)(std::stable_partition(next.begin(), next.end(), [&](const GenState* g) {
                                           return g->tQueued >= firstTokenAt || g->heldOnce;
                                         }) - next.begin());
    bool held = false;
    for (size_t gi = 0; gi < next.size(); gi++) {
      if (gi == firstOfBurst && burstPrompts > 0 && !burstMedia &&
          burstRest <= std::min<int64_t>((int64_t)nBatch_ - batch_.n_tokens - waitingChunks, (int64_t)nUbatch_ * burstPrompts)) {
        for (size_t k = gi; k < next.size(); k++) next[k]->heldOnce = true;
        held = true;
        break;
      }
      GenState* g = next[gi];
      if (batch_.n_tokens < nBatch_) {
        if (g->nPast >= nCtxSeq_ && !makeRoom(*g)) continue;
        g->drafts.clear();
        if (g->draftMax > 0) {
          // Leave a place for every generation still to come in this step.
          int32_t waiting = (int32_t)(next.size() - gi - 1);
          int32_t room = std::min({g->draftMax, nBatch_ - batch_.n_tokens - 1 - waiting, nCtxSeq_ - g->nPast - 1,
                                   g->maxTokens - (int32_t)g->building.tokens.size() - 1});
          if (room > 0) makeDraft(*g, room);
        }
        g->cache.pushText(g->next);
        add(*g, g->next, true);
        g->iFirst = g->iBatch;
        for (llama_token d : g->drafts) {
          g->cache.pushText(d);
          add(*g, d, true);
        }
        generating = true;
      }
    }
    generating = generating || held;
    // New prompts are decoded in chunks while others generate, so that they do not stall them for long: a
    // chunk per prompt waiting, up to the batch size. (One chunk per step for all of them made prompts that
    // arrive while others generate wait for each other: 16 clients of the server, 200-token prompts, on the
    // 415M model: time to first token p50 15 s against llama-server's 7.7 s, which fills whole batches.)
    // Where the rest of a burst (above) fits this step (the batch, and a
    // micro-batch each, as with nothing generating), it is decoded whole, so that the burst generates in
    // step: cut into 128-token chunks, the 16 prompts of 16 clients on the 415M model finished over 5
    // steps, and their answers, and so their next turns, ended over 5 steps too. Where it does not fit (a
    // long prompt that came with a short one), they are chunked as any prompt, so that the generations
    // that started go on meanwhile, a token a chunk, rather than a token every 512 prompt tokens.
    // (Not the first tokens of the generations running now: a prompt that came while another generated was
    // taken for part of a burst once that one had ended, and decoded whole beside a later one; a hostile
    // review.)
    bool burstFits = burstPrompts > 0 && burstRest <= std::min<int64_t>((int64_t)nBatch_ - batch_.n_tokens, (int64_t)nUbatch_ * burstPrompts);
    // With nothing generating, a micro-batch per waiting prompt: prompts that arrive together fit one step,
    // while a prompt alone takes steps of one micro-batch, which are as fast per token, so that an abort or
    // a new request waits for one of those rather than for a whole batch (a 2,000-token prompt of the 415M
    // model with batchSize 2048: an abort settled after 10.7 s, against 1.8 s; found by a hostile review).
    int32_t promptLimit =
        generating ? (int32_t)std::min<int64_t>(nBatch_, (int64_t)batch_.n_tokens + (int64_t)promptChunk_ * waitingPrompts +
                                                             (burstFits ? burstRest : (int64_t)promptChunk_ * burstPrompts))
                   : (int32_t)std::min<int64_t>(nBatch_, (int64_t)nUbatch_ * std::max<int64_t>(1, waitingPrompts + burstPrompts));
    const int32_t genRows = batch_.n_tokens;
    // Prompts take their places first come, first served (within a priority): a prompt cut at the end of
    // one step finishes first in the next, and prompts that arrived together finish together, so that they
    // generate in step. (Taking turns left a prompt cut after 88 of 245 tokens waiting while 5 that came
    // after it were decoded whole: 16 clients on the 415M model.) While others generate, each takes at most
    // promptChunkSize tokens (a burst that fits, its rest) before those after it take theirs, then what is
    // left of the step's share goes first come, first served too: a short prompt that came just after a long
    // one is not kept waiting for all of it (1,800 tokens ahead of 10: the 10 waited 1.7 s; a hostile review).
    std::vector<GenState*> prompts;
    for (GenState* g : order) {
      if (!g->hasNext && g->promptPos < g->prompt.size()) prompts.push_back(g);
    }
    std::stable_sort(prompts.begin(), prompts.end(), [](const GenState* a, const GenState* b) {
      return a->priority != b->priority ? a->priority > b->priority : a->tQueued < b->tQueued;
    });
    std::vector<int64_t> share(prompts.size(), 0);
    int64_t budget = std::max<int64_t>(0, (int64_t)promptLimit - batch_.n_tokens);
    for (size_t i = 0; i < prompts.size(); i++) {
      const GenState* g = prompts[i];
      int64_t rest = (int64_t)(g->prompt.size() - g->promptPos);
      int64_t cap = !generating || (burstFits && g->tQueued < firstTokenAt) ? rest : std::min<int64_t>(rest, promptChunk_);
      share[i] = std::min(cap, budget);
      budget -= share[i];
    }
    for (size_t i = 0; i < prompts.size() && budget > 0; i++) {
      int64_t more = std::min((int64_t)(prompts[i]->prompt.size() - prompts[i]->promptPos) - share[i], budget);
      share[i] += more;
      budget -= more;
    }
    for (size_t i = 0; i < prompts.size(); i++) {
      GenState* g = prompts[i];
      for (int64_t added = 0; added < share[i] && !g->hasNext && g->promptPos < g->prompt.size() && batch_.n_tokens < promptLimit;) {
        if (g->prompt.mediaAt(g->promptPos) != nullptr) {
          // A media chunk decodes on its own, after the text before it: that text is decoded first.
          if (g->inBatch > 0 || !decodeMedia(*g)) break;
          continue;
        }
        bool last = g->promptPos + 1 == g->prompt.size();
        add(*g, g->prompt[g->promptPos], last);
        g->promptPos++;
        added++;
      }
    }
    const int32_t promptRows = batch_.n_tokens - genRows;
    if (batch_.n_tokens > 0) arrangeBatch();
    if (batch_.n_tokens == 0) {
      dropFinished();  // a generation may have ended because its sequence is full
      return true;
    }

    // threads: 'auto': this kind of step's tuner picks the count (llama.cpp uses n_threads for steps of one
    // token and n_threads_batch for larger ones).
    int32_t nTokens = batch_.n_tokens - (int32_t)placeholders_.size();  // the rows of generations
    bool single = nTokens == 1;
    int32_t maxForShape = single ? maxThreads_ : maxThreadsBatch_;
    ThreadTuner* tuner = nullptr;
    if (maxForShape > 0) {
      int from = -1;
      waits_.sample();
      tuner = &tuners_.forStep(nTokens, maxForShape, waits_.idleCores(), &from);
      if (profile_.perStep && from >= 0) {
        std::fprintf(stderr, "llama-addon tuner: shape %d starts %s%d\n", ThreadTuners::shapeOf(nTokens),
                     from > 0 ? "from shape " : "fresh at ", from > 0 ? from : maxForShape);
      }
    }
    int32_t threads = 0;
    if (tuner != nullptr) {
      threads = tuner->choose(waits_.waits(), waits_.sustained(), waits_.idleCores());
      int32_t tg = single ? threads : tgNow_.load();
      int32_t pp = single ? ppNow_.load() : threads;
      if (tg != llama_n_threads(ctx_) || pp != llama_n_threads_batch(ctx_)) llama_set_n_threads(ctx_, tg, pp);
      tgNow_ = tg;
      ppNow_ = pp;
    }
    // After a follow (native/thread_tuner.h), the machine's idle cores over this step say whether it stands.
    double idleBefore = -1;
    if (tuner != nullptr && tuner->following() && !RunQueueMeter::readIdle(idleBefore)) idleBefore = -1;
    auto decodeStart = std::chrono::steady_clock::now();
    int32_t ret;
    std::string failure;
    {
      stepGens_.clear();
      for (auto& sp : active_) {
        if (sp->inBatch > 0) stepGens_.push_back(sp.get());
      }
      DecodingFor decoding{stepGens_};
      try {
        AbortGuard guard;
        ret = llama_decode(ctx_, batch_);
      } catch (const std::exception& e) {
        ret = -100;
        failure = e.what();
      }
    }
    const double decodeSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - decodeStart).count();
    dropPlaceholders();
    if (ret == 0 && (promptRows >= kLargeStep || promptRows == 0 || (promptTokenUs_ == 0 && promptRows >= 8))) {
      // The pace the wait for prompts arriving together is sized by: a token of a step with a large prompt
      // chunk, and a step of generations alone, however many (a short prompt's step took 3x a token's on
      // stories260k and counted as one; 32 generations' step is no prompt token's pace either). Until a large
      // chunk has come, a step of 8 prompt tokens or more gives a first guess, on the high side (a server's
      // first burst of clients after a short warm-up found no pace, and waited for generations only: 2.7 ms).
      double us = decodeSeconds * 1e6;
      double& avg = promptRows > 0 ? promptTokenUs_ : genStepUs_;
      if (promptRows > 0) us /= nTokens;
      avg = avg > 0 ? 0.7 * avg + 0.3 * us : us;
    }
    if (tuner != nullptr && tuner->following()) {
      double idleAfter = -1;
      bool known = idleBefore >= 0 && RunQueueMeter::readIdle(idleAfter) && idleAfter >= idleBefore && decodeSeconds > 0;
      tuner->verifyFollow(known ? (idleAfter - idleBefore) / decodeSeconds : -1, ret == 0 ? decodeSeconds : 0);
    }
    if (tuner != nullptr && ret == 0) {
      tuner->record(threads, ThreadTuners::costOf(nTokens, decodeSeconds), decodeSeconds);  // (per token within a size class)
    }
    int64_t tSample = 0, tHandle = 0;
    if (profile_.on) {
      int64_t t0 = nowUs();
      profile_.decodeUs += t0 - std::chrono::duration_cast<std::chrono::microseconds>(decodeStart.time_since_epoch()).count();
      if (ret == 0) llama_synchronize(ctx_);
      profile_.syncUs += nowUs() - t0;
    }
    if (profile_.perStep) {
      // LLAMA_ADDON_PROFILE=steps: each step's rows as runs of one sequence (seq x tokens), its threads (the
      // tuner's choice, or the fixed count), its decode time, and the run-queue waits and idle cores the
      // tuners see (-1: unknown, and not read with fixed threads).
      std::string rows;
      for (int32_t i = 0; i < batch_.n_tokens;) {
        int32_t j = i;
        while (j < batch_.n_tokens && batch_.seq_id[j][0] == batch_.seq_id[i][0]) j++;
        rows += " " + std::to_string(batch_.seq_id[i][0]) + "x" + std::to_string(j - i);
        i = j;
      }
      int shown = threads != 0 ? threads : (single ? (int)llama_n_threads(ctx_) : (int)llama_n_threads_batch(ctx_));
      std::fprintf(stderr, "llama-addon step: %d tokens, %d threads, %.1f ms%s, run-queue waits %.3f, idle cores %.2f:%s\n",
                   nTokens, shown, decodeSeconds * 1e3, ret == 2 ? " (aborted)" : "", waits_.waits(), waits_.idleCores(),
                   rows.c_str());
    }
    if (ret == 1) {
      // No room in the KV cache for this batch (llama.cpp wrote nothing). With one buffer for all sequences
      // (kvUnified) the others' cells fill it: the generation that put the most tokens in the batch ends
      // with contextFull, and the others are taken back out of the batch and go on at the next step.
      // Its cells would stay its session's cache and go on filling the buffer, so that the next to outgrow it
      // would end too: while others go on, they move to host memory with the result (JS keeps them within
      // cacheRamBytes, lib/core/residency.ts) and the sequence is emptied.
      GenState* largest = nullptr;
      for (auto& sp : active_) {
        if (sp->inBatch > 0 && (largest == nullptr || sp->inBatch > largest->inBatch ||
                                (sp->inBatch == largest->inBatch && sp->nPast > largest->nPast))) {
          largest = sp.get();
        }
      }
      bool othersGoOn = std::any_of(active_.begin(), active_.end(), [&](const std::shared_ptr<GenState>& sp) {
        if (sp.get() == largest) return false;
        std::lock_guard<std::mutex> lock(sp->mu);
        return !sp->done;
      });
      for (auto& sp : active_) {
        GenState& g = *sp;
        if (g.inBatch == 0) continue;
        if (&g == largest) {
          llama_memory_seq_rm(mem, g.seq, g.nPast, -1);
          g.evict = sharedCells_ && othersGoOn;
          finish(g, "contextFull");
        } else {
          unbatch(g);
        }
      }
      dropFinished();
      return true;
    }
    std::vector<std::shared_ptr<GenState>> finished;
    for (auto& sp : active_) {
      GenState& g = *sp;
      if (g.inBatch == 0) continue;
      if (ret != 0) {
        // Undo what this step may have written for the sequence and end the request. A recurrent state
        // cannot drop a part (llama.cpp refuses): the sequence then starts over.
        if (!llama_memory_seq_rm(mem, g.seq, g.nPast, -1)) {
          llama_memory_seq_rm(mem, g.seq, -1, -1);
          g.nPast = 0;
        }
        if (ret == 2) {  // cut off by abortStep(): every generation in it was aborted, or the context stops
          finish(g, "abort");
          continue;
        }
        finish(g, ret == 1 ? "contextFull" : "error", ret == 1 ? "" : "ERR_DECODE",
               ret == 1            ? ""
               : failure.empty() ? "llama_decode failed with status " + std::to_string(ret)
                                 : failure);
        continue;
      }
      g.nPast += g.inBatch;
      g.shiftedFrom = -1;
      if (g.hasNext) {
        g.hasNext = false;
      }
      if (!g.drafts.empty()) {
        // Speculative step: the target samples at `next` and after each draft token, and keeps the drafts
        // as long as it samples the same tokens (so the output is what it would have been without drafts).
        size_t k = g.drafts.size();
        std::vector<int> idxs(k + 1);
        for (size_t j = 0; j <= k; j++) idxs[j] = g.iFirst + (int)j;
        std::vector<llama_token> ids;
        try {
          AbortGuard guard;
          ids = common_sampler_sample_and_accept_n(g.sampler, ctx_, idxs, g.drafts);
          for (llama_token id : ids) g.candidates.accept(id);
        } catch (const std::exception& e) {
          {
            SamplingFailure f = samplingError(g, e);
            finish(g, "error", f.code, f.message);
          }
          continue;
        }
        g.building.drafted += (int32_t)k;
        g.building.accepted += (int32_t)ids.size() - 1;
        // Only `next` and the accepted drafts stay in the cache: drop the rest, then take the sampled tokens
        // one by one, as if they had come one step at a time (a token that ends the generation is not in
        // the cache, and neither is anything after it).
        int32_t valid = g.nPast - (int32_t)k + (int32_t)ids.size() - 1;
        llama_memory_seq_rm(mem, g.seq, valid, -1);
        g.nPast = valid - ((int32_t)ids.size() - 1);
        g.cache.truncate((size_t)g.nPast);
        g.drafts.clear();
        for (size_t j = 0; j < ids.size(); j++) {
          handleToken(g, ids[j], idxs[j]);
          bool done;
          {
            std::lock_guard<std::mutex> lock(g.mu);
            done = g.done;
          }
          if (done) {
            llama_memory_seq_rm(mem, g.seq, g.nPast, -1);
            break;
          }
          if (j + 1 < ids.size()) {  // an accepted draft: decoded already
            g.cache.pushText(ids[j]);
            g.nPast++;
          }
        }
      } else if (g.iBatch >= 0) {
        llama_token t;
        int64_t t0 = profile_.on ? nowUs() : 0;
        try {
          // A grammar that leaves no token to choose makes llama.cpp assert: end the request instead.
          AbortGuard guard;
          t = g.candidates.sample(g.sampler, ctx_, g.iBatch);
          if (g.hasGrammar) {
            // When the grammar leaves nothing, greedy takes the first of equal -infinity logits: say so
            // rather than fail to accept it.
            const llama_token_data_array* cur = common_sampler_get_candidates(g.sampler, false);
            if (cur != nullptr && cur->selected >= 0 && (size_t)cur->selected < cur->size &&
                cur->data[cur->selected].logit == -INFINITY) {
              throw NoTokenAllowed();
            }
          }
          common_sampler_accept(g.sampler, t, true);
          g.candidates.accept(t);
        } catch (const std::exception& e) {
          // In practice: a grammar that allows no token that logitBias left (or none at all).
          {
            SamplingFailure f = samplingError(g, e);
            finish(g, "error", f.code, f.message);
          }
          continue;
        }
        int64_t t1 = profile_.on ? nowUs() : 0;
        handleToken(g, t, g.iBatch);
        if (profile_.on) {
          tSample += t1 - t0;
          tHandle += nowUs() - t1;
          profile_.sampled++;
          profile_.sampledSubset += g.candidates.active() ? 1 : 0;
        }
      }
    }
    dropFinished();
    if (profile_.on) {
      profile_.steps++;
      profile_.tokens += nTokens;
      profile_.sampleUs += tSample;
      profile_.handleUs += tHandle;
      profile_.stepUs += nowUs() - stepStart;
    }
  }
  return true;
}

}  // namespace la
