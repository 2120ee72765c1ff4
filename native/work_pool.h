// The addon's own threads for work off the JS thread (tokenizing long texts, chat templates, grammar checks,
// schema conversion): not libuv's pool, which the host application needs for files, DNS and crypto (four
// threads by default, that a few long renders would hold for seconds). At most as many threads as the
// machine has cores (2 to 16), started when needed, each with an 8 MiB stack whatever the runtime.
#pragma once
#include <functional>

namespace la {

// Runs `job` on a pool thread; a job must catch what it throws. When no thread can be started at all, the
// job runs on the caller's thread.
void postWork(std::function<void()> job);

// The same on a second pool, for work that takes seconds to minutes (loading models and adapters, creating
// and freeing contexts, quantizing): at most 4 threads, so that loads neither wait behind nor hold up the
// short jobs above, nor hold libuv's threads (a host's file reads waited behind model loads there).
void postLongWork(std::function<void()> job);

}  // namespace la
