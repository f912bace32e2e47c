#!/bin/bash
# bench-coldplug.sh - the coldplug benchmark (not part of the test suite):
# the same builtin-vs-broker pair as test-coldplug.sh, at several vCPU counts
# and on two kernels (the host's Debian 6.1 and Debian's 6.12 from
# bookworm-backports, fetched by fetch-kernel-6.12.sh into build/).  It never
# fails because of a measured number, only when it cannot run; every run's
# numbers are reported, including failed ones (the VM checks row says so).
#
# Usage: tests/vm/bench-coldplug.sh
# Env: MB_BENCH_CPUS ("8 16 32"), MB_BENCH_KERNELS ("6.1 6.12"), plus
#      run.sh's (MB_VM_MEM 3072, MB_VM_TIMEOUT 900 s per boot, ...);
#      MB_BENCH_REPORT_ONLY=1 boots nothing and rebuilds the two files from the
#      per-run $MB_VM_WORK/coldplug-bench-*.kv files already there.
# Writes (rewritten after every pair, so partial results survive):
#   $MB_VM_WORK/bench-coldplug.md   markdown tables, paste into BENCHMARKS.md
#   $MB_VM_WORK/bench-coldplug.csv  one row per boot, for charts
# Targets reported per broker column: load calls == distinct modules
# attempted, zero EBUSY, trigger+settle at most 0.6x the builtin's, plus the
# same modules in /proc/modules as the builtin run and passing VM checks.
set -eu
. "$(dirname "$0")/coldplug-lib.sh"

cpus_list=${MB_BENCH_CPUS:-8 16 32}
kernels=${MB_BENCH_KERNELS:-6.1 6.12}
md=$MB_VM_WORK/bench-coldplug.md
csv=$MB_VM_WORK/bench-coldplug.csv
mkdir -p "$MB_VM_WORK"
started=$(date -u '+%Y-%m-%d %H:%M UTC')
host_kver=$KVER

echo "kernel,cpus,mode,settle_s,finit_calls,init_calls,calls,ret_0,ret_EEXIST,ret_EBUSY,ret_ENODEV,ret_other,distinct_attempted,modules_loaded,eexist_live,client_execs,vm_result" >"$csv"
csv_row() { # KV
	local f=$1 other
	other=$(grep '^r_' "$f" | grep -v -E '^r_(0|EEXIST|EBUSY|ENODEV)=' | awk -F= '{printf "%s%s:%s", s, substr($1, 3), $2; s=" "}')
	echo "$(cp_get "$f" kernel),$(cp_get "$f" cpus),$(cp_get "$f" mode),$(cp_get "$f" settle),$(cp_get "$f" finit),$(cp_get "$f" init),$(cp_get "$f" calls),$(cp_get "$f" r_0),$(cp_get "$f" r_EEXIST),$(cp_get "$f" r_EBUSY),$(cp_get "$f" r_ENODEV),$other,$(cp_get "$f" distinct_attempted),$(cp_get "$f" modules_loaded),$(cp_get "$f" eexist_live),$(cp_get "$f" client_execs),$(cp_get "$f" vm_result)" >>"$csv"
}

