#include <cstdio>
#include <cstring>
#include "lib/greet.h"
int main() {
  std::printf("pass_test: greeting is '%s'\n", greeting());
  return std::strcmp(greeting(), "daily driver says hello") == 0 ? 0 : 1;
}
