#!/bin/bash
# test-coldplug.sh - the coldplug test (part of run-all.sh, i.e. the test
# suite): boots Debian's kernel with its whole module tree and the host's
# systemd-udevd twice on the same VM layout, once with udev's builtin
# "kmod load" and once with udev/80-drivers.rules + modbrokerd, runs
# `udevadm trigger --type=devices --action=add; udevadm settle`, and fails
# unless
#   - both VM runs passed their own checks and every traced load call was
#     attributed to a module (see coldplug-analyze.awk),
#   - /proc/modules holds the same modules after both runs,
#   - the broker run made no more load calls than distinct modules attempted,
#   - no call in the broker run returned EBUSY,
#   - no call in the broker run returned EEXIST for an already-live module.
# Prints a side-by-side table, also written to $MB_VM_WORK/coldplug-test.md.
#
# Usage: tests/vm/test-coldplug.sh
# Env: MB_VM_SMP (8), MB_VM_MEM (3072), MB_VM_TIMEOUT (900 s per boot),
#      MB_VM_COMPRESS (lz4), KVER, MB_VM_MODROOT, MB_VM_KERNEL, MODBROKERD, MODBROKER.
set -eu
. "$(dirname "$0")/coldplug-lib.sh"

smp=${MB_VM_SMP:-8}
mkdir -p "$MB_VM_WORK"
CP_INITRD=$MB_VM_WORK/coldplug-$KVER.initrd
t0=$(date +%s)
cp_build_initrd "$CP_INITRD"
vm_ok=1
cp_run builtin "$smp" test || vm_ok=0
cp_run broker "$smp" test || vm_ok=0
b=$MB_VM_WORK/coldplug-test-builtin.kv k=$MB_VM_WORK/coldplug-test-broker.kv

echo
echo "== coldplug, kernel $KVER, $smp vCPUs, $(($(date +%s) - t0)) s in all"
cp_table "$b" "$k" | tee "$MB_VM_WORK/coldplug-test.md"
echo
if cp_judge "$b" "$k" && [ "$vm_ok" = 1 ]; then
	echo "== coldplug: PASS"
else
	echo "== coldplug: FAIL"
	exit 1
fi
