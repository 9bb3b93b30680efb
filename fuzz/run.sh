#!/bin/sh
# Runs one fuzz target for a number of seconds on the committed seed corpus.
#   fuzz/run.sh client_stream 300
#   fuzz/run.sh server_stream 300
#   fuzz/run.sh import_conf 300
# cargo-fuzz needs nightly compiler features; RUSTC_BOOTSTRAP=1 unlocks them on stable.
# If sanitizer builds fail on this machine, set SANITIZER=none.
# Install cargo-fuzz once with: cargo install cargo-fuzz
set -eu
target=${1:?usage: fuzz/run.sh <client_stream|server_stream|import_conf|check_config|header_rewrite> <seconds>}
seconds=${2:-60}
cd "$(dirname "$0")/.."
mkdir -p "fuzz/corpus/$target" fuzz/artifacts
# New inputs go to a scratch directory; the committed corpus stays small.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
RUSTC_BOOTSTRAP=1 cargo fuzz run -s "${SANITIZER:-address}" "$target" \
    "$scratch" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=1024 -timeout=10
