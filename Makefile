# Ricochet: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup build test lint unit demo fuzz bench stamp-followup clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --all-targets

## The test command (README, .ci/run): formatting, lints, every test;
## then the same for the fuzz crate (its own workspace and Cargo.lock, plain
## stable cargo): its harnesses run over the seeds built from the golden
## captures (fuzz/tests/seeds.rs). It builds into fuzz/target (or
## CARGO_TARGET_DIR): about 3 minutes cold on 2 busy cores, 1.3 s warm.
test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	cd fuzz && $(CARGO) fmt -- --check
	cd fuzz && $(CARGO) clippy --features captures --all-targets -- -D warnings
	cd fuzz && $(CARGO) test --features captures

## The main job: set up, build, run the lab demo.
demo: setup
	$(CARGO) build --workspace --release
	bash scripts/demo.sh

## Bounded fuzzing of every parser and state machine (about a minute per target).
fuzz: setup
	bash scripts/fuzz.sh

## The standard benchmark comparison in the namespace lab (under 10 minutes):
## writes bench/results/<timestamp>/ (report.json, table.md, PNG plots).
## ricochet-reflector is built first: the xdp and afxdp targets run it.
## perfSONAR twampd (not part of this repository) is measured when
## RICOCHET_TWAMPD names it or it is on PATH; by default a build under
## ../peers/install is used if there is one (docs/interop-perfsonar.md).
bench: export RICOCHET_TWAMPD ?= $(wildcard $(CURDIR)/../peers/install/bin/twampd)
bench: setup
	$(CARGO) build --release -p ricochet-reflector --bin ricochet-reflector
	$(CARGO) run --release -p ricochet-bench --bin ricochet-bench -- --targets all --sizes min,112,512,1500 --trial-secs 1 --max-trials 12

## STAMP on the socket, XDP and AF_XDP paths in the lab (root): prints the
## distribution of (Follow-Up T3 - in-packet T3) per path (RICOCHET_STAMP_COUNT
## packets per path, default 2000).
stamp-followup: setup
	$(CARGO) build --release -p ricochet-reflector -p ricochet-control -p ricochet-bench --bins
	RICOCHET_STAMP_COUNT=$${RICOCHET_STAMP_COUNT:-2000} $(CARGO) test --release -p ricochet-bench --test lab_stamp -- --nocapture --test-threads 1

clean:
	$(CARGO) clean
