#!/bin/bash
# Prints its data files through $0.runfiles, then exits with $1 (default 0).
set -eu
runfiles="$0.runfiles/__main__/tools"
echo "data: $(cat "$runfiles/data.txt")"
echo "genrule: $(cat "$runfiles/banner.txt")"
exit "${1:-0}"
