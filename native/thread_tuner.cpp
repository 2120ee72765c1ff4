#include "thread_tuner.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace la {

namespace {

constexpr size_t kWindow = 8;          // costs at the current count whose mean is its baseline (at least)
constexpr int32_t kProbeSteps = 5;     // steps a neighbour is tried (the first one warms its threads up; at least)
// Tiny steps: the window and a try also span this much time at least (up to kMaxWindow and kMaxProbeSteps
// steps). A thread that must wait for a busy core stalls a step now and then, for a scheduler slice or more
// (stories260k without flash attention, 0.3 ms steps, one core busy: 2 threads' steps took 0.2-0.5 ms but
// 4 ms or 110 ms every few dozen), and 8 steps or a 4-step try of such a count mostly saw none of it: the
// tuner kept 2 threads at 0.4-0.6 of 1's speed.
constexpr double kWindowSeconds = 0.025;
constexpr double kProbeSeconds = 0.012;
constexpr size_t kMaxWindow = 256;
constexpr int32_t kMaxProbeSteps = 64;
constexpr int64_t kStartGap = 2;       // steps before the first try (the first step warms the threads up)
constexpr int64_t kFirstGap = 16;      // steps before a neighbour is tried again, after a move
constexpr int64_t kMaxGap = 1024;      // the longest wait before trying a neighbour that was slower
// ... in time, where that is more steps: stories260k with a core busy, 1 thread's steps 0.3 ms: a try of 2
// threads every 1,024 steps (0.3 s) stalled for a scheduler slice (100 ms) now and then.
constexpr double kMaxGapSeconds = 1.0;
// Idle cores below which the machine has none for a thread more (see choose()).
constexpr double kFreeCore = 0.5;
// A step this long at least tells, by the idle cores over it, whether a follow() stands (see verifyFollow()).
constexpr double kVerifySeconds = 0.04;
// A shape whose steps take this long at least follows another down (a shorter one costs little either way,
// and its step after a follow would be too short to verify).
constexpr double kFollowPace = 0.02;
constexpr int64_t kFullGaps = 4;
constexpr double kMargin = 0.97;       // a neighbour's cost must be this much below to move to it
constexpr double kSlowdown = 2.0;      // a step this much above the baseline is slow
constexpr int32_t kSlowRun = 3;        // this many slow steps in a row: the host got busy
constexpr double kClearlyWorse = 2.5;  // a probe's first step this much above the baseline: ended at once
// A probe's first two steps both this much above the baseline: ended after them. On an idle machine the
// count below the best is steadily slower (2 cores, the 415M model: 1 thread's steps took 1.9x 2 threads'
// with 4 sequences, 1.38x with one), and 5-step tries of it cost a 4-client server run 10 of its 70 steps;
// a spike (a thread put aside for a moment) seldom hits both steps, so a better count is not given up for one.
constexpr double kSlowerTwice = 1.25;
// ... but only while the current count's recent steps are steady (the slowest at most this much above the
// fastest): where they vary (a load that comes and goes), two steps say too little, and a try runs its 5.
constexpr double kSteady = 1.5;
// A try of tiny steps spans kProbeSeconds (dozens of steps): once a quarter of it is run, a mean this much
// above the baseline ends it, steady or not. With a core busy, stories260k's 1-thread steps varied too much
// to be steady (0.2-0.5 ms), and each try of 2 threads ran its ~50 steps at 1.9x: 5% of the steps, 0.95 of
// the best count in the simulator.
constexpr double kSlowerSoFar = 1.5;
// Waits (core-seconds per second, the compute threads together) below which a count fewer is not tried
// again: idle, 2 threads of the 415M model generating waited 0.02-0.03 (the JS thread's wake-ups), a server
// under its own load 0.03-0.1; with a core kept busy, 0.6-0.8.
constexpr double kQuietWaits = 0.1;
// Waits (over 100 ms at least) from which the host is busy: a rise to them from quiet tries one thread
// fewer at once. A server's own prompt phases reached 0.45 in single 50 ms windows.
constexpr double kBusyWaits = 0.5;

// The mean: a step time is what throughput pays, stalls included (with a core busy, 2 threads' steps
// stall now and then, and that is their cost: a median, or a mean without the largest value, hid stalls
// that came once every few steps). Over kWindow steps and a try of kProbeSteps, the spikes of a shared
// machine average out.
double meanOf(const std::vector<double>& v) {
  if (v.empty()) return -1;
  double sum = 0;
  for (double x : v) sum += x;
  return sum / (double)v.size();
}

}  // namespace

