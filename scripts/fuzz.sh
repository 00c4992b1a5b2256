#!/usr/bin/env bash
# Bounded fuzzing of every target in fuzz/fuzz_targets/ (`make fuzz`).
#
#   scripts/fuzz.sh                       # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh      # longer
#   FUZZ_TARGETS="stamp_reflect twamp_reflect" scripts/fuzz.sh
#   FUZZ_SANITIZER=none scripts/fuzz.sh   # no AddressSanitizer
#
# Seeds each target's corpus (fuzz/corpus/<target>/, git-ignored) from the
# UDP payloads of the golden captures in ../shared/interop (or
# $RICOCHET_SHARED), then runs it for FUZZ_SECONDS and prints, per target,
# executions, coverage (libFuzzer's covered edges and features) and findings
# (crash artifacts under fuzz/artifacts/<target>/). Exits 1 if any target
# crashed or could not run.
#
# The machine has a stable toolchain only: cargo-fuzz's nightly flags
# (-Zsanitizer, sanitizer-coverage) are enabled with RUSTC_BOOTSTRAP=1. If the
# AddressSanitizer build fails (no sanitizer runtime for the host), the
# script falls back to `--sanitizer none`: libFuzzer's coverage guidance and
# Rust's own checks (bounds, overflow with debug assertions) still apply, and
# the fuzzed crate forbids `unsafe`.
set -uo pipefail

cd "$(dirname "$0")/.."
root=$PWD
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked || { echo "fuzz: cannot install cargo-fuzz" >&2; exit 1; }
fi

# Targets: one file per target in fuzz/fuzz_targets/, each with its [[bin]].
declared=$(cd fuzz && cargo fuzz list 2>/dev/null) || { echo "fuzz: cargo fuzz list failed" >&2; exit 1; }
targets=()
for f in fuzz/fuzz_targets/*.rs; do
  t=$(basename "$f" .rs)
  if ! grep -qx "$t" <<<"$declared"; then
    echo "fuzz: $f has no [[bin]] entry in fuzz/Cargo.toml (see fuzz/README.md)" >&2
    exit 1
  fi
  targets+=("$t")
done
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
fi

# Build every target once; fall back to no sanitizer if ASan is unavailable.
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
echo "fuzz: building the fuzz targets (sanitizer: $sanitizer)"
if ! cargo fuzz build --fuzz-dir fuzz -s "$sanitizer" >"$build_log" 2>&1; then
  if [ "$sanitizer" != none ]; then
    echo "fuzz: build with sanitizer '$sanitizer' failed; retrying with --sanitizer none" >&2
    tail -n 5 "$build_log" >&2
    sanitizer=none
    if ! cargo fuzz build --fuzz-dir fuzz -s none >"$build_log" 2>&1; then
      cat "$build_log" >&2
      echo "fuzz: build failed" >&2
      exit 1
    fi
  else
    cat "$build_log" >&2
    echo "fuzz: build failed" >&2
    exit 1
  fi
fi

# Seed corpus from the golden captures (skipped, with a warning, without them).
if (cd fuzz && cargo run -q --example seed_corpus --features captures -- "$root/fuzz/corpus") \
  >"$build_log" 2>&1; then
  echo "fuzz: seeds from the golden captures: $(tr '\n' ' ' <"$build_log")"
else
  echo "fuzz: warning: no seeds from the golden captures (set RICOCHET_SHARED?):" >&2
  tail -n 3 "$build_log" >&2
fi

status=0
summary=()
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  before=$(find "$artifacts" -type f | sort)
  log=fuzz/artifacts/$t.log
  echo "fuzz: $t for ${seconds}s"
  cargo fuzz run --fuzz-dir fuzz -s "$sanitizer" "$t" "$corpus" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  last=$(grep -E '(DONE|pulse|NEW|REDUCE|INITED) +cov:' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | grep -v '^$' || true)
  findings=$(grep -c . <<<"$new" || true)
  if [ "$rc" -ne 0 ] || [ "$findings" -gt 0 ]; then
    status=1
    echo "fuzz: $t FAILED (exit $rc); log: $log" >&2
    grep -E 'panicked at|ERROR: |SUMMARY: ' "$log" | head -n 5 >&2
    [ -n "$new" ] && echo "$new" | sed 's/^/  artifact: /' >&2
  fi
  summary+=("$(printf '%-22s %12s %8s %6s %6s %12s %9s' "$t" "${execs:-?}" "${rate:-?}" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "$findings")")
done

echo
echo "fuzz: ${seconds}s per target, sanitizer: $sanitizer"
printf '%-22s %12s %8s %6s %6s %12s %9s\n' target executions exec/s cov ft corpus findings
printf '%s\n' "${summary[@]}"
[ "$status" -eq 0 ] && echo "fuzz: no findings" || echo "fuzz: FINDINGS — see fuzz/artifacts/" >&2
exit "$status"
