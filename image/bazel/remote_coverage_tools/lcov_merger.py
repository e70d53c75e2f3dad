#!/usr/bin/python3
"""Offline stand-in for Bazel's CoverageOutputGenerator (lcov_merger, coverage_report_generator).

Upstream this is a Java jar that @remote_coverage_tools downloads. The pod image has no
network, so this script does the part a cc_test needs, with the same flags:

  lcov_merger                --coverage_dir=D --output_file=F [--filter_sources=RE ...]
                             [--source_file_manifest=M] [--sources_to_replace_file=R]
      reads D recursively: *.gcov.json.gz (gcov of gcc >= 9, what the image's gcc writes)
      and *.dat (lcov tracefiles, e.g. clang's llvm-cov export); a lone *.profdata with
      no other coverage is copied to F as is, like upstream.
  coverage_report_generator  --reports_file=L --output_file=F
      merges the lcov files listed in L (one path per line).

Output is lcov with line (DA/LH/LF) and function (FN/FNDA/FNF/FNH) records. Not done,
unlike upstream: branch records (BRDA/BRF/BRH are dropped), gcc < 9's text *.gcov
intermediate files, Java (JaCoCo) coverage, --html_report.
Python 3 from Debian's python3 (a dependency of bazel-bootstrap), standard library only.
"""

import gzip
import json
import os
import re
import shutil
import sys


def parse_flags(argv):
    flags = {"filter_sources": []}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key == "filter_sources":
            flags["filter_sources"].append(value)
        else:
            flags[key] = value
    return flags


class Coverage:
    """Per source file: {line: hits} and {function: [start line, hits]}."""

    def __init__(self):
        self.lines = {}
        self.functions = {}

    def source(self, name):
        self.lines.setdefault(name, {})
        return self.lines[name], self.functions.setdefault(name, {})

    def add_line(self, name, line, hits):
        lines, _ = self.source(name)
        lines[line] = lines.get(line, 0) + hits

    def add_function(self, name, fn, start=None, hits=0):
        _, fns = self.source(name)
        entry = fns.setdefault(fn, [start, 0])
        entry[0] = entry[0] if start is None else start
        entry[1] += hits


def parse_lcov(path, cov):
    sf = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            tag, _, value = raw.strip().partition(":")
            if tag == "SF":
                sf = value
                cov.source(sf)
            elif sf is None:
                continue
            elif tag == "DA":
                line, hits = value.split(",")[:2]
                cov.add_line(sf, int(line), int(hits))
            elif tag == "FN":
                line, fn = value.split(",", 1)
                cov.add_function(sf, fn, start=int(line))
            elif tag == "FNDA":
                hits, fn = value.split(",", 1)
                cov.add_function(sf, fn, hits=int(hits))
            elif tag == "end_of_record":
                sf = None


def parse_gcov_json(path, cov):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    for src in data.get("files", []):
        name = src["file"]
        cov.source(name)
        for fn in src.get("functions", []):
            cov.add_function(name, fn["name"], fn["start_line"], fn["execution_count"])
        for line in src.get("lines", []):
            cov.add_line(name, line["line_number"], line["count"])


def write_lcov(cov, path):
    with open(path, "w", encoding="utf-8") as out:
        for name in sorted(cov.lines):
            lines, fns = cov.lines[name], cov.functions.get(name, {})
            out.write(f"SF:{name}\n")
            for fn, (start, _) in sorted(fns.items(), key=lambda kv: (kv[1][0] or 0, kv[0])):
                out.write(f"FN:{start or 0},{fn}\n")
            for fn, (_, hits) in sorted(fns.items()):
                out.write(f"FNDA:{hits},{fn}\n")
            out.write(f"FNF:{len(fns)}\nFNH:{sum(1 for _, h in fns.values() if h)}\n")
            for line in sorted(lines):
                out.write(f"DA:{line},{lines[line]}\n")
            out.write(f"LH:{sum(1 for h in lines.values() if h)}\nLF:{len(lines)}\n")
            out.write("end_of_record\n")


def main(argv):
    flags = parse_flags(argv)
    output = flags.get("output_file")
    if not output:
        print("lcov_merger: --output_file is required", file=sys.stderr)
        return 1
    found = []
    if flags.get("coverage_dir"):
        for root, _, files in os.walk(flags["coverage_dir"]):
            found += [os.path.join(root, f) for f in files]
    if flags.get("reports_file"):
        with open(flags["reports_file"], encoding="utf-8") as f:
            tracefiles = [line.strip() for line in f if line.strip()]
    else:
        tracefiles = [p for p in found if p.endswith(".dat")]
    # The output may already exist in the coverage dir (collect_coverage.sh touches it).
    tracefiles = [p for p in tracefiles if os.path.abspath(p) != os.path.abspath(output)]

    cov = Coverage()
    for path in tracefiles:
        parse_lcov(path, cov)
    for path in found:
        if path.endswith(".gcov.json.gz"):
            parse_gcov_json(path, cov)

    profdata = [p for p in found if p.endswith(".profdata")]
    if not cov.lines and len(profdata) == 1:
        shutil.copyfile(profdata[0], output)  # upstream does the same: no lcov for profdata
        return 0

    replace = {}
    if flags.get("sources_to_replace_file"):
        with open(flags["sources_to_replace_file"], encoding="utf-8") as f:
            replace = dict(l.strip().split(":", 1) for l in f if l.count(":") == 1)
    filters = [re.compile(r) for r in flags["filter_sources"]]
    keep = None
    if flags.get("source_file_manifest"):
        with open(flags["source_file_manifest"], encoding="utf-8") as f:
            keep = {l.strip() for l in f if not l.strip().endswith((".gcno", ".em"))}
    result = Coverage()
    for name in cov.lines:
        new = replace.get(name, name)
        if any(r.fullmatch(new) for r in filters) or (keep is not None and new not in keep):
            continue
        for line, hits in cov.lines[name].items():
            result.add_line(new, line, hits)
        for fn, (start, hits) in cov.functions.get(name, {}).items():
            result.add_function(new, fn, start, hits)
    write_lcov(result, output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
