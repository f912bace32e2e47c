#!/bin/bash
# run-all.sh - run every VM scenario (or the ones named) one after another and
# print a closing "N passed, N failed" line; exits non-zero if any failed.
# Usage: tests/vm/run-all.sh [SCENARIO...]   (default: selftest broker faults demo baseline coldplug)
# "coldplug" runs test-coldplug.sh (two boots, builtin vs broker) rather than
# run.sh; the other names are single-boot scenarios under scenarios/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
scenarios=${*:-selftest broker faults demo baseline coldplug}
passed=0 failed=0 failed_names=
for s in $scenarios; do
	runner=("$here/run.sh" "$s")
	[ "$s" != coldplug ] || runner=("$here/test-coldplug.sh")
	if "${runner[@]}"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1)); failed_names="$failed_names $s"
	fi
done
[ -z "$failed_names" ] || echo "vm: failed scenarios:$failed_names"
echo "vm: $passed passed, $failed failed"
[ "$failed" = 0 ]
