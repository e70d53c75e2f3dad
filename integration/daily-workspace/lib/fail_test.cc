#include <cstdio>
#include "lib/greet.h"
int main() {
  std::printf("DAILY-DRIVER-EXPECTED-FAILURE: '%s' is not 'goodbye'\n", greeting());
  return 1;
}
