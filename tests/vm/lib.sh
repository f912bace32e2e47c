# shellcheck shell=sh
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
#   udev_burst N OUTDIR TARGET  the same with `modbroker load --udev TARGET` (udev_env)
#   trace_mark / trace_time first|last|K / trace_time_after / exec_count / execs_reach / finit_tid / load_secs (scale tests)

MB_CHECKS=0
MB_FAILS=0
TRACE=/sys/kernel/tracing
KVER=$(uname -r)
MODDIR=/lib/modules/$KVER
# The code's constants a scenario names on its "# consts:" line, as
# NAME=SECONDS (written by build-initramfs.sh from src/protocol.rs).
# shellcheck disable=SC1091
[ ! -f /etc/mb-vm.conf ] || . /etc/mb-vm.conf

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
# exec_span PATTERN: "N execs over S s" for programs whose exec'd filename
# matches PATTERN since trace_reset (how concurrent a burst really was).
exec_span() {
	grep 'sched_process_exec:' "$TRACE/trace" | grep "filename=[^ ]*$1" |
	awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i + 0; break }
		if (n == 0 || t < lo) lo = t; if (t > hi) hi = t; n++ }
		END{printf "%d execs over %.3f s\n", n, hi - lo}' || true
}
# finit_span: "entries over A s, first entry to last exit B s" for finit_module.
finit_span() {
	grep 'sys_finit_module' "$TRACE/trace" |
	awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i + 0; break }
		if (n == 0 || t < lo) lo = t; if (t > hi) hi = t; n++
		if ($0 ~ /sys_finit_module\(/) { if (e == 0 || t < elo) elo = t; if (t > ehi) ehi = t; e++ } }
		END{printf "%d entries over %.3f s, first entry to last exit %.3f s\n", e, ehi - elo, hi - lo}' || true
}
# burst_overlapped PATTERN: true when the last exec of a program matching
# PATTERN came before the first finit_module returned, i.e. every client of
# a burst was running while the (first) load was still in flight.
burst_overlapped() {
	grep -E "sched_process_exec:.*filename=[^ ]*$1|sys_finit_module -> " "$TRACE/trace" |
	awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i + 0; break }
		if ($0 ~ /sched_process_exec/) { if (t > lastexec) lastexec = t }
		else if (firstexit == 0 || t < firstexit) firstexit = t }
		END{ if (firstexit == 0) { print "no finit_module returned"; exit 1 }
			printf "last client exec %.3f s, first finit_module return %.3f s\n", lastexec, firstexit
			exit !(lastexec < firstexit) }'
}
# trace_mark TEXT: a "tracing_mark_write: TEXT" line in the trace, to time
# the scenario's own steps on the trace's clock.
trace_mark() { echo "$*" >"$TRACE/trace_marker"; }
# trace_time first|last|K PATTERN: timestamp (s) of the first, last or K-th
# trace line matching the extended regex PATTERN; empty if there is none.
trace_time() {
	grep -E "$2" "$TRACE/trace" |
	awk -v which="$1" '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i + 0; break }
		n++; if (n == 1) first = t; if (n == which + 0) kth = t; last = t }
		END{ if (which == "first" && n) printf "%.3f\n", first
			else if (which == "last" && n) printf "%.3f\n", last
			else if (kth != "") printf "%.3f\n", kth }' || true
}
# trace_time_after MARK_ERE ERE: timestamp (s) of the first line matching ERE
# after the first line matching MARK_ERE; empty if there is none.
trace_time_after() {
	awk -v m="$1" -v p="$2" '!seen && $0 ~ m { seen = 1; next }
		seen && $0 ~ p { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { printf "%.3f\n", $i + 0; exit } }' "$TRACE/trace"
}
# exec_count PATTERN: execs of programs whose filename ends in PATTERN since trace_reset.
exec_count() { grep 'sched_process_exec:' "$TRACE/trace" | grep -c "filename=[^ ]*$1 " || true; }
# execs_reach PATTERN N: at least N execs of programs whose filename ends in PATTERN.
execs_reach() { [ "$(exec_count "$1")" -ge "$2" ]; }
# finit_tid: thread ids that entered finit_module since trace_reset, one per line.
finit_tid() { grep ' sys_finit_module(' "$TRACE/trace" | sed -E 's/^ *.*-([0-9]+) +\[.*/\1/'; }
# load_secs: first finit_module entry to last finit_module return, in seconds.
load_secs() {
	awk -v a="$(trace_time first ' sys_finit_module\(')" -v b="$(trace_time last ' sys_finit_module -> ')" \
		'BEGIN{ if (a == "" || b == "") print "none"; else printf "%.2f\n", b - a }'
}
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
# secs_diff A B: B - A in seconds, "none" if either is empty.
secs_diff() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "") print "none"; else printf "%.2f\n", b - a }'; }
# secs_le A B: A <= B (decimal seconds; false when A is empty or "none").
secs_le() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a ~ /^-?[0-9.]+$/ && a + 0 <= b + 0)}'; }

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
	while [ "$(find "$dir" -name 'ready.*' | wc -l)" -lt "$n" ] && [ "$tries" -gt 0 ]; do
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
# udev_env: export the environment udev gives its RUN programs (SUBSYSTEM,
# DEVPATH; a CPU's uevent), for `modbroker load --udev` run after it.
udev_env() { export SUBSYSTEM=cpu DEVPATH=/devices/system/cpu/cpu0; }
# udev_burst N OUTDIR TARGET: udev_env, then a burst of `modbroker load --udev TARGET`.
udev_burst() { udev_env; burst "$1" "$2" modbroker load --udev "$3"; }
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
# burst_out_count DIR ERE: how many copies' stdout has a line matching ERE.
burst_out_count() { grep -lE "$2" "$1"/out.* 2>/dev/null | wc -l; }

