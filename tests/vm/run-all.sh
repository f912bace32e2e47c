#!/bin/bash
# run-all.sh - run every VM scenario (or the ones named) one after another and
# print a closing "N passed, N failed" line; exits non-zero if any failed.
# Usage: tests/vm/run-all.sh [SCENARIO...]   (default: selftest broker demo baseline)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
scenarios=${*:-selftest broker demo baseline}
passed=0 failed=0 failed_names=
for s in $scenarios; do
	if "$here/run.sh" "$s"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1)); failed_names="$failed_names $s"
	fi
done
[ -z "$failed_names" ] || echo "vm: failed scenarios:$failed_names"
echo "vm: $passed passed, $failed failed"
[ "$failed" = 0 ]
