// Prints data.txt, found through argv[0].runfiles, then exits with argv[1] (default 0).
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  std::string path = std::string(argv[0]) + ".runfiles/__main__/runfiles/data.txt";
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) {
    std::perror(path.c_str());
    return 1;
  }
  char line[256];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    std::printf("argv0: %s", line);
  }
  std::fclose(f);
  return argc > 1 ? std::atoi(argv[1]) : 0;
}
