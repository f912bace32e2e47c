# modbroker — build, test, demo, install.
#
#   make test      install missing prerequisites, then every test: fmt, clippy, shellcheck,
#                  cargo test, the differential test against modprobe (tests/diff),
#                  a short fuzz run, and the real-kernel tests in a qemu VM (tests/vm)
#   make lint      cargo fmt --check, clippy (each feature set), and shellcheck on every shell
#                  file, each in its dialect (tools/shellcheck.sh)
#   make demo      install missing prerequisites, build, boot the VM and show the broker
#                  merging a burst of same-name requests on a real kernel
#   make install   DESTDIR=... PREFIX=/usr: binaries, systemd units, udev rule, config
#   make deb       build/modbroker_VERSION_ARCH.deb with dpkg-buildpackage (debian/), checked
#                  by lintian (0 errors, 0 warnings, also on the source package) and by
#                  installing, removing and purging it in a scratch dpkg root
#   make diff-test the differential test: `modbroker resolve --show-depends` against modprobe's
#                  on Debian 12 and 13's whole module trees and kmod's own test trees (tests/diff)
#   make boot-test real boots of Debian 12 (initramfs-tools) and 13 (dracut) with systemd as
#                  PID 1 and the .deb installed with dpkg (tests/boot; images cached in build/boot)
#   make fuzz      run each cargo-fuzz target (fuzz/) for FUZZ_SECONDS from the committed corpus
#   make bench     benchmarks (cargo bench and the VM benchmarks); see BENCHMARKS.md
#   make bench-startup  only the client start-up comparison (VM and host) of `make bench`
#   make soak      the full soak: 1,000,000 requests from 1,000 clients against the fake kernel
#                  (release build; `make test` runs a CI-sized one); see BENCHMARKS.md section 6

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/modbroker
# A manual install puts 80-drivers.rules where an administrator's overrides go; the Debian package
# puts it in /usr/lib/udev/rules.d and diverts udev's file of that name (debian/preinst).
UDEVRULESDIR ?= $(SYSCONFDIR)/udev/rules.d
MANDIR     ?= $(PREFIX)/share/man
DATADIR    ?= $(PREFIX)/share
# initramfs generators look only under /usr: with another PREFIX their pieces are installed but
# not used, and the initramfs keeps udev's builtin loading (80-drivers.rules falls back to it).
INITRAMFSDIR ?= $(DATADIR)/initramfs-tools
DRACUTDIR  ?= $(PREFIX)/lib/dracut/modules.d
CARGO      ?= cargo
# VM scenarios run by `make test` (tests/vm/scenarios/NAME.sh).
# NAME@6.12: on Debian's 6.12 from bookworm-backports (tests/vm/run-6.12.sh).
# `coldplug` (busybox + udevd, whole module tree) is left to `make bench` and manual runs: the
# real boots of `make boot-test` check the same properties on real systems and keep CI < 30 min.
VM_TESTS   ?= selftest broker faults autoload compressed compressed@6.12 slowinit wedged
# Seconds each fuzz target runs in `make fuzz` (and so in `make test`).
FUZZ_SECONDS ?= 30

# The client as installed: static-pie, built without the libkmod feature (Cargo.toml, [features];
# README, "Why the client is static") for this machine's target with the `client` profile, so in
# target/TRIPLE/client.
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
CLIENT_BIN  = target/$(HOST_TRIPLE)/client/modbroker
RELEASE_BINS = target/release/modbrokerd $(CLIENT_BIN)

.PHONY: all build docs deps deb test lint check-units unit-test diff-test fuzz vm-test boot-test demo install uninstall bench bench-startup soak clean

all: build

build:
	$(CARGO) build --release --locked
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile client --locked \
		--no-default-features --bin modbroker --target $(HOST_TRIPLE)
	tools/check-hardening.sh $(RELEASE_BINS)

deps:
	tools/install-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --all-targets --all-features -- -D warnings
	$(CARGO) clippy --locked --no-default-features --lib --bin modbroker -- -D warnings
	tools/shellcheck.sh
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps --lib
	python3 tools/check-layers.py --self-test
	python3 tools/check-layers.py

unit-test:
	$(CARGO) test --locked

# Installs cargo-fuzz if missing; builds with the stable toolchain (see tools/fuzz.sh).
fuzz:
	tools/fuzz.sh $(FUZZ_SECONDS)

vm-test: build
	MODBROKER=$(CURDIR)/$(CLIENT_BIN) tests/vm/run-all.sh $(VM_TESTS)

check-units: build
	tools/check-units.sh

deb:
	tools/make-deb.sh

diff-test: build
	tests/diff/run.sh

boot-test: deb
	tests/boot/run.sh

test: deps lint check-units deb unit-test diff-test fuzz vm-test boot-test

demo: deps build
	tests/vm/run.sh demo

bench: deps deb
	tests/boot/bench.sh 4 16 64
	tests/vm/bench.sh
	tests/vm/bench-coldplug.sh
	python3 tools/charts.py coldplug build/vm/bench-coldplug.csv docs/bench-coldplug.svg

# Only the client start-up comparison of `make bench` (new client, old client, modprobe; VM and host).
bench-startup: deps build
	tests/vm/bench.sh startup startup-host

