// A sampler that keeps output valid UTF-8: it bans tokens whose bytes cannot continue the text generated
// so far as UTF-8. llama.cpp's grammar checks characters, but lets some invalid byte sequences through
// (overlong forms decode to a terminator it stops at), which a JSON schema's lengths then miscount.
#pragma once
#include <memory>

#include "llama.h"
#include "model.h"

namespace la {

llama_sampler* makeUtf8Guard(std::shared_ptr<ModelHandle> model);

// Puts `first` at the front of a sampler chain.
void prependToChain(llama_sampler* chain, llama_sampler* first);

}  // namespace la
