// How long a context's compute threads waited for a CPU: the signal that tells the thread tuner
// (native/thread_tuner.h) whether a try of fewer threads can pay. A try of one thread fewer wins only where
// a thread is put aside (the host keeps a core busy) and stalls the others at ggml's barriers; on a machine
// that gives the threads their cores it is only slower (2 cores, the 415M model: 1.4-1.9x), and its tries
// cost a server 1-2% of its steps. Linux: the run-queue wait of each thread (/proc/self/task/<tid>/schedstat,
// its second field), read at most every kInterval; elsewhere unknown, and the tuner tries as it would without it.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace la {

class RunQueueMeter {
 public:
  // The threads to watch: the engine thread and its thread pools' workers. None known: the whole process's.
  void watch(const std::vector<int>& tids);
  // Called on the engine thread once per step; reads the waits when kInterval has passed.
  void sample();
  // Core-seconds the watched threads waited for a CPU per second, the larger of the last two windows
  // (kInterval or longer each); < 0 while unknown.
  double waits() const { return windows_[0] < 0 || windows_[1] < 0 ? -1 : std::max(windows_[0], windows_[1]); }
  // The smaller of the two: waits that lasted (< 0 while unknown).
  double sustained() const { return windows_[0] < 0 || windows_[1] < 0 ? -1 : std::min(windows_[0], windows_[1]); }

  // Cores the whole machine left idle per second, the larger of the last two windows (Linux: /proc/stat's
  // idle and iowait time; < 0 while unknown): under half a core, a count more has no core to run on.
  double idleCores() const { return idle_[0] < 0 || idle_[1] < 0 ? -1 : std::max(idle_[0], idle_[1]); }

  // The calling thread's id (Linux; 0 elsewhere).
  static int currentThread();
  // The ids of the process's threads now (Linux; empty elsewhere).
  static std::vector<int> processThreads();
  // The machine's idle time so far, all cores together (seconds; /proc/stat's idle and iowait, in clock
  // ticks of 10 ms; false when unreadable).
  static bool readIdle(double& seconds);

 private:
  // Nanoseconds the watched threads have waited so far; false when unreadable.
  bool read(uint64_t& ns) const;

  static constexpr std::chrono::milliseconds kInterval{50};
  std::vector<int> tids_;
  bool unavailable_ = false;
  bool started_ = false;
  std::chrono::steady_clock::time_point last_;
  uint64_t lastNs_ = 0;
  double windows_[2] = {-1, -1};
  double lastIdle_ = -1;
  double idle_[2] = {-1, -1};
};

}  // namespace la
