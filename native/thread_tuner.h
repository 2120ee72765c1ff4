// How many CPU threads a context's decode steps use when `threads: 'auto'`: chosen from the step times the
// engine measures, not fixed. ggml's threads wait for each other at every barrier of a graph, so when the
// host keeps a core busy (an Electron UI, a web server, a build) a thread that the scheduler puts aside
// stalls all the others: on 2 cores with one busy, 2 threads generated 20x slower than 1.
//
// One tuner per shape of step (native/engine.h), since each has its own best count. The tuner keeps the
// costs of the last few steps at the count in use, and now and then tries a neighbour (one thread fewer or
// more) for a few steps; it moves when the neighbour's mean cost is below the current count's by a margin.
// Plain means over 8 steps and tries of 4: a shared machine's step times have spikes (a thread put aside
// for a moment) that made a tuner with a smoothed average and 2-step tries leave the best count, while the
// stalls a count causes (a core busy) are its real cost, which a median (or a trimmed mean) would not see.
// A try ends after its first step when that is far slower, and after two when both are clearly slower and
// the current count's steps are steady.
// A neighbour that was slower is tried again after longer, the slower it was (so a count that is 20x slower
// costs little), and at once when the current count's steps become steadily slower (the host got busy). Deterministic given the costs, so that
// test/threads.test.ts can drive it with made-up ones.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace la {

class ThreadTuner {
 public:
  // `firstTry`: steps before it first tries another count (large steps wait longer: each try costs seconds).
  explicit ThreadTuner(int32_t maxThreads, int64_t firstTry = 2);

  // Threads for the next step. `waits`: core-seconds per second that the compute threads waited for a CPU
  // lately (native/run_queue.h; < 0: unknown). While they hardly wait, a count fewer that was tried and
  // found slower is not tried again (only the host's load could make it faster), until its wait has grown
  // to the longest, or steps slow down. `sustained`: the waits of the last 100 ms at least (the smaller of
  // two windows): a rise of those from quiet to busy tries one thread fewer at once.
  // `idle`: cores the machine left idle lately (< 0: unknown); under half a core, a count more that was
  // tried and found slower is not tried again (it has no core to run on) until its wait is the longest;
  // half a core or more, a try of a count fewer ends once it has been slower over a quarter of its steps.
  int32_t choose(double waits = -1, double sustained = -1, double idle = -1);
  // The cost of the step just run with `threads` (seconds, per token where steps differ in size), and how
  // long the step took (seconds; < 0: `cost`), which sizes the window and the tries of tiny steps.
  void record(int32_t threads, double cost, double seconds = -1);
  // The step's shape changed (costs before and after do not compare): start measuring again.
  void reset();
  // Another shape moved to `count` threads while the machine had no idle core (the host got busy): a count
  // above it is left for `count`, measuring afresh (its costs were measured on a quieter host), until the
  // next step says whether to stay (verifyFollow()).
  void follow(int32_t count);
  // A step after follow() is in progress: the engine measures the machine's idle cores over it.
  bool following() const { return followFrom_ > 0; }
  // The idle cores over the first step after follow(), and its length (seconds). Half a core or more idle
  // over a step long enough to tell (40 ms; /proc/stat counts in 10-ms ticks): what kept the machine full
  // was work that this shape's steps do not meet (a server's JS thread, busy while tokens stream and idle
  // during a prompt step), and the count it left comes back, the followed count waiting as a slower try
  // does. Otherwise the follow stands, and the count it left is tried again as after a move.
  void verifyFollow(double idleCores, double seconds);
  // The mean length of its recent steps at the count in use (seconds; < 0: none yet).
  double pace() const;

  int32_t current() const { return cur_; }
  // At the most threads, with one fewer tried since the last move and found slower.
  bool fewerWasSlower() const;
  int32_t maxThreads() const { return max_; }

