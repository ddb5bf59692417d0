#!/usr/bin/env bash
# The property tests at length: the SSE parser, usage in every wire format, the meter and
# the request-body rewrite, for CASES cases in all (default 1,000,000) split evenly across
# the properties, in a release build. Bounded: the build and then the run are each stopped
# after PROPTEST_LONG_TIMEOUT seconds (default 1200). A failure is shrunk and saved under
# proptest-regressions/, which the normal suite replays first.
#
#   scripts/proptest-long.sh [CASES]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

total=${1:-1000000}
limit=${PROPTEST_LONG_TIMEOUT:-1200}
props=(
    usage::proptests::
    proxy::rewrite::tests::edits_splice_only_the_edited_values
    proxy::rewrite::tests::only_edited_members_change
)

timeout "$limit" cargo test --locked --release --lib --no-run
count=$(cargo test --locked --release --lib -q -- --list "${props[@]}" | grep -c ': test$' || true)
if [ "$count" -eq 0 ]; then
    echo "proptest-long: no property tests match ${props[*]}" >&2
    exit 1
fi
per=$(((total + count - 1) / count))
echo "proptest-long: $count properties x $per cases = $((count * per)) cases, limit ${limit}s"
start=$(date +%s)
PROPTEST_CASES=$per timeout "$limit" cargo test --locked --release --lib -- "${props[@]}"
echo "proptest-long: $((count * per)) cases passed in $(($(date +%s) - start)) s"