ThreadTuner::ThreadTuner(int32_t maxThreads, int64_t firstTry)
    : max_(std::max<int32_t>(1, maxThreads)), cur_(max_), gap_((size_t)max_ + 2, kFirstGap), notBefore_((size_t)max_ + 2, std::max(kStartGap, firstTry)) {}

double ThreadTuner::baseline() const { return meanOf(recent_); }

int64_t ThreadTuner::jittered(int64_t gap) {
  // 0.75x to 1.25x the gap, from a fixed-seed generator (the tuner stays deterministic given the costs): a
  // host whose load comes back every 16 steps (a hostile review) made every try of a better count land on
  // its slow steps when the waits were powers of two, and the tuner kept the worse count 3x as long.
  rng_ = rng_ * 6364136223846793005ULL + 1442695040888963407ULL;
  double u = (double)(rng_ >> 11) / 9007199254740992.0;
  return std::max<int64_t>(1, (int64_t)((double)gap * (0.75 + 0.5 * u)));
}

int64_t ThreadTuner::longestGap() const {
  double pace = meanOf(recentSeconds_);
  if (pace <= 0) return kMaxGap;
  return std::max<int64_t>(kMaxGap, (int64_t)std::min(kMaxGapSeconds / pace, 1e9));
}

bool ThreadTuner::fewerWasSlower() const { return max_ > 1 && cur_ == max_ && gap_[(size_t)max_ - 1] > kFirstGap; }

bool ThreadTuner::steady() const {
  if (recent_.empty()) return false;
  auto [lo, hi] = std::minmax_element(recent_.begin(), recent_.end());
  return *hi <= *lo * kSteady;
}

void ThreadTuner::reset() {
  followFrom_ = 0;  // (a follow not yet verified stands)
  followRecent_.clear();
  followRecentSeconds_.clear();
  recent_.clear();
  recentSeconds_.clear();
  probeLeft_ = 0;
  probeCosts_.clear();
  probeSeconds_.clear();
  slowSteps_ = 0;
}

double ThreadTuner::pace() const { return meanOf(recentSeconds_); }

void ThreadTuner::follow(int32_t count) {
  count = std::clamp<int32_t>(count, 1, max_);
  if (count >= cur_ || following()) return;
  std::vector<double> saved = recent_;
  std::vector<double> savedSeconds = recentSeconds_;
  reset();
  followFrom_ = cur_;
  followRecent_ = std::move(saved);
  followRecentSeconds_ = std::move(savedSeconds);
  cur_ = count;
}

void ThreadTuner::verifyFollow(double idleCores, double seconds) {
  if (!following()) return;
  size_t from = (size_t)followFrom_;
  size_t to = (size_t)cur_;
  followFrom_ = 0;
  if (seconds >= kVerifySeconds && idleCores >= kFreeCore) {
    cur_ = (int32_t)from;
    recent_ = std::move(followRecent_);
    recentSeconds_ = std::move(followRecentSeconds_);
    slowSteps_ = 0;
    gap_[to] = std::min<int64_t>(std::max<int64_t>(gap_[to] * 2, 2 * kFirstGap), longestGap());
    notBefore_[to] = step_ + jittered(gap_[to]);
  } else {
    gap_[from] = kFirstGap;
    notBefore_[from] = step_ + kFirstGap;
  }
  followRecent_.clear();
  followRecentSeconds_.clear();
}

