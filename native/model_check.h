// Checks, before llama.cpp loads a GGUF file, what llama.cpp assumes later without checking: tensor types
// that each operation supports, hyper-parameters that are finite and in range, a usable tokenizer. A file
// that passes loads and runs; one that does not is rejected with the reason instead of ending the process
// on ggml's compute threads at the first decode (where nothing can catch).
#pragma once
#include <string>

namespace la {

// The reason a model file cannot be used safely, or "" (also "" when it is not readable as GGUF at all:
// llama.cpp's loader then gives its own reason).
std::string checkModelFile(const std::string& path, bool vocabOnly);
// The same for a LoRA adapter file.
std::string checkAdapterFile(const std::string& path);

}  // namespace la
