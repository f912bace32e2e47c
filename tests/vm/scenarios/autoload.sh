#!/bin/sh
# autoload.sh - modbroker as the kernel's module autoload helper: with
# /proc/sys/kernel/modprobe pointing at a symlink named `modprobe` to
# /usr/bin/modbroker, the kernel's own request_module() calls (here from
# `mount -t FSTYPE`, which asks for "fs-FSTYPE" before it looks at the
# device) run `modprobe -q -- fs-FSTYPE`, which asks modbrokerd.  Checks that
# the module and its dependencies get loaded, that every finit_module call was
# made by modbrokerd (trace comm), that the daemon's counters saw the
# requests, that concurrent autoloads of one filesystem are merged, that a
# name nothing provides costs no load, and that with the daemon stopped the
# helper falls back to `modbrokerd --oneshot`.
# (The mounts themselves fail: the source is /dev/null, not a block device;
# the kernel requests the filesystem module before it looks at the source.)
# needs: broker
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

N=${MB_BURST:-8}
HELPER=/run/mb-autoload/modprobe

# Counts for the trace since trace_reset:
# finit_module entries made by a task whose comm is modbrokerd (daemon
# threads and `modbrokerd --oneshot` both carry that name).
finit_by_broker() { grep ' sys_finit_module(' "$TRACE/trace" | grep -Ec '^ *modbrokerd-[0-9]+ ' || true; }
# execs of the kernel's helper (the symlink) and of modbrokerd.
helper_execs() { grep -c "sched_process_exec: filename=$HELPER " "$TRACE/trace" || true; }
daemon_execs() { grep -c 'sched_process_exec: filename=[^ ]*/modbrokerd ' "$TRACE/trace" || true; }
# distinct modules that got through the kernel's duplicate check into init.
loaded_events() { grep -o 'module_load: [a-z0-9_]*' "$TRACE/trace" | sort -u | wc -l; }
# Daemon counters: "targets" counts load targets only (not status requests).
status_num() { modbroker status --json >/tmp/status.json 2>/dev/null && json_num /tmp/status.json "$1"; }
# try_mount FSTYPE: mount -t FSTYPE /dev/null /mnt, expected to fail after the
# kernel has requested the module; shows the message.
try_mount() {
	rc=0
	mount -t "$1" /dev/null /mnt 2>/tmp/mount.err || rc=$?
	echo "  \$ mount -t $1 /dev/null /mnt: exit $rc: $(cat /tmp/mount.err)"
}
# shellcheck disable=SC2317 # called through check (shellcheck 0.9 does not see that)
not_loaded() { ! is_loaded "$1"; }

step "start modbrokerd, point /proc/sys/kernel/modprobe at modbroker"
daemon_up "modbrokerd is listening on $SOCK"
mkdir -p /run/mb-autoload /mnt
ln -sf /usr/bin/modbroker "$HELPER"
echo "$HELPER" >/proc/sys/kernel/modprobe
check_eq "kernel.modprobe is the modbroker symlink" "$HELPER" "$(cat /proc/sys/kernel/modprobe)"
check "vfat not loaded yet" not_loaded vfat
check "fat not loaded yet" not_loaded fat
check "btrfs not loaded yet" not_loaded btrfs

step "(a) kernel autoload: mount -t vfat -> request_module(fs-vfat)"
req0=$(status_num targets); calls0=$(status_num load_calls)
trace_reset
try_mount vfat
trace_dump
grep "sched_process_exec: filename=$HELPER " "$TRACE/trace" | sed 's/^/  trace: /' || true
req1=$(status_num targets); calls1=$(status_num load_calls)
say "daemon load targets $req0 -> $req1, load_calls $calls0 -> $calls1"
check "(a) vfat in /proc/modules" is_loaded vfat
check "(a) dependency fat in /proc/modules" is_loaded fat
check "(a) the kernel ran the helper (exec of $HELPER)" test "$(helper_execs)" -ge 1
check_eq "(a) 2 finit_module calls (fat, vfat)" 2 "$(finit_calls)"
check_eq "(a) both made by modbrokerd" 2 "$(finit_by_broker)"
check_eq "(a) both returned 0" "0 0" "$(finit_results | tr '\n' ' ' | sed 's/ $//')"
check_eq "(a) daemon load targets +1 per helper exec" "$((${req0:-0} + $(helper_execs)))" "${req1:-x}"
check_eq "(a) daemon load_calls +2" "$((${calls0:-0} + 2))" "${calls1:-x}"
check_eq "(a) no modbrokerd exec (no fallback)" 0 "$(daemon_execs)"
show_daemon_log 6

