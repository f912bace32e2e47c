#!/bin/bash
# bench.sh - the real-boot table: Debian 12 (initramfs-tools) and 13 (dracut, host-only), stock
# against modbroker, at each vCPU count given (default 4 16; `make bench` adds 64), each pair
# booted MB_BENCH_PAIRS times (default 3). A pair is booted side by side in one run (stock, then
# broker) by run.sh, which also judges it; a pair that fails a check fails the bench.
#   tests/boot/bench.sh [SMP...]    writes build/boot/bench.md and build/boot/bench/SMP/*.summary
# The table gives, per image, vCPU count and boot, the median and min-max over the pairs of:
# load calls, udev's execs of the client, the last load call's end in each phase, and multi-user.target reached (all from
# the kernel's start, seconds of the guest's monotonic clock), and the guest's soft lockups and
# RCU stalls summed over the pairs (an emulator artefact that delays every load; see summarise).
set -uo pipefail
# shellcheck source=tests/boot/lib.sh
. "$(dirname "$0")/lib.sh"
PAIRS=${MB_BENCH_PAIRS:-3}
out=$MB_BOOT_WORK/bench
mkdir -p "$out"
failed=0
smps=("$@")
[ "${#smps[@]}" -gt 0 ] || smps=(4 16)
for smp in "${smps[@]}"; do
	mkdir -p "$out/$smp"
	for image in bookworm:initramfs-tools trixie:dracut; do
		dist=${image%%:*} gen=${image#*:}
		for pair in $(seq "$PAIRS"); do
			MB_BOOT_SMP=$smp "$BOOT_DIR/run.sh" "$dist-stock" "$dist-broker" >"$out/$smp/$dist.$pair.log" 2>&1 ||
				{ failed=1; log "$dist at $smp vCPUs, pair $pair: a check failed (see $out/$smp/$dist.$pair.log)"; }
			tail -n 1 "$out/$smp/$dist.$pair.log"
			for case in stock broker; do
				cp "$MB_BOOT_WORK/$dist-$gen/$dist-$case/summary" "$out/$smp/$dist-$case.$pair.summary" 2>/dev/null
			done
		done
	done
done
# One row per image, vCPU count and boot: "median (min-max)" of each figure over its pairs.
{
	echo "| image | vCPUs | boot | pairs | load calls initramfs / root | client execs initramfs / root | EEXIST + EBUSY | last load ended, initramfs (s) | last load ended, root (s) | multi-user reached (s) | guest stalls |"
	echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
	for dir in "$out"/*/; do
		smp=$(basename "$dir")
		for name in bookworm-stock bookworm-broker trixie-stock trixie-broker; do
			ls "$dir/$name".*.summary >/dev/null 2>&1 || continue
			awk -F= -v smp="$smp" -v name="$name" -f "$BOOT_DIR/bench-row.awk" "$dir/$name".*.summary
		done
	done | sort -t'|' -k2,2 -k3,3n -k4,4r
} >"$MB_BOOT_WORK/bench.md"
cat "$MB_BOOT_WORK/bench.md"
exit "$failed"
