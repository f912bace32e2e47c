#!/bin/bash
# bench.sh - the real-boot table: Debian 12 (initramfs-tools) and 13 (dracut, host-only), stock
# against modbroker, at each vCPU count given (default 4 16; `make bench` adds 64). Each pair is
# booted side by side in one run (stock, then broker) by run.sh, which also judges them.
#   tests/boot/bench.sh [SMP...]    writes build/boot/bench.md and build/boot/bench/SMP/*.summary
set -uo pipefail
. "$(dirname "$0")/lib.sh"
out=$MB_BOOT_WORK/bench
mkdir -p "$out"
for smp in ${*:-4 16}; do
	mkdir -p "$out/$smp"
	for image in bookworm:initramfs-tools trixie:dracut; do
		dist=${image%%:*} gen=${image#*:}
		MB_BOOT_SMP=$smp "$BOOT_DIR/run.sh" "$dist-stock" "$dist-broker" | tee "$out/$smp/$dist.log"
		for case in stock broker; do
			cp "$MB_BOOT_WORK/$dist-$gen/$dist-$case/summary" "$out/$smp/$dist-$case.summary" 2>/dev/null
		done
	done
done
{
	echo "| image | vCPUs | boot | load calls initramfs / root | EEXIST | EBUSY | last load ended (s) | userspace (s) |"
	echo "|---|---:|---|---:|---:|---:|---:|---:|"
	for f in "$out"/*/*.summary; do
		smp=$(basename "$(dirname "$f")") name=$(basename "$f" .summary)
		awk -F= -v smp="$smp" -v name="$name" '
			{ v[$1] = $2 }
			END {
				split(name, p, "-"); img = (p[1] == "bookworm") ? "Debian 12, initramfs-tools" : "Debian 13, dracut host-only"
				printf "| %s | %s | %s | %d / %d | %d | %d | %.1f | %s |\n", img, smp, p[2],
					v["initramfs_calls"], v["root_calls"], v["initramfs_r_EEXIST"] + v["root_r_EEXIST"],
					v["initramfs_ebusy"] + v["root_ebusy"], v["root_last_end"], v["userspace_s"]
			}' "$f"
	done | sort -t'|' -k2,2 -k3,3n -k4,4r
} >"$MB_BOOT_WORK/bench.md"
cat "$MB_BOOT_WORK/bench.md"
