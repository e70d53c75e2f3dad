# shellcheck shell=bash
# Sourced by integration/setup.sh and image/build.sh: the machine's configured apt archives,
# so that no project file names an archive host. Reads both forms apt accepts: deb822
# stanzas (/etc/apt/sources.list.d/*.sources) and one-line entries (sources.list, *.list).

# apt_source_files [EXCLUDE]: the apt source files present, minus EXCLUDE.
apt_source_files() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && [ "$f" != "${1:-}" ] && printf '%s\n' "$f"
  done
}

# apt_deb_entries FILE...: one line per enabled `deb` (binary) entry and suite, tab-separated:
#   URI  SUITE  COMPONENTS  SIGNED-BY (may be empty)
apt_deb_entries() {
  [ $# -gt 0 ] || return 0
  awk '
    function flush(   n, s, u, i, j) {
      if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "") {
        n = split(suites, s, /[[:space:]]+/); split(uris, u, /[[:space:]]+/)
        for (i = 1; i <= n; i++) if (s[i] != "") for (j in u) if (u[j] != "")
          printf "%s\t%s\t%s\t%s\n", u[j], s[i], comps, signed
      }
      types = uris = suites = comps = signed = enabled = ""
    }
    FNR == 1 { flush() }
    /^[[:space:]]*#/ { next }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^[[:space:]]*$/) { flush(); next }
      key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
      if (key == "types") types = $0
      else if (key == "uris") uris = $0
      else if (key == "suites") suites = $0
      else if (key == "components") comps = $0
      else if (key == "signed-by") signed = $0
      else if (key == "enabled") enabled = tolower($0)
      next
    }
    $1 == "deb" {
      line = $0; sub(/^deb[[:space:]]+/, "", line); opts = ""
      if (line ~ /^\[/) { opts = substr(line, 2, index(line, "]") - 2); line = substr(line, index(line, "]") + 1) }
      n = split(line, w, /[[:space:]]+/); i = (w[1] == "") ? 2 : 1
      types = "deb"; uris = w[i]; suites = w[i + 1]; comps = ""
      for (j = i + 2; j <= n; j++) comps = comps (comps == "" ? "" : " ") w[j]
      if (match(opts, /signed-by=[^[:space:]]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
      flush()
    }
    END { flush() }
  ' "$@"
}

# apt_archive_uri SUITE: the first configured archive URI that serves SUITE (empty if none).
apt_archive_uri() {
  local files
  mapfile -t files < <(apt_source_files "")
  apt_deb_entries "${files[@]}" | awk -F'\t' -v suite="$1" '$2 == suite { print $1; exit }'
}
