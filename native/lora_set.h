// The LoRA adapters a request decodes with (no N-API here: the engine is built without Node too).
#pragma once
#include <utility>
#include <vector>

#include "llama.h"

namespace la {

// The adapters of a request: sorted, so that equal sets compare equal.
using LoraSet = std::vector<std::pair<llama_adapter_lora*, float>>;

}  // namespace la
