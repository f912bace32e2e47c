#!/bin/sh
# build.sh - build the harness self-test stand-ins (NOT the broker) into
# $MB_VM_WORK/standin/ and print the env to use them:
#   eval "$(tests/vm/standin/build.sh)"; tests/vm/run.sh broker
set -eu
REPO_ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$REPO_ROOT/tests/vm/common.sh"
need gcc gcc
out=$MB_VM_WORK/standin
mkdir -p "$out"
gcc -O2 -Wall -o "$out/modbrokerd" "$REPO_ROOT/tests/vm/standin/standin-daemon.c"
install -m 0755 "$REPO_ROOT/tests/vm/standin/standin-client.sh" "$out/modbroker"
echo "export MODBROKERD=$out/modbrokerd MODBROKER=$out/modbroker"
