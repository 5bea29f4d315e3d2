#!/usr/bin/env bash
# Times the two test tiers one after the other: the full suite (`./dev test`, CI's default), then the fast tier
# (`./dev test --fast`). Each log, kept in docs/benchmarks/test_suite_{full,fast}.txt, holds the start date, the
# machine's CPU count and load average before and after (other work on the machine slows the suite), pytest's summary
# with the 30 slowest test phases, the wall time, and the CPU time of the run with its subprocesses (user + system:
# what the run itself costs, much less sensitive to other work than the wall time). Usage:
# benchmarks/test_suite_time.sh [full|fast]...
set -uo pipefail
cd "$(dirname "$0")/.."
out=docs/benchmarks
mkdir -p "$out"
[ $# -gt 0 ] || set -- full fast
for tier in "$@"; do
  case "$tier" in
    full) flags=() ;;
    fast) flags=(--fast) ;;
    *) echo "unknown tier '$tier': expected full or fast" >&2; exit 2 ;;
  esac
  log=$out/test_suite_$tier.txt
  tmp=$log.tmp
  {
    echo "command: ./dev test ${flags[*]:-} -q -p no:cacheprovider --durations=30"
    echo "start: $(date -u +%FT%TZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    start=$(date +%s)
    /usr/bin/time -f "cpu time: %U s user + %S s system" -o "$tmp.cpu" \
      ./dev test "${flags[@]}" -q -p no:cacheprovider --durations=30 2>&1 | grep -v '^\.*\s*\[ *[0-9]*%\]$'
    rc=${PIPESTATUS[0]}
    echo "end: $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    grep '^cpu time' "$tmp.cpu"; rm -f "$tmp.cpu"
    echo "exit status $rc, wall time $(( $(date +%s) - start )) s"
  } > "$tmp"
  mv "$tmp" "$log"  # whole logs only
  tail -1 "$log"
done
