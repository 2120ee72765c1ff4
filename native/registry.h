// ggml's backend registry is a set of global vectors: loading a backend module appends to them while model
// loads, context creations and thread pools read them on worker threads. Readers hold this lock shared,
// loading holds it exclusively (and so waits for the loads in flight, a rare wait: only a GPU module's first
// load). No N-API here.
#pragma once
#include <shared_mutex>

namespace la {

std::shared_mutex& registryMutex();

}  // namespace la
