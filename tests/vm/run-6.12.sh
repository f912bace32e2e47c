#!/bin/bash
# run-6.12.sh - run one VM scenario on Debian's 6.12 kernel from
# bookworm-backports instead of the host's 6.1.
#
# Usage: tests/vm/run-6.12.sh SCENARIO
# fetch-kernel-6.12.sh downloads and unpacks the kernel under build/ (never
# installed on the host) and prints KVER, MB_VM_MODROOT and MB_VM_KERNEL; the
# scenario then boots that kernel with modules taken from that tree.  6.12
# ships its modules as .ko.xz and decompresses xz itself
# (/sys/module/compression = xz), so this covers finit_module's
# MODULE_INIT_COMPRESSED_FILE path with real distro modules.  The test
# modules (tests/modules) are built for the host's kernel only and are not in
# the image.  The console log is $MB_VM_WORK/SCENARIO-6.12.log.
set -eu
. "$(dirname "$0")/common.sh"
scenario=${1:?usage: tests/vm/run-6.12.sh SCENARIO}

use_kernel_612
export MB_VM_LOG=${MB_VM_LOG:-$MB_VM_WORK/$scenario-6.12.log}
exec "$REPO_ROOT/tests/vm/run.sh" "$scenario"
