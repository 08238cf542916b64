# The two commands of the README: `make demo` and `make test`. Both install what is
# missing, are idempotent, and keep everything under .local/ (git-ignored).
SHELL := /bin/bash
VENV := .local/venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install services services-stop services-reset status unit clean cluster cluster-stop

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -c requirements.lock -e '.[test,bench]'
	@touch $(STAMP)

install: $(STAMP)
	@services/rabbitmq.sh install
	@services/kafka.sh install
	@services/prometheus.sh install
	@services/kcat.sh install

services: install
	@services/rabbitmq.sh start
	@services/kafka.sh start

services-stop:
	@services/kafka.sh stop
	@services/rabbitmq.sh stop

# Kafka without any topic: the tests leave theirs behind, and many thousands of
# partitions slow the broker down (run before measuring the benchmarks).
services-reset: install
	@services/kafka.sh reset

# The 3-node Kafka cluster of the failure tests (services/kafka-cluster.sh; pytest starts
# it when a cluster test runs and it is down).
cluster: install
	@services/kafka-cluster.sh start

cluster-stop:
	@services/kafka-cluster.sh stop

status:
	@services/rabbitmq.sh status || true
	@services/kafka.sh status || true

# Starts the services if they are not running and stops them afterwards only if it
# started them, so a developer's warm brokers survive a test run.
test: install
	@started=$$(services/started-by-us.sh); \
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	services/started-by-us.sh --stop "$$started"; exit $$rc

unit: $(STAMP)
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The end-to-end demo (demo/README.md): two simulated sites, the real bridge and worker, A
# converging live. Starts the brokers that are down and stops only those afterwards, also on
# Ctrl-C. DEMO_ARGS passes options, e.g. DEMO_ARGS="--users 10000".
demo: install
	@started=$$(services/started-by-us.sh); \
	trap 'true' INT TERM; \
	$(PY) -m demo $(DEMO_ARGS); rc=$$?; \
	services/started-by-us.sh --stop "$$started"; exit $$rc

clean: services-stop
	rm -rf .local
