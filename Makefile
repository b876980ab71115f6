# waly: build, run and test.
#   make run         start a private Postgres (.waly/pg, port 5433) and waly in front of it
#   make test        install what the tests need, then run them all
#   make bench       run the benchmarks (bench/run.sh)
#   make stop        stop the private Postgres
#   make fmt         format the Rust code
#   make clean-data  stop the private Postgres and remove .waly/

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := run

PG_DIR := .waly/pg
PG_PORT := 5433
# The password of the `postgres` role, in Postgres and for clients of waly.
export PGPASSWORD ?= postgres

# Tools the Rust test harness uses to drive real clients through waly.
export WALY_PYTHON := $(CURDIR)/.waly/venv/bin/python
export WALY_NODE_MODULES := $(CURDIR)/tests/clients/node/node_modules

.PHONY: run test bench stop fmt clean-data

run:
	scripts/deps.sh build
	scripts/pg.sh start $(PG_DIR) $(PG_PORT)
	psql -q -h 127.0.0.1 -p $(PG_PORT) -U postgres -d postgres -v ON_ERROR_STOP=1 -f migrations/example/accounts.sql
	cargo build
	@echo
	@echo "waly: connect to postgres://postgres:$(PGPASSWORD)@127.0.0.1:6432/postgres"
	@echo
	WALY_PASSWORD_POSTGRES=$${PGPASSWORD:-postgres} ./target/debug/waly serve --config config/waly.yaml

# The fuzzer runs first so that cargo test's summary closes the output. The write-path and crash
# suites run three times: on the file log with the default direct commit, again with two-phase commit
# (WALY_COMMIT_PROTOCOL=two-phase), then on Kafka (WALY_TEST_LOG_BACKEND=kafka) against tansu: the
# crash suite on its durable engine, the write-path suite in memory, as each engine fails one of
# them for reasons of its own (README, "The Kafka backend"). The test cluster
# (target/waly-test-pg) and the Kafka brokers (target/waly-test-kafka/*), started by the Rust
# harness, are stopped afterwards, pass or fail.
test:
	scripts/deps.sh test
	scripts/fuzz.sh $${FUZZ_SECONDS:-60}
	status=0; cargo test --no-fail-fast || status=$$?; \
	  WALY_COMMIT_PROTOCOL=two-phase cargo test --no-fail-fast --test write_path --test crash || status=$$?; \
	  WALY_TEST_LOG_BACKEND=kafka cargo test --no-fail-fast --test write_path || status=$$?; \
	  WALY_TEST_LOG_BACKEND=kafka WALY_TEST_KAFKA_DURABLE=1 cargo test --no-fail-fast --test crash || status=$$?; \
	  scripts/pg.sh stop target/waly-test-pg >/dev/null 2>&1 || true; \
	  for d in target/waly-test-kafka/*/; do \
	    if [[ -d $$d ]]; then scripts/kafka.sh stop "$$d" >/dev/null 2>&1 || true; fi; \
	  done; \
	  rm -rf target/waly-test-kafka; exit $$status

bench:
	bench/run.sh

stop:
	scripts/pg.sh stop $(PG_DIR)

fmt:
	cargo fmt

clean-data: stop
	rm -rf .waly
