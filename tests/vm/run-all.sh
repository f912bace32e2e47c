#!/bin/bash
# run-all.sh - run every VM scenario (or the ones named) one after another and
# print a closing "N passed, N failed" line; exits non-zero if any failed.
# Usage: tests/vm/run-all.sh [SCENARIO...]   (default: selftest broker faults demo baseline coldplug)
# "coldplug" runs test-coldplug.sh (two boots, builtin vs broker) rather than
# run.sh; the other names are single-boot scenarios under scenarios/.
# NAME@6.12 runs scenario NAME on Debian's 6.12 kernel from
# bookworm-backports (fetched and unpacked under build/ by
# fetch-kernel-6.12.sh, never installed), whose modules ship as .ko.xz.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
scenarios=${*:-selftest broker faults demo baseline coldplug}
passed=0 failed=0 failed_names=
for s in $scenarios; do
	runner=("$here/run.sh" "$s")
	[ "$s" != coldplug ] || runner=("$here/test-coldplug.sh")
	case $s in *@6.12) runner=("$here/run-6.12.sh" "${s%@6.12}") ;; esac
	if "${runner[@]}"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1)); failed_names="$failed_names $s"
	fi
done
[ -z "$failed_names" ] || echo "vm: failed scenarios:$failed_names"
echo "vm: $passed passed, $failed failed"
[ "$failed" = 0 ]
