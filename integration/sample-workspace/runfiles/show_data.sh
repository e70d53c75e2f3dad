#!/bin/bash
# Prints its data files, found the ways a binary finds its runfiles: $0.runfiles always,
# $RUNFILES_DIR and $RUNFILES_MANIFEST_FILE when set (jbazel run sets them; Bazel 4's own
# `run` does not). `show_data.sh [CODE [stdin]]`: echoes stdin if asked, exits with CODE.
set -eu
echo "0: $(cat "$0.runfiles/__main__/runfiles/data.txt")"
if [ -n "${RUNFILES_DIR:-}" ]; then
  echo "dir: $(cat "$RUNFILES_DIR/__main__/runfiles/generated.txt")"
fi
if [ -n "${RUNFILES_MANIFEST_FILE:-}" ]; then
  target=$(sed -n 's|^__main__/runfiles/data.txt ||p' "$RUNFILES_MANIFEST_FILE")
  echo "manifest: $(cat "$target")"
fi
if [ "${2:-}" = stdin ]; then
  echo "stdin: $(cat)"
fi
exit "${1:-0}"