soak:
	MB_SOAK_REQUESTS=1000000 MB_SOAK_CLIENTS=1000 $(CARGO) test --release --locked --test soak -- --nocapture

# Man pages and shell completions, generated from the clap definitions (src/cli.rs).
docs:
	$(CARGO) run --release --locked --features docs --bin modbroker-gen-docs -- build/docs

install: build docs
	install -D -m 0755 target/release/modbrokerd $(DESTDIR)$(BINDIR)/modbrokerd
	install -D -m 0755 $(CLIENT_BIN) $(DESTDIR)$(BINDIR)/modbroker
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(UDEVRULESDIR)
	sed 's|/usr/bin/|$(BINDIR)/|g' systemd/modbroker.service > $(DESTDIR)$(UNITDIR)/modbroker.service
	install -m 0644 systemd/modbroker.socket $(DESTDIR)$(UNITDIR)/modbroker.socket
	install -m 0644 systemd/modbroker-install.socket $(DESTDIR)$(UNITDIR)/modbroker-install.socket
	sed 's|/usr/bin/|$(BINDIR)/|g' systemd/modbroker-install@.service > $(DESTDIR)$(UNITDIR)/modbroker-install@.service
	sed 's|/usr/bin/|$(BINDIR)/|g' udev/80-drivers.rules > $(DESTDIR)$(UDEVRULESDIR)/80-drivers.rules
	for f in hooks/modbroker scripts/init-top/modbroker scripts/init-bottom/modbroker; do \
		install -d $(DESTDIR)$(INITRAMFSDIR)/$$(dirname $$f); \
		sed 's|/usr/bin/|$(BINDIR)/|g' initramfs-tools/$$f > $(DESTDIR)$(INITRAMFSDIR)/$$f; \
		chmod 0755 $(DESTDIR)$(INITRAMFSDIR)/$$f; \
	done
	install -D -m 0755 dracut/90modbroker/module-setup.sh $(DESTDIR)$(DRACUTDIR)/90modbroker/module-setup.sh
	install -D -m 0644 dracut/90modbroker/initrd.conf $(DESTDIR)$(DRACUTDIR)/90modbroker/initrd.conf
	install -D -m 0644 config/modbroker.toml $(DESTDIR)$(SYSCONFDIR)/modbroker/modbroker.toml
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 docs/protocol.md $(DESTDIR)$(DOCDIR)/protocol.md
	install -D -m 0644 docs/blame-json.md $(DESTDIR)$(DOCDIR)/blame-json.md
	install -D -m 0644 build/docs/man8/modbrokerd.8 $(DESTDIR)$(MANDIR)/man8/modbrokerd.8
	install -D -m 0644 build/docs/man8/modbroker.8 $(DESTDIR)$(MANDIR)/man8/modbroker.8
	for b in modbroker modbrokerd; do \
		install -D -m 0644 build/docs/completions/$$b.bash $(DESTDIR)$(DATADIR)/bash-completion/completions/$$b; \
		install -D -m 0644 build/docs/completions/_$$b $(DESTDIR)$(DATADIR)/zsh/vendor-completions/_$$b; \
		install -D -m 0644 build/docs/completions/$$b.fish $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/$$b.fish; \
	done

# On the running system (no DESTDIR, systemd running) the units are stopped and disabled before
# their files go, and systemd and udev reload after: removed unit files would leave the daemon
# running and dangling enablement links. Requests meanwhile load directly or through the builtin.
LIVE_SYSTEMD = [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null
uninstall:
	if $(LIVE_SYSTEMD); then systemctl disable --now modbroker.socket modbroker-install.socket modbroker.service || true; fi
	rm -f $(DESTDIR)$(BINDIR)/modbrokerd $(DESTDIR)$(BINDIR)/modbroker
	rm -f $(DESTDIR)$(UNITDIR)/modbroker.service $(DESTDIR)$(UNITDIR)/modbroker.socket \
		$(DESTDIR)$(UNITDIR)/modbroker-install.socket $(DESTDIR)$(UNITDIR)/modbroker-install@.service
	rm -f $(DESTDIR)$(UDEVRULESDIR)/80-drivers.rules
	rm -f $(DESTDIR)$(INITRAMFSDIR)/hooks/modbroker $(DESTDIR)$(INITRAMFSDIR)/scripts/init-top/modbroker \
		$(DESTDIR)$(INITRAMFSDIR)/scripts/init-bottom/modbroker
	rm -rf $(DESTDIR)$(DRACUTDIR)/90modbroker
	rm -rf $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(MANDIR)/man8/modbrokerd.8 $(DESTDIR)$(MANDIR)/man8/modbroker.8
	for b in modbroker modbrokerd; do \
		rm -f $(DESTDIR)$(DATADIR)/bash-completion/completions/$$b $(DESTDIR)$(DATADIR)/zsh/vendor-completions/_$$b \
			$(DESTDIR)$(DATADIR)/fish/vendor_completions.d/$$b.fish; \
	done
	if $(LIVE_SYSTEMD); then systemctl daemon-reload; udevadm control --reload || true; fi
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/modbroker/modbroker.toml; rebuild the initramfs (update-initramfs -u or dracut -f)"

clean:
	$(CARGO) clean
	rm -rf build
