#!/bin/sh
# selftest.sh - proves the VM harness itself, without the broker: busybox
# modprobe/insmod stand in for modbroker.  Checks that the module tree and
# its depmod indexes are real (dependency, alias, modalias lookups), that
# acpi-cpufreq fails with ENODEV under qemu, and that the trace buffer and
# dmesg counting helpers see exactly the finit_module calls that happen.
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

step "module tree"
check "modules.dep lists vfat -> fat" grep -q '^kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko$' "$MODDIR/modules.dep"
check "modules.dep lists mb_user -> mb_base" grep -q '^extra/mb_user.ko: extra/mb_base.ko$' "$MODDIR/modules.dep"
check "modules.alias has mbtest:ok" grep -q '^alias mbtest:ok mb_ok$' "$MODDIR/modules.alias"
check "modules.alias.bin exists" test -s "$MODDIR/modules.alias.bin"

step "dependency load (modprobe vfat)"
trace_reset
check "modprobe vfat exits 0" modprobe vfat
check "vfat in /proc/modules" is_loaded vfat
check "fat in /proc/modules" is_loaded fat
check_eq "2 finit_module calls for vfat+fat" 2 "$(finit_calls)"
proc_modules '^(v?fat) '

step "failing init (acpi-cpufreq, ENODEV under qemu)"
trace_reset
rc=0; insmod "$MODDIR/kernel/drivers/cpufreq/acpi-cpufreq.ko" 2>/tmp/acpi.err || rc=$?
sed 's/^/  insmod: /' /tmp/acpi.err
check "insmod acpi-cpufreq fails" test "$rc" != 0
check_eq "1 finit_module call" 1 "$(finit_calls)"
check_eq "finit_module returned -19 (ENODEV)" "-19" "$(finit_results)"
check "acpi_cpufreq not in /proc/modules" sh -c '! grep -q "^acpi_cpufreq " /proc/modules'

step "e1000 via its PCI modalias"
alias=$(e1000_modalias) || alias=
say "e1000 modalias: $alias"
check "found e1000 PCI device" test -n "$alias"
check "modprobe <modalias> exits 0" modprobe "$alias"
check "e1000 in /proc/modules" is_loaded e1000

step "alias lookup (mbtest:ok)"
check "modprobe mbtest:ok exits 0" modprobe mbtest:ok
check "mb_ok in /proc/modules" is_loaded mb_ok

step "counting helpers: 4 concurrent insmod mb_fail"
# busybox insmod tries finit_module and falls back to init_module when that
# fails, so both syscalls are counted.  How many of the 4 copies reach the
# module's init is the kernel's business; the helpers must agree with it.
trace_reset; kmsg_mark
burst 4 /tmp/b4 insmod "$MODDIR/extra/mb_fail.ko"
check_eq "4 finit_module calls" 4 "$(finit_calls)"
attempts=$(kmsg_since 'mb_fail: init attempt')
say "init attempts: $attempts; finit_module results: $(results_summary finit_module); init_module results: $(results_summary init_module)"
check "at least one init attempt" test "$attempts" -ge 1
check_eq "module_load events == dmesg init attempts" "$attempts" "$(module_load_events mb_fail)"
check_eq "4 copies exited non-zero" 4 "$(burst_rc_count /tmp/b4 nonzero)"
check_eq "4 copies printed 'No such device' or 'busy'" 4 "$(burst_err_count /tmp/b4 'No such device\|busy')"
trace_dump

finish
