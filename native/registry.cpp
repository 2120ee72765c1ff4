#include "registry.h"

namespace la {

std::shared_mutex& registryMutex() {
  static std::shared_mutex mu;
  return mu;
}

}  // namespace la