step "(b) kernel autoload of a name nothing provides: mount -t mbnosuchfs"
trace_reset
try_mount mbnosuchfs
req2=$(status_num targets)
check "(b) the kernel ran the helper" test "$(helper_execs)" -ge 1
check_eq "(b) daemon load targets +1 per helper exec" "$((${req1:-0} + $(helper_execs)))" "${req2:-x}"
check_eq "(b) no finit_module call" 0 "$(finit_calls)"
check "(b) mount failed with 'No such device'" grep -qi 'no such device' /tmp/mount.err
mb_rc=0; "$HELPER" -q -- fs-mbnosuchfs >/tmp/b.out 2>/tmp/b.err || mb_rc=$?
check_eq "(b) '$HELPER -q -- fs-mbnosuchfs' exits 0 (no-match)" 0 "$mb_rc"
check_eq "(b) and prints nothing on stdout" "" "$(cat /tmp/b.out)"

step "(c) $N concurrent kernel autoloads: $N x mount -t btrfs"
trace_reset; kmsg_mark
req3=$(status_num targets); merged0=$(status_num merged)
burst "$N" /tmp/bc mount -t btrfs /dev/null /mnt
req4=$(status_num targets); merged=$(status_num merged)
trace_dump
say "helper execs: $(helper_execs); finit_module: $(finit_span); results: $(results_summary finit_module)"
say "daemon load targets $req3 -> $req4, merged $merged0 -> $merged"
proc_modules '^(btrfs|libcrc32c|xor|raid6_pq|zstd_compress|crc32c[_a-z]*|blake2b_generic) '
check "(c) btrfs in /proc/modules" is_loaded btrfs
for m in libcrc32c xor raid6_pq zstd_compress; do
	check "(c) dependency $m in /proc/modules" is_loaded $m
done
fc=$(finit_calls)
check "(c) at least the 5 modules were loaded ($fc finit_module calls)" test "$fc" -ge 5
check_eq "(c) every finit_module call made by modbrokerd" "$fc" "$(finit_by_broker)"
check_eq "(c) one finit_module per module (calls = distinct module_load events)" "$fc" "$(loaded_events)"
check_eq "(c) no finit_module failed (no EEXIST/EBUSY duplicates)" "" "$(finit_results | grep -v '^0$' | tr '\n' ' ')"
check "(c) the kernel ran the helper at least once" test "$(helper_execs)" -ge 1
check_eq "(c) daemon load targets +1 per helper exec" "$((${req3:-0} + $(helper_execs)))" "${req4:-x}"
check "(c) daemon still running" daemon_alive

step "(d) daemon stopped: kernel autoload falls back to modbrokerd --oneshot"
stop_daemon
check "(d) daemon gone" sh -c "! kill -0 $DAEMON_PID 2>/dev/null"
if ! { rmmod vfat && rmmod fat; }; then say "rmmod vfat fat failed"; fi
check "(d) vfat unloaded" not_loaded vfat
check "(d) fat unloaded" not_loaded fat
trace_reset
try_mount vfat
trace_dump
check "(d) vfat in /proc/modules again" is_loaded vfat
check "(d) fat in /proc/modules again" is_loaded fat
check "(d) the kernel ran the helper" test "$(helper_execs)" -ge 1
check "(d) the helper ran modbrokerd --oneshot (exec of modbrokerd)" test "$(daemon_execs)" -ge 1
check_eq "(d) 2 finit_module calls, both by modbrokerd" "2 2" "$(finit_calls) $(finit_by_broker)"

finish
