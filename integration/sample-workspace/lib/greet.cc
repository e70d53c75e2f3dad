#include "lib/greet.h"
const char* greeting() { return "hello from jbazel"; }
