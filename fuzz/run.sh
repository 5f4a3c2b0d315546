#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for FUZZ_SECONDS (default 90) on one core, with its
# seeds and dictionary. New corpus entries go to corpus/<target> (git-ignored), crashes to
# artifacts/<target>/. Usage: fuzz/run.sh [TARGET...]   (no argument: every target)
# Extra libFuzzer flags: FUZZ_ARGS="-max_len=8192" fuzz/run.sh patch
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-90}
all=(protobuf body patch patch_structured apply selector quantity resource)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
dict_for() {
  case "$1" in
    body) echo dicts/yaml.dict ;;
    patch | resource) echo dicts/json.dict ;;
    selector) echo dicts/selector.dict ;;
    quantity) echo dicts/quantity.dict ;;
    *) echo "" ;;
  esac
}
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  args=(-max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
  d=$(dict_for "$t")
  [ -n "$d" ] && args+=(-dict="$d")
  # -s none: the code under test is safe Rust, so AddressSanitizer finds nothing a panic would not
  # and halves the speed; -a keeps overflow checks and debug assertions on.
  # shellcheck disable=SC2086
  cargo +nightly fuzz run -s none -a --codegen-units 16 "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" ${FUZZ_ARGS:-}
done