# Extra rows under a kernel's table: settle ratio and targets per broker column.
target_rows() { # KV... (builtin, broker, builtin, broker, ...)
	local ratio="| broker / builtin trigger+settle |" tgt="| broker meets targets |" b k r
	while [ $# -ge 2 ]; do
		b=$1 k=$2; shift 2
		r=$(awk -v x="$(cp_get "$k" settle)" -v y="$(cp_get "$b" settle)" 'BEGIN{ if (y > 0) printf "%.2f", x / y; else print "n/a" }')
		ratio="$ratio | $r |"
		t=""
		[ "$(cp_get "$k" calls)" -le "$(cp_get "$k" distinct_attempted)" ] || t="$t calls>modules"
		[ "$(cp_get "$k" ebusy)" = 0 ] || t="$t EBUSY"
		awk -v r="$r" 'BEGIN{ exit !(r != "n/a" && r <= 0.6) }' || t="$t settle>0.6x"
		[ "$(cp_get "$k" after_list)" = "$(cp_get "$b" after_list)" ] || t="$t modules-differ"
		[ "$(cp_get "$k" vm_result)" = PASS ] || t="$t VM-checks-failed"
		tgt="$tgt | ${t:- yes} |"
	done
	echo "$ratio"
	echo "$tgt"
}

write_md() {
	{
		echo "### Coldplug: udev builtin \`kmod load\` vs modbroker"
		echo
		echo "- command: \`tests/vm/bench-coldplug.sh\` (MB_BENCH_CPUS=\"$cpus_list\", MB_BENCH_KERNELS=\"$kernels\")"
		echo "- started: $started$([ "${MB_BENCH_REPORT_ONLY:-0}" = 1 ] && echo " (tables rebuilt from earlier runs' .kv files)"); host: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)), $(free -g | awk '/^Mem:/{print $2}') GiB RAM"
		echo "- VM: $(qemu-system-x86_64 --version | head -n1), TCG (-accel tcg,thread=multi -cpu max), -m $MB_VM_MEM, -nic none -device e1000; initramfs with the whole module tree (${MB_VM_COMPRESS:-lz4})"
		echo "- udev: host's systemd-udevd $(dpkg-query -W -f '${Version}' udev 2>/dev/null), \`udevadm trigger --type=devices --action=add\` + \`udevadm settle\`; libkmod $(dpkg-query -W -f '${Version}' kmod 2>/dev/null)"
		echo "- counting: syscall tracepoints sys_{enter,exit}_{finit,init}_module; calls attributed to modules by a kprobe on do_sys_openat2 (see tests/vm/README.md)"
		echo
		cat "$MB_VM_WORK"/bench-coldplug-k*.md 2>/dev/null || true
	} >"$md"
}

report_only=${MB_BENCH_REPORT_ONLY:-0}
[ "$report_only" = 1 ] || rm -f "$MB_VM_WORK"/bench-coldplug-k*.md
for kn in $kernels; do
	if [ "$report_only" = 1 ]; then
		kvs=
		for smp in $cpus_list; do
			for mode in builtin broker; do
				f=$MB_VM_WORK/coldplug-bench-$kn-$smp-$mode.kv
				[ -f "$f" ] || continue
				kvs="$kvs $f"; csv_row "$f"
			done
		done
		[ -n "$kvs" ] || continue
		# shellcheck disable=SC2086
		{ echo "#### Kernel $(cp_get "$(echo $kvs | cut -d" " -f1)" kernel)"; echo; cp_table $kvs; target_rows $kvs; echo; } >"$MB_VM_WORK/bench-coldplug-k$kn.md"
		continue
	fi
	case $kn in
	6.1) unset MB_VM_MODROOT MB_VM_KERNEL; export KVER=$host_kver ;;
	6.12) use_kernel_612 ;;
	*) die "unknown kernel '$kn' in MB_BENCH_KERNELS (6.1, 6.12)" ;;
	esac
	CP_INITRD=$MB_VM_WORK/coldplug-$KVER.initrd
	cp_build_initrd "$CP_INITRD"
	kvs=
	for smp in $cpus_list; do
		for mode in builtin broker; do
			echo "== bench: kernel $KVER, $smp vCPUs, $mode"
			cp_run "$mode" "$smp" "bench-$kn-$smp" || echo "== bench: $KVER $smp $mode: VM checks FAILED (reported in the table)"
			kvs="$kvs $MB_VM_WORK/coldplug-bench-$kn-$smp-$mode.kv"
			csv_row "$MB_VM_WORK/coldplug-bench-$kn-$smp-$mode.kv"
		done
		{
			echo "#### Kernel $KVER"
			echo
			# shellcheck disable=SC2086
			cp_table $kvs
			# shellcheck disable=SC2086
			target_rows $kvs
			echo
		} >"$MB_VM_WORK/bench-coldplug-k$kn.md"
		write_md
	done
done
write_md
cat "$md"
echo "== bench: wrote $md and $csv"