 private:
  // The mean of the last costs at cur_ (< 0: none yet).
  double baseline() const;
  // Whether the costs at cur_ vary little (a short try can tell a slower count from them).
  bool steady() const;
  // The longest wait before a count that was slower is tried again: kMaxGap steps, or kMaxGapSeconds at
  // the current count's pace where that is more (tiny steps: a try can stall for a scheduler slice).
  int64_t longestGap() const;
  // `gap` steps, give or take a quarter (so that tries do not keep meeting a periodic load in step).
  int64_t jittered(int64_t gap);
  // The try in progress ends: a move to its count where `mid` (its cost) is below the current count's by
  // the margin, and otherwise a longer wait before its next try.
  void endProbe(double mid);
  uint64_t rng_ = 0x9e3779b97f4a7c15ULL;

  int32_t max_;
  int32_t cur_;
  std::vector<double> recent_;         // the last costs at cur_, oldest first (kWindow, or kWindowSeconds' worth)
  std::vector<double> recentSeconds_;  // their steps' durations
  int64_t step_ = 0;
  // A probe in progress: the count tried, the steps left and the costs seen.
  int32_t probe_ = 0;
  int32_t probeLeft_ = 0;
  std::vector<double> probeCosts_;  // the probe's costs after its first step
  std::vector<double> probeSeconds_;
  int32_t probeSteps_ = 0;          // the steps the probe in progress was given
  double probeFirst_ = 0;            // the probe's first step (its threads warming up)
  bool probeUp_ = false;            // which neighbour is tried next
  bool probeFreeCore_ = false;      // the probe in progress is of a count more, with an idle core for it
  std::vector<int64_t> gap_;        // steps to wait before trying each count again
  std::vector<int64_t> notBefore_;  // the step from which each count may be tried
  int32_t slowSteps_ = 0;           // consecutive steps well above the baseline
  bool wasBusy_ = false;            // the sustained waits were busy at the last choose()
  bool wasFull_ = false;            // the machine had no idle core at the last choose() that knew
  // follow(): the count left (0: not following) and its costs, until verifyFollow().
  int32_t followFrom_ = 0;
  std::vector<double> followRecent_;
  std::vector<double> followRecentSeconds_;
};

// One tuner per shape of step, since step times compare only between steps of the same size: 1 to 31
// tokens (one session generating; several, or drafts) by their count, and larger steps (prompt chunks,
// often with other sessions' tokens) by size class, 32-63, 64-127, 128-255, 256-511 and 512 or more.
// A server mixes these shapes step after step; one tuner for them all compared a small step's cost with a
// large one's and moved to the wrong count. Each is made at its shape's first step, from what the others
// have learnt (forStep()). What a step costs its tuner: its time, or per token from kLargeStep tokens on.
class ThreadTuners {
 public:
  static constexpr int kShapes = 37;
  static constexpr int32_t kLargeStep = 32;  // steps of this many tokens or more: a tuner per size class
  static int shapeOf(int32_t nTokens);
  // The tuner of a step of `nTokens` whose counts go up to `maxThreads`; `startedFrom`, where this step made
  // it: the shape it started from, or 0 (fresh); -1 where it was made before. `idle`: the cores the machine
  // left idle lately (RunQueueMeter::idleCores(); < 0: unknown): while under half a core is idle, a shape
  // follows another that moved to fewer threads since it last ran (see follow()).
  ThreadTuner& forStep(int32_t nTokens, int32_t maxThreads, double idle = -1, int* startedFrom = nullptr);
  // What the step cost (seconds per token from kLargeStep tokens on).
  static double costOf(int32_t nTokens, double seconds) { return nTokens < kLargeStep ? seconds : seconds / nTokens; }
  void resetAll();

 private:
  // The shape whose tuner a new shape starts from, or 0: none (see forStep()).
  int startFor(int shape, int32_t maxThreads) const;
  std::unique_ptr<ThreadTuner> tuners_[kShapes];
  // Moves to fewer threads, seen from one step to the next: the shape of the last step and its count then,
  // how many moves down there have been, the shape that made the last, and the count each shape has seen.
  int last_ = 0;
  int32_t lastCount_ = 0;
  uint64_t movesDown_ = 0;
  int mover_ = 0;
  uint64_t seen_[kShapes] = {};
};

}  // namespace la
