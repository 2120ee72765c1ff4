#include "model_handle.h"

namespace la {

static std::atomic<uint64_t> g_nextModelId{1};
ModelHandle::ModelHandle() : id(g_nextModelId++) {}

}  // namespace la
