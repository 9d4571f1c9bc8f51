# The two commands a new user needs, from a fresh clone on Debian with Rust installed:
#   make up     install what the build needs, build, and start a whole mesh (causeway up)
#   make test   install what the tests need, and run them (CI runs this too)
# Other targets: make build (the release binary and its man pages), make deps, make fuzz
# (every fuzz target for FUZZ_SECONDS each, default 20; see fuzz/README.md).

.PHONY: up build test deps fuzz

# The release binary, and its man pages in target/man.
build: deps
	cargo build --release -p causeway-cli
	target/release/causeway man --out-dir target/man

up: build
	target/release/causeway up

test:
	scripts/test.sh

deps:
	scripts/deps.sh build

fuzz:
	scripts/fuzz.sh