int32_t ThreadTuner::choose(double waits, double sustained, double idle) {
  if (probeLeft_ > 0) {
    // A try of a count fewer while the machine left a core idle: nothing took the core it gave back (it was
    // tried for a busy host, whose work has ended or did not need it), so it can only win where fewer
    // threads are faster on an idle machine, which the steps tried so far show. Slower over a quarter of the
    // try (one step at least): it ends there. (A server's burst of 16 requests kept its JS thread busy for
    // a moment, a try of 1 thread began, and its 4 prompt steps of 800-2,048 tokens ran at 1 thread with
    // a core idle: 0.9 s at 1.7x 2 threads' time, a fifth of the round.)
    const int32_t seen = probeSteps_ - probeLeft_;  // the try's steps so far (its first in probeFirst_)
    double mean = seen > 0 ? (probeFirst_ + std::accumulate(probeCosts_.begin(), probeCosts_.end(), 0.0)) / seen : 0;
    if (probe_ < cur_ && idle >= kFreeCore && seen >= std::max(1, probeSteps_ / 4) && mean > baseline()) {
      endProbe(mean);
    } else {
      return probe_;
    }
  }
  if (recent_.size() < 3 || max_ == 1) return cur_;
  // Threads that hardly wait for a CPU: one put aside stalls the others at most that much, and a count fewer
  // costs 1/(n-1) more work per thread; below half of that (and at most kQuietWaits) a try cannot win.
  bool quiet = waits >= 0 && waits < std::min(kQuietWaits, 0.5 / (double)std::max(1, cur_ - 1));
  // The threads began to wait for a CPU for 100 ms or more (the host got busy): one fewer is tried at once, as after a run of
  // slow steps, which a moderate load need not cause (the 415M model's steps went from 17 to 45-60 ms, and
  // 2 threads ran ~440 more steps; a hostile review).
  bool busy = sustained >= kBusyWaits;
  if (busy && !wasBusy_ && cur_ > 1) {
    gap_[(size_t)cur_ - 1] = kFirstGap;
    notBefore_[(size_t)cur_ - 1] = step_;
    probeUp_ = false;
  }
  wasBusy_ = busy;
  // The machine had no idle core and now has one (the host's work ended): a count more is tried at once.
  bool machineFull = idle >= 0 && idle < kFreeCore;
  if (!machineFull && idle >= 0 && wasFull_ && cur_ < max_) {
    gap_[(size_t)cur_ + 1] = kFirstGap;
    notBefore_[(size_t)cur_ + 1] = step_;
    probeUp_ = true;
  }
  if (idle >= 0) wasFull_ = machineFull;
  // A neighbour whose wait is over, alternating between one fewer and one more.
  for (int i = 0; i < 2; i++) {
    bool up = probeUp_ != (i == 1);
    int32_t n = up ? cur_ + 1 : cur_ - 1;
    if (n < 1 || n > max_ || step_ < notBefore_[(size_t)n]) continue;
    size_t k = (size_t)n;
    // A count more while the machine has no idle core (the host's work, or ours, holds them all): its
    // thread would wait for a core, and stall the others at every barrier.
    // Such a try fails but can cost a scheduler slice (100 ms): it waits up to kFullGaps longest gaps.
    bool full = up && machineFull;
    int64_t longest = full ? kFullGaps * longestGap() : longestGap();
    if (((!up && quiet && gap_[k] > kFirstGap) || full) && gap_[k] < longest) {
      // Tried since the last move and slower (or, a count more, no core for it, even right after a move
      // from it), and nothing has changed: put off, the wait growing as if it had been tried (so that a
      // count 20x slower is still tried now and then, at the longest wait).
      gap_[k] = std::min<int64_t>(gap_[k] * 2, longest);
      notBefore_[k] = step_ + jittered(gap_[k]);
      continue;
    }
    probeUp_ = !up;
    probe_ = n;
    probeFreeCore_ = up && idle >= kFreeCore;
    // As many steps as kProbeSeconds takes at the current count's pace (at least kProbeSteps).
    double pace = meanOf(recentSeconds_);
    int32_t steps = pace > 0 ? (int32_t)std::ceil(kProbeSeconds / pace) + 1 : kProbeSteps;
    probeLeft_ = probeSteps_ = std::clamp(steps, kProbeSteps, kMaxProbeSteps);
    probeCosts_.clear();
    probeSeconds_.clear();
    return probe_;
  }
  return cur_;
}

void ThreadTuner::endProbe(double mid) {
  double base = baseline();
  size_t p = (size_t)probe_;
  probeLeft_ = 0;
  if (!probeCosts_.empty() && mid < base * kMargin) {
    // Move; the count left behind may be tried again soon.
    size_t was = (size_t)cur_;
    cur_ = probe_;
    recent_ = probeCosts_;
    recentSeconds_ = probeSeconds_;
    slowSteps_ = 0;
    gap_[was] = kFirstGap;
    notBefore_[was] = step_ + kFirstGap;
    gap_[p] = kFirstGap;
  } else {
    // Slower: wait longer before the next try, the more so the slower it was (a try of a count 5x slower
    // costs 5 steps' time, so it is tried about 5x less often).
    double ratio = base > 0 ? mid / base : 2.0;
    double grown = (double)gap_[p] * std::max(2.0, std::min(ratio, 16.0));
    gap_[p] = std::min<int64_t>((int64_t)grown, longestGap());
    notBefore_[p] = step_ + jittered(gap_[p]);
  }
  probeCosts_.clear();
  probeSeconds_.clear();
}

