#!/bin/bash
# run.sh - run one of modbroker's real-kernel scenarios in a qemu VM.
#
# Usage: tests/vm/run.sh SCENARIO        (tests/vm/scenarios/SCENARIO.sh)
# Builds the test modules and the initramfs, boots Debian's kernel under qemu
# (TCG), streams the serial console to stdout and to
# $MB_VM_WORK/SCENARIO.log, and exits 0 only if the VM printed the line
# "MB-RESULT: PASS".  A missing tool fails the run, never skips it.
# Env: MODBROKERD, MODBROKER (default target/release/{modbrokerd,modbroker}),
#      MB_VM_SMP (4), MB_VM_MEM (1024), MB_VM_TIMEOUT (300 s), KVER,
#      MB_VM_WORK (build/vm), MB_VM_MODULES, MB_VM_APPEND (extra kernel args),
#      MB_VM_KERNEL (default /boot/vmlinuz-$KVER),
#      MB_VM_INITRD (boot this prebuilt initramfs; skips both build steps),
#      MB_VM_LOG (console log, default $MB_VM_WORK/SCENARIO.log).
set -eu
. "$(dirname "$0")/common.sh"

# shellcheck disable=SC2012 # our own scenario file names, for the usage message
scenario=${1:?usage: tests/vm/run.sh SCENARIO (one of: $(cd "$REPO_ROOT/tests/vm/scenarios" && ls | sed 's/\.sh$//' | tr '\n' ' '))}
sfile=$REPO_ROOT/tests/vm/scenarios/$scenario.sh
[ -f "$sfile" ] || die "no scenario $sfile"

need qemu-system-x86_64 qemu-system-x86
need timeout coreutils
kernel=${MB_VM_KERNEL:-/boot/vmlinuz-$KVER}
[ -r "$kernel" ] || die "$kernel not readable: install 'linux-image-amd64'"

# Scenarios that need the broker say so with a "# needs: broker" line.
if grep -q '^# needs: broker' "$sfile"; then
	export MODBROKERD=${MODBROKERD:-$REPO_ROOT/target/release/modbrokerd}
	export MODBROKER=${MODBROKER:-$REPO_ROOT/target/release/modbroker}
	for b in "$MODBROKERD" "$MODBROKER"; do
		[ -x "$b" ] || die "$b not found: build it first (cargo build --release) or set MODBROKERD/MODBROKER"
	done
fi

mkdir -p "$MB_VM_WORK"
t0=$(date +%s.%N)
if [ -n "${MB_VM_INITRD:-}" ]; then
	[ -f "$MB_VM_INITRD" ] || die "MB_VM_INITRD=$MB_VM_INITRD not found"
	initrd=$MB_VM_INITRD
	t1=$t0
else
	# Test modules are built for the host's kernel only (see build-initramfs.sh).
	[ -n "$MB_VM_MODROOT" ] || "$REPO_ROOT/tests/modules/build.sh" >/dev/null
	t1=$(date +%s.%N)
	initrd=$MB_VM_WORK/initramfs-$scenario.gz
	"$REPO_ROOT/tests/vm/build-initramfs.sh" "$sfile" "$initrd"
fi
t2=$(date +%s.%N)

log=${MB_VM_LOG:-$MB_VM_WORK/$scenario.log}
smp=${MB_VM_SMP:-4}
tmo=${MB_VM_TIMEOUT:-300}
echo "== booting $KVER, $smp vcpus, scenario $scenario (timeout ${tmo}s), log $log"
set +e
timeout --foreground -k 5 "$tmo" qemu-system-x86_64 \
	-accel tcg,thread=multi -cpu max -m "${MB_VM_MEM:-1024}" -smp "$smp" \
	-nographic -no-reboot \
	-nic none -device e1000,romfile= \
	-kernel "$kernel" -initrd "$initrd" \
	-append "console=ttyS0 panic=-1 quiet log_buf_len=4M ${MB_VM_APPEND:-}" \
	</dev/null 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
t3=$(date +%s.%N)

timing=$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" \
	'BEGIN{printf "modules %.1fs, initramfs %.1fs, qemu %.1fs", b-a, c-b, d-c}')
echo "== $scenario: $timing (qemu exit $rc)"
[ "$rc" != 124 ] || { echo "== $scenario: FAIL (VM killed after ${tmo}s timeout)"; exit 1; }
if tr -d '\r' <"$log" | grep -qx 'MB-RESULT: PASS'; then
	echo "== $scenario: PASS"
	exit 0
fi
echo "== $scenario: FAIL (no 'MB-RESULT: PASS' marker; $(tr -d '\r' <"$log" | grep -c '^MB-CHECK: FAIL') failed checks)"
exit 1
