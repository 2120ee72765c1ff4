#include "work_pool.h"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "promise_worker.h"

namespace la {

namespace {

struct Pool {
  explicit Pool(int most) : max(most) {}
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> jobs;
  int threads = 0;
  int idle = 0;
  const int max;
};

// Never destroyed: their threads may still wait on them while the process exits.
Pool& shortPool() {
  static Pool* p = new Pool(std::clamp((int)std::thread::hardware_concurrency(), 2, 16));
  return *p;
}
Pool& longPool() {
  static Pool* p = new Pool(4);
  return *p;
}

void* loop(void* arg) {
  Pool& p = *static_cast<Pool*>(arg);
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(p.mu);
      p.idle++;
      p.cv.wait(lock, [&] { return !p.jobs.empty(); });
      p.idle--;
      job = std::move(p.jobs.front());
      p.jobs.pop_front();
    }
    try {
      job();
    } catch (...) {
      // jobs catch what they throw; nothing may end this thread
    }
  }
  return nullptr;
}

bool startThread(Pool& p) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, kWorkerStackBytes);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  int rc = pthread_create(&t, &attr, loop, &p);
  pthread_attr_destroy(&attr);
  return rc == 0;
}

void post(Pool& p, std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(p.mu);
    p.jobs.push_back(std::move(job));
    // A new thread when none is idle (the queued jobs outnumber the idle threads) and the limit allows.
    if (p.idle < (int)p.jobs.size() && p.threads < p.max) {
      if (startThread(p)) {
        p.threads++;
      } else if (p.threads == 0) {
        std::function<void()> mine = std::move(p.jobs.back());
        p.jobs.pop_back();
        p.mu.unlock();
        try {
          mine();
        } catch (...) {
        }
        p.mu.lock();
        return;
      }
    }
  }
  p.cv.notify_one();
}

}  // namespace

void postWork(std::function<void()> job) { post(shortPool(), std::move(job)); }

void postLongWork(std::function<void()> job) { post(longPool(), std::move(job)); }

}  // namespace la