void ThreadTuner::record(int32_t threads, double cost, double seconds) {
  if (seconds < 0) seconds = cost;
  step_++;
  double base = baseline();
  if (probeLeft_ > 0 && threads == probe_) {
    probeLeft_--;
    bool first = probeLeft_ == probeSteps_ - 1;
    // (Not a count more on a machine with an idle core: its first step wakes a thread that slept while
    // unused, which took 28 ms against 0.3 ms steps of stories260k on an idle machine, and every try of 2
    // threads ended there, leaving 1 thread at 0.8 of 2's speed.)
    if (first && cost > base * kClearlyWorse && !probeFreeCore_) {
      probeLeft_ = 0;  // no need to look further
      probeCosts_.assign(1, cost);
      probeSeconds_.assign(1, seconds);
    } else if (first) {
      probeFirst_ = cost;
    } else {
      probeCosts_.push_back(cost);
      probeSeconds_.push_back(seconds);
      if (probeCosts_.size() == 1 && steady() && probeFirst_ > base * kSlowerTwice && cost > base * kSlowerTwice) probeLeft_ = 0;
      if (probeSteps_ > kProbeSteps && (int32_t)probeCosts_.size() >= std::max(4, probeSteps_ / 4) &&
          meanOf(probeCosts_) > base * kSlowerSoFar) {
        probeLeft_ = 0;
      }
    }
    if (probeLeft_ > 0) return;
    endProbe(probeCosts_.empty() ? cost : meanOf(probeCosts_));
    return;
  }
  if (threads != cur_) return;
  slowSteps_ = base > 0 && cost > base * kSlowdown ? slowSteps_ + 1 : 0;
  recent_.push_back(cost);
  recentSeconds_.push_back(seconds);
  // The last kWindow steps, or more while they span less than kWindowSeconds.
  double span = 0;
  for (double x : recentSeconds_) span += x;
  while (recent_.size() > kWindow && (recent_.size() > kMaxWindow || span - recentSeconds_.front() >= kWindowSeconds)) {
    span -= recentSeconds_.front();
    recent_.erase(recent_.begin());
    recentSeconds_.erase(recentSeconds_.begin());
  }
  if (slowSteps_ >= kSlowRun) {
    // The host got busy (or something else changed): the slow steps are the baseline now, and one thread
    // fewer is tried at once. (Each slow step joins the window first, raising the mean the next is compared
    // with: a run at 3x the earlier pace is needed, where 2x stays unnoticed; a load that rises gently is
    // seen by the threads' run-queue waits instead, in choose().)
    recent_.erase(recent_.begin(), recent_.end() - kSlowRun);
    recentSeconds_.erase(recentSeconds_.begin(), recentSeconds_.end() - kSlowRun);
    slowSteps_ = 0;
    if (cur_ > 1) {
      gap_[(size_t)cur_ - 1] = kFirstGap;
      notBefore_[(size_t)cur_ - 1] = step_;
      probeUp_ = false;
    }
  }
}

int ThreadTuners::shapeOf(int32_t nTokens) {
  if (nTokens < kLargeStep) return std::max(1, nTokens);
  int shape = kLargeStep;
  for (int32_t n = nTokens >> 6; n > 0 && shape < kShapes - 1; n >>= 1) shape++;
  return shape;
}

void ThreadTuners::resetAll() {
  for (auto& t : tuners_) {
    if (t) t->reset();
  }
  last_ = 0;
}

