#include "thread_tuner.h"

#include <algorithm>

namespace la {

namespace {

constexpr int32_t kProbeSteps = 3;     // steps a neighbour is tried (the first one warms its threads up)
constexpr int64_t kStartGap = 2;       // steps before the first try (the first step warms the threads up)
constexpr int64_t kFirstGap = 16;      // steps before a neighbour is tried again, after a move
constexpr int64_t kMaxGap = 1024;      // the longest wait before trying a neighbour that was slower
constexpr double kMargin = 0.97;       // a neighbour must be this much faster to move to it
constexpr double kAlpha = 0.2;         // weight of a new step in the smoothed cost
constexpr double kSlowdown = 2.0;      // a step this much above the smoothed cost is a sudden slowdown
constexpr double kClearlyWorse = 2.0;  // a probe's first step this much above: ended at once

}  // namespace

ThreadTuner::ThreadTuner(int32_t maxThreads)
    : max_(std::max<int32_t>(1, maxThreads)), cur_(max_), gap_((size_t)max_ + 2, kFirstGap), notBefore_((size_t)max_ + 2, kStartGap) {}

void ThreadTuner::reset() {
  ema_ = -1;
  probeLeft_ = 0;
  probeSum_ = 0;
  probeSeen_ = 0;
  slowSteps_ = 0;
}

int32_t ThreadTuner::choose() {
  if (probeLeft_ > 0) return probe_;
  if (ema_ < 0 || max_ == 1) return cur_;
  // A neighbour whose wait is over, alternating between one fewer and one more.
  for (int i = 0; i < 2; i++) {
    bool up = probeUp_ != (i == 1);
    int32_t n = up ? cur_ + 1 : cur_ - 1;
    if (n < 1 || n > max_ || step_ < notBefore_[(size_t)n]) continue;
    probeUp_ = !up;
    probe_ = n;
    probeLeft_ = kProbeSteps;
    probeSum_ = 0;
    probeSeen_ = 0;
    return probe_;
  }
  return cur_;
}

void ThreadTuner::record(int32_t threads, double cost) {
  step_++;
  if (probeLeft_ > 0 && threads == probe_) {
    probeLeft_--;
    bool first = probeLeft_ == kProbeSteps - 1;
    if (first && cost > ema_ * kClearlyWorse) {
      probeLeft_ = 0;  // no need to look further
      probeSum_ = cost;
      probeSeen_ = 1;
    }
    if (!first) {
      probeSum_ += cost;
      probeSeen_++;
    }
    if (probeLeft_ > 0) return;
    double mean = probeSeen_ > 0 ? probeSum_ / probeSeen_ : cost;
    size_t p = (size_t)probe_;
    if (probeSeen_ > 0 && mean < ema_ * kMargin) {
      // Move; the count left behind may be tried again soon.
      size_t was = (size_t)cur_;
      cur_ = probe_;
      ema_ = mean;
      gap_[was] = kFirstGap;
      notBefore_[was] = step_ + kFirstGap;
      gap_[p] = kFirstGap;
    } else {
      // Slower: wait longer before the next try, the more so the slower it was (a try of a count 5x slower
      // costs 5 steps' time, so it is tried about 5x less often).
      double ratio = ema_ > 0 ? mean / ema_ : 2.0;
      double grown = (double)gap_[p] * std::max(2.0, std::min(ratio, 16.0));
      gap_[p] = std::min<int64_t>((int64_t)grown, kMaxGap);
      notBefore_[p] = step_ + gap_[p];
    }
    return;
  }
  if (threads != cur_) return;
  if (ema_ < 0) {
    ema_ = cost;
    return;
  }
  slowSteps_ = cost > ema_ * kSlowdown ? slowSteps_ + 1 : 0;
  if (slowSteps_ >= 2) {
    // The host got busy (or something else changed): measure afresh, and try one thread fewer now.
    ema_ = cost;
    slowSteps_ = 0;
    if (cur_ > 1) {
      gap_[(size_t)cur_ - 1] = kFirstGap;
      notBefore_[(size_t)cur_ - 1] = step_;
      probeUp_ = false;
    }
    return;
  }
  ema_ = (1 - kAlpha) * ema_ + kAlpha * cost;
}

}  // namespace la
