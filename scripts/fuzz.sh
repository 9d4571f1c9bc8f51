#!/usr/bin/env bash
# The fuzz targets (fuzz/, cargo-fuzz on the nightly toolchain): builds them and runs
# each for a bounded time (FUZZ_SECONDS, default 20) from its committed corpus. New
# inputs go to a scratch directory, so the committed corpus only changes on purpose
# (`cargo +nightly fuzz cmin`); a crash fails the run and leaves its input in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-20}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: SKIPPED: no nightly toolchain on this machine (cargo fuzz needs one)" >&2
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# No sanitizer: the workspace forbids unsafe code, so what is looked for is panics,
# hangs and runaway memory, which libFuzzer reports by itself.
cargo +nightly fuzz build -s none
for target in $(cargo +nightly fuzz list); do
  scratch=$(mktemp -d)
  log=$(mktemp)
  echo "fuzz: $target for ${seconds}s"
  status=0
  cargo +nightly fuzz run -s none "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=1024 >"$log" 2>&1 ||
    status=$?
  grep -E 'Done [0-9]+ runs|ERROR|panicked|SUMMARY' "$log" || tail -20 "$log"
  rm -rf "$scratch" "$log"
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target failed (exit $status); its input is in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
