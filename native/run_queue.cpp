#include "run_queue.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#ifdef __linux__
#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace la {

namespace {
#ifdef __linux__
// The second field of a schedstat file: nanoseconds spent waiting on a run queue.
bool waitOf(const char* path, uint64_t& ns) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[128];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  char* end = nullptr;
  std::strtoull(buf, &end, 10);  // time on the CPU
  if (end == buf) return false;
  char* p = end;
  ns = std::strtoull(p, &end, 10);
  return end != p;
}
#endif
}  // namespace

int RunQueueMeter::currentThread() {
#ifdef __linux__
  return (int)::syscall(SYS_gettid);
#else
  return 0;
#endif
}

std::vector<int> RunQueueMeter::processThreads() {
  std::vector<int> out;
#ifdef __linux__
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    out.push_back(std::atoi(e->d_name));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
#endif
  return out;
}

void RunQueueMeter::watch(const std::vector<int>& tids) {
  tids_.clear();
  for (int t : tids) {
    if (t > 0) tids_.push_back(t);
  }
  started_ = false;
  windows_[0] = windows_[1] = -1;
  idle_[0] = idle_[1] = lastIdle_ = -1;
}

bool RunQueueMeter::read(uint64_t& ns) const {
#ifdef __linux__
  ns = 0;
  char path[64];
  bool any = false;
  auto add = [&](int tid) {
    uint64_t w = 0;
    std::snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", tid);
    if (waitOf(path, w)) {
      ns += w;
      any = true;
    }
  };
  if (tids_.empty()) {
    for (int t : processThreads()) add(t);
  } else {
    for (int t : tids_) add(t);
  }
  return any;
#else
  (void)ns;
  return false;
#endif
}

bool RunQueueMeter::readIdle(double& seconds) {
#ifdef __linux__
  // The first line of /proc/stat: "cpu  user nice system idle iowait irq ..." in clock ticks, all CPUs.
  int fd = ::open("/proc/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[256];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 4 || std::strncmp(buf, "cpu ", 4) != 0) return false;
  buf[n] = '\0';
  unsigned long long f[5] = {0, 0, 0, 0, 0};
  char* p = buf + 4;
  for (auto& x : f) {
    char* end = nullptr;
    x = std::strtoull(p, &end, 10);
    if (end == p) return false;
    p = end;
  }
  static const long hz = ::sysconf(_SC_CLK_TCK);
  if (hz <= 0) return false;
  seconds = (double)(f[3] + f[4]) / (double)hz;
  return true;
#else
  (void)seconds;
  return false;
#endif
}

void RunQueueMeter::sample() {
  if (unavailable_) return;
  auto now = std::chrono::steady_clock::now();
  if (started_ && now - last_ < kInterval) return;
  uint64_t ns = 0;
  if (!read(ns)) {
    unavailable_ = true;  // no schedstat here: stays unknown
    windows_[0] = windows_[1] = -1;
    return;
  }
  if (started_) {
    double seconds = std::chrono::duration<double>(now - last_).count();
    windows_[1] = windows_[0];
    // A thread that ended (or another that took its id) can make the sum go back: that window is unknown.
    windows_[0] = ns >= lastNs_ ? (double)(ns - lastNs_) / 1e9 / seconds : -1;
  }
  double idle = -1;
  if (readIdle(idle)) {
    if (started_ && lastIdle_ >= 0) {
      double seconds = std::chrono::duration<double>(now - last_).count();
      idle_[1] = idle_[0];
      idle_[0] = idle >= lastIdle_ ? (idle - lastIdle_) / seconds : -1;
    }
    lastIdle_ = idle;
  } else {
    idle_[0] = idle_[1] = lastIdle_ = -1;
  }
  started_ = true;
  last_ = now;
  lastNs_ = ns;
}

}  // namespace la
