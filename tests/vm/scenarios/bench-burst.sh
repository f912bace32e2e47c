#!/bin/sh
# bench-burst.sh - VM benchmark (run by tests/vm/bench.sh, not by run-all.sh):
# N concurrent requests to load mb_fail (init sleeps delay_ms=300 and fails
# with ENODEV), for each N in $MB_BENCH_NS (default 1 64 256 1024), two ways:
#   direct: mb-burst opens mb_fail.ko in N threads and calls finit_module in
#           all of them at once (what N uncoordinated loaders do);
#   broker: a freshly started modbrokerd, and mb-burst with N connections
#           open, sending all N load requests at once.
# mb-burst reports the time from release until the last caller had its answer
# and what the callers were told; this script adds the init attempts (the
# module's "mb_fail: init attempt" printk lines in dmesg since the step began)
# and the finit_module syscalls (trace). One "MB-BENCH: burst ..." line per
# run. "Fresh" module per N: a failed init leaves nothing loaded, so the
# kernel holds no state between runs; the daemon is restarted for every broker
# run so its failure window starts empty. Passes if every run completed and
# every caller got an answer; timings are reported, never judged.
# needs: broker
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

NS=${MB_BENCH_NS:-1 64 256 1024}
KO=$MODDIR/extra/mb_fail.ko
# 1024 connections need more than the default 1024 descriptors, in the daemon
# (inherits this shell's limit) and in mb-burst (raises its own soft limit).
# shellcheck disable=SC3045 # busybox sh's ulimit has -n
ulimit -n 4096 || say "cannot raise the open-file limit"
# shellcheck disable=SC3045 # busybox sh's ulimit has -n
say "open-file limit: $(ulimit -n)"

# one_run MODE N CMD...: run mb-burst, add counts, print the MB-BENCH line.
one_run() {
	mode=$1; n=$2; shift 2
	trace_reset; kmsg_mark
	out=$("$@" 2>/tmp/burst.err) || { say "mb-burst $mode $n failed: $(cat /tmp/burst.err)"; return 1; }
	attempts=$(kmsg_since 'mb_fail: init attempt')
	echo "$out attempts=$attempts finit=$(finit_calls)"
	total=$(printf '%s\n' "$out" | sed -n 's/.*outcomes=//p' | tr ',' '\n' | awk -F: '{s += $NF} END{print s + 0}')
	check_eq "$mode n=$n: every caller answered" "$n" "$total"
	check "$mode n=$n: mb_fail not left loaded" sh -c '! grep -q "^mb_fail " /proc/modules'
}

for n in $NS; do
	step "burst n=$n: direct finit_module"
	one_run direct "$n" mb-burst direct "$n" "$KO"
	step "burst n=$n: modbrokerd"
	daemon_up "daemon started for n=$n"
	one_run broker "$n" mb-burst broker "$n" "$SOCK" mb_fail
	stop_daemon
	grep -iE 'warn|error' "$DAEMON_LOG" | grep -v 'load failed' | head -n 5 | sed 's/^/  modbrokerd: /' || true
done

finish
