# lib.sh - assertions and kernel-observation helpers for the VM scenarios
# (sourced by /scenario.sh inside the VM, busybox sh).
#
#   check NAME CMD [ARG...]     PASS when CMD exits 0
#   check_eq NAME EXPECTED ACTUAL
#   finish                      prints the summary, exits 0 only if >=1 check
#                               ran and none failed
#   trace_reset / finit_calls / finit_results / module_load_events
#   dmesg_count PATTERN / kmsg_mark + kmsg_since PATTERN
#   burst N OUTDIR CMD [ARG...] run CMD N times concurrently behind a barrier

MB_CHECKS=0
MB_FAILS=0
TRACE=/sys/kernel/tracing
KVER=$(uname -r)
MODDIR=/lib/modules/$KVER

say() { echo "MB-INFO: $*"; }
step() { echo; echo "===== $* ====="; }

pass() { MB_CHECKS=$((MB_CHECKS + 1)); echo "MB-CHECK: PASS $1"; }
fail() { MB_CHECKS=$((MB_CHECKS + 1)); MB_FAILS=$((MB_FAILS + 1)); echo "MB-CHECK: FAIL $1 ($2)"; }

check() {
	name=$1; shift
	if "$@" >/tmp/check.out 2>&1; then
		pass "$name"
	else
		fail "$name" "command failed: $* :: $(head -c 300 /tmp/check.out | tr '\n' ' ')"
	fi
}

check_eq() {
	if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "expected '$2', got '$3'"; fi
}

finish() {
	echo
	echo "MB-SUMMARY: $MB_CHECKS checks, $MB_FAILS failed"
	if [ "$MB_CHECKS" -gt 0 ] && [ "$MB_FAILS" = 0 ]; then
		exit 0
	fi
	exit 1
}

# --- trace buffer (events enabled by /init)
trace_reset() { echo >"$TRACE/trace"; }
# Number of finit_module / init_module syscalls entered since trace_reset.
finit_calls() { grep -c ' sys_finit_module(' "$TRACE/trace" || true; }
init_module_calls() { grep -c ' sys_init_module(' "$TRACE/trace" || true; }
# Return values of finit_module since trace_reset, one per line, decoded
# to "0" or "-ERRNO" (the trace prints them as hex 64-bit values).
finit_results() { syscall_results finit_module; }
init_module_results() { syscall_results init_module; }
syscall_results() {
	sed -n "s/.* sys_$1 -> 0x\([0-9a-f]*\).*/\1/p" "$TRACE/trace" |
	while read -r hex; do
		case $hex in
		ffffffff????????) echo $((0x${hex#ffffffff} - 4294967296)) ;;
		*) echo $((0x$hex)) ;;
		esac
	done
}
# All module-load syscalls (finit_module + init_module) since trace_reset.
load_calls() { echo $(($(finit_calls) + $(init_module_calls))); }
# "N x RESULT" summary of a syscall's return values, e.g. "1x-19 63x-16".
results_summary() { syscall_results "$1" | sort | uniq -c | awk '{printf "%s%sx%s", sep, $1, $2; sep=" "} END{print ""}'; }
# module:module_load events (one per module that got past the duplicate
# check into init) since trace_reset, for module NAME (or all).
module_load_events() { grep -c "module_load: ${1:-}" "$TRACE/trace" || true; }
trace_dump() { grep -E 'finit_module|init_module|module_load' "$TRACE/trace" | sed 's/^/  trace: /' || true; }

# --- kernel log
dmesg_count() { dmesg | grep -c "$1" || true; }
kmsg_mark() { MB_KMSG_MARK=$(dmesg | wc -l); }
kmsg_since() { dmesg | tail -n +"$((MB_KMSG_MARK + 1))" | grep -c "$1" || true; }
kmsg_show_since() { dmesg | tail -n +"$((MB_KMSG_MARK + 1))" | grep -E "$1" | sed 's/^/  dmesg: /' || true; }

is_loaded() { grep -q "^$1 " /proc/modules; }
proc_modules() { grep -E "$1" /proc/modules | sed 's/^/  \/proc\/modules: /'; }

uptime_s() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk "BEGIN{printf \"%.2f\", $2-$1}"; }

# wait_for SECONDS CMD...: poll CMD every 0.1 s, bounded.
wait_for() {
	tries=$(($1 * 10)); shift
	while [ "$tries" -gt 0 ]; do
		"$@" 2>/dev/null && return 0
		usleep 100000
		tries=$((tries - 1))
	done
	return 1
}

# burst N OUTDIR CMD ARGS...: start N copies of CMD in the background, hold
# them at a barrier (a FIFO held open by this shell) until all N are ready,
# release them at once, wait for all.  Copy i writes OUTDIR/out.i, err.i, rc.i.
# Sets BURST_SECS (release -> all exited).
burst() {
	n=$1; dir=$2; shift 2
	rm -rf "$dir"; mkdir -p "$dir"
	mkfifo "$dir/gate"
	exec 9<>"$dir/gate"
	pids=
	i=1
	while [ "$i" -le "$n" ]; do
		(
			exec 8<"$dir/gate" 9<&-
			: >"$dir/ready.$i"
			read -r _ <&8 || true
			exec 8<&-
			rc=0
			"$@" >"$dir/out.$i" 2>"$dir/err.$i" || rc=$?
			echo "$rc" >"$dir/rc.$i"
		) &
		pids="$pids $!"
		i=$((i + 1))
	done
	tries=600
	while [ "$(ls "$dir" | grep -c '^ready\.')" -lt "$n" ] && [ "$tries" -gt 0 ]; do
		usleep 50000; tries=$((tries - 1))
	done
	[ "$tries" -gt 0 ] || say "burst: not all $n copies reached the barrier in 30 s"
	t0=$(uptime_s)
	exec 9<&-
	for p in $pids; do wait "$p" || true; done
	t1=$(uptime_s)
	BURST_SECS=$(elapsed "$t0" "$t1")
	say "burst of $n x '$*': all exited ${BURST_SECS}s after release"
}
# burst_rc_count DIR RC: how many copies exited with RC ("nonzero" allowed).
burst_rc_count() {
	if [ "$2" = nonzero ]; then
		cat "$1"/rc.* | grep -vc '^0$' || true
	else
		cat "$1"/rc.* | grep -c "^$2\$" || true
	fi
}
# burst_err_count DIR PATTERN: how many copies' stderr contains PATTERN.
burst_err_count() { grep -l "$2" "$1"/err.* 2>/dev/null | wc -l; }