# --- broker helpers
SOCK=${MODBROKER_SOCKET:-/run/modbroker.sock}
DAEMON_LOG=/tmp/modbrokerd.log

# start_daemon: start modbrokerd in the background (stderr -> $DAEMON_LOG),
# poll (bounded, 30 s) for its socket.  Sets DAEMON_PID.
start_daemon() {
	NO_COLOR=1 modbrokerd --socket "$SOCK" --module-dir "$MODDIR" --log-level info "$@" >"$DAEMON_LOG" 2>&1 &
	DAEMON_PID=$!
	t0=$(uptime_s)
	tries=300
	while [ "$tries" -gt 0 ]; do
		if [ -S "$SOCK" ]; then
			say "modbrokerd (pid $DAEMON_PID) listening on $SOCK after $(elapsed "$t0" "$(uptime_s)")s"
			return 0
		fi
		daemon_alive || break
		usleep 100000
		tries=$((tries - 1))
	done
	daemon_alive && why="did not appear within 30 s" || why="never appeared: modbrokerd exited"
	say "modbrokerd socket $SOCK $why; daemon log:"
	sed 's/^/  modbrokerd: /' "$DAEMON_LOG"
	return 1
}

# daemon_up CHECK_TEXT [DAEMON_ARGS...]: start_daemon, check that it is
# listening, and end the scenario there if it is not (nothing after would mean
# anything).
daemon_up() {
	what=$1; shift
	rc=0; start_daemon "$@" || rc=$?
	check_eq "$what" 0 "$rc"
	[ "$rc" = 0 ] || finish
}
stop_daemon() {
	kill "$DAEMON_PID" 2>/dev/null || true
	wait "$DAEMON_PID" 2>/dev/null || true
}
daemon_alive() { kill -0 "$DAEMON_PID" 2>/dev/null; }
show_daemon_log() { tail -n "${1:-40}" "$DAEMON_LOG" | sed "s/$(printf '\033')\[[0-9;]*m//g; s/^/  modbrokerd: /"; }

# mb_run NAME ARGS...: run `modbroker ARGS...`, show its output, set
# MB_RC / MB_OUT / MB_ERR (files /tmp/NAME.out, /tmp/NAME.err).
mb_run() {
	n=$1; shift
	MB_OUT=/tmp/$n.out; MB_ERR=/tmp/$n.err; MB_RC=0
	echo "  \$ modbroker $*"
	modbroker "$@" >"$MB_OUT" 2>"$MB_ERR" || MB_RC=$?
	sed 's/^/  stdout: /' "$MB_OUT"
	sed 's/^/  stderr: /' "$MB_ERR"
	echo "  exit: $MB_RC"
}

# in_flight_waiting MODULE N: MODULE is initialising (initstate coming) and
# the daemon's status shows its load in flight with N requests waiting.
in_flight_waiting() {
	[ "$(cat "/sys/module/$1/initstate" 2>/dev/null)" = coming ] &&
		modbroker status 2>/dev/null | grep -q "in flight: $1 for [0-9]* ms, $2 waiting"
}

# json_num FILE FIELD: the number after "FIELD": in a JSON text (first match).
json_num() { tr -d '\n' <"$1" | grep -o "\"$2\"[[:space:]]*:[[:space:]]*[0-9][0-9]*" | head -n1 | sed 's/.*:[[:space:]]*//'; }

# e1000_modalias: modalias of the e1000 NIC qemu provides (8086:100e).
e1000_modalias() {
	for f in /sys/bus/pci/devices/*; do
		if [ "$(cat "$f/vendor")" = 0x8086 ] && [ "$(cat "$f/device")" = 0x100e ]; then
			cat "$f/modalias"; return 0
		fi
	done
	return 1
}
