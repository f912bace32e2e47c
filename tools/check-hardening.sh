#!/bin/sh
# check-hardening.sh - check that each BINARY has the ELF hardening Debian expects of a Rust
# program: position-independent (PIE), RELRO with immediate binding (BIND_NOW, so the whole GOT
# is read-only after start-up) and a non-executable stack. Prints one line per binary saying
# also whether it is dynamic or static-pie; exits 1 on the first one that lacks something.
# Run by `make build`. Uses readelf (binutils); `hardening-check` (devscripts) reports the same
# and more (stack protector and fortify have no Rust counterpart and read "no" for every Rust
# binary, static or not).
#
# Usage: tools/check-hardening.sh BINARY...
set -eu
command -v readelf >/dev/null || { echo "check-hardening: readelf missing: install 'binutils'" >&2; exit 1; }
for bin in "$@"; do
	fail() { echo "check-hardening: $bin: $*" >&2; exit 1; }
	[ -f "$bin" ] || fail "no such file"
	readelf -hW "$bin" | grep -q 'Type:[[:space:]]*DYN' || fail "not position-independent (PIE)"
	phdrs=$(readelf -lW "$bin")
	echo "$phdrs" | grep -q 'GNU_RELRO' || fail "no RELRO segment"
	echo "$phdrs" | grep 'GNU_STACK' | grep -q 'RWE' && fail "executable stack"
	readelf -dW "$bin" | grep -Eq '\(FLAGS\).*BIND_NOW|\(FLAGS_1\).*NOW' || fail "no BIND_NOW"
	if echo "$phdrs" | grep -q 'INTERP'; then link=dynamic; else link=static-pie; fi
	echo "check-hardening: $bin: PIE, RELRO, BIND_NOW, NX stack ($link)"
done