int ThreadTuners::startFor(int shape, int32_t maxThreads) const {
  // A new shape starts from what the nearest shape has learnt (its count, and when to try the others again),
  // not from scratch: each fresh tuner's first tries cost steps, and a server meets many shapes. Nearest
  // first, the smaller on a tie, within its class (steps under kLargeStep tokens, or prompt chunks); shape 1
  // (one token) is nobody's nearest, and learns alone.
  if (shape < 2) return 0;
  const bool large = shape >= kLargeStep;
  int near = 0;
  for (int d = 1; d < kShapes && near == 0; d++) {
    for (int k : {shape - d, shape + d}) {
      if (k >= 2 && k < kShapes && (k >= kLargeStep) == large && tuners_[k] && tuners_[k]->maxThreads() == maxThreads) {
        near = k;
        break;
      }
    }
  }
  // Where that one knows nothing against keeping every thread (none made, or one that has not tried fewer: a
  // server's warm-up prompt of 31 tokens made one that ran a single step), a smaller shape of the class,
  // shape 1 included, that keeps every thread and found one fewer slower is the better start: a step of more
  // tokens has more work between the same barriers, so a thread fewer costs it more still (the 415M model on
  // 2 idle cores: 1 thread's steps 1.4x 2 threads' with one sequence, 1.9x with four), and a fresh tuner's
  // tries of it cost a fresh server's first 4-client round 4 of its 70 steps at 1.9x (2% of the round).
  const ThreadTuner* n = near != 0 ? tuners_[near].get() : nullptr;
  if (!large && (n == nullptr || (n->current() == n->maxThreads() && !n->fewerWasSlower()))) {
    for (int k = shape - 1; k >= 1; k--) {
      const ThreadTuner* t = tuners_[k].get();
      if (t != nullptr && t->maxThreads() == maxThreads && t->fewerWasSlower()) return k;
    }
  }
  return near;
}

ThreadTuner& ThreadTuners::forStep(int32_t nTokens, int32_t maxThreads, double idle, int* startedFrom) {
  // The last step's tuner moved to fewer threads during it: news for the other shapes.
  if (last_ != 0 && tuners_[last_] && tuners_[last_]->current() < lastCount_) {
    movesDown_++;
    mover_ = last_;
  }
  int shape = shapeOf(nTokens);
  // A shape runs its steps now and then (a chat's prompt, once a turn), and what it has learnt can be from
  // a quieter host: with a core kept busy, a 5-token prompt step at 2 threads, made after generation had moved
  // to 1 thread, took 2,146 ms against 231 ms at 1 (a hostile review). While the machine has no idle core,
  // a shape that another has moved below since it last ran (a new shape included) follows it down, and its
  // next step says whether that stands (verifyFollow(): a server's JS thread kept the machine full while
  // tokens streamed, and left a core idle during its prompt steps, which 2 threads ran in 35-40 ms against
  // 60-70 at 1). Where a core is idle, the other's fewer threads are its own shape's best (a tiny model's
  // single tokens on an idle machine), and nothing follows.
  const bool full = idle >= 0 && idle < kFreeCore;
  const ThreadTuner* down = mover_ != 0 && tuners_[mover_] && tuners_[mover_]->maxThreads() == std::max<int32_t>(1, maxThreads) &&
                                    tuners_[mover_]->current() < tuners_[mover_]->maxThreads()
                                ? tuners_[mover_].get()
                                : nullptr;
  auto& slot = tuners_[shape];
  if (startedFrom != nullptr) *startedFrom = -1;
  if (!slot || slot->maxThreads() != std::max<int32_t>(1, maxThreads)) {
    int from = startFor(shape, maxThreads);
    if (startedFrom != nullptr) *startedFrom = from;
    // Steps of 32 tokens or more (prompt chunks) are few and costly: a try of a slower count there costs
    // seconds (16 chats on the 415M model: a try of 1 thread on 512-token steps cost 5 s of a 32 s run), so
    // they try other counts only after 64 steps, or at once when their steps slow down (a busy host).
    slot = from != 0 ? std::make_unique<ThreadTuner>(*tuners_[from])
                           : std::make_unique<ThreadTuner>(maxThreads, shape >= kLargeStep ? 64 : 2);
    slot->reset();
    if (full && down != nullptr) slot->follow(down->current());
  } else if (full && down != nullptr && seen_[shape] < movesDown_ && slot->current() > down->current() &&
             !(slot->pace() >= 0 && slot->pace() < kFollowPace)) {
    slot->follow(down->current());
  }
  seen_[shape] = movesDown_;
  last_ = shape;
  lastCount_ = slot->current();
  return *slot;
}

}  // namespace la
