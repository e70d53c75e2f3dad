#include <cstdio>
#include "lib/greet.h"
int main() { std::puts(greeting()); return 0; }
