#include "lib/greet.h"
const char* greeting() { return "daily driver says hello"; }
