# The two commands of the README: `make demo` and `make test`. Both install what is
# missing, are idempotent, and keep everything under .local/ (git-ignored).
SHELL := /bin/bash
VENV := .local/venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install services services-stop status unit clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)
	@services/rabbitmq.sh install
	@services/kafka.sh install

services: install
	@services/rabbitmq.sh start
	@services/kafka.sh start

services-stop:
	@services/kafka.sh stop
	@services/rabbitmq.sh stop

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

# Until the end-to-end demo exists: start the services and say how to reach them.
demo: services
	@echo; echo "Local services are running:"; \
	echo "  Kafka               127.0.0.1:9092"; \
	echo "  RabbitMQ AMQP       amqp://guest:guest@127.0.0.1:5672/"; \
	echo "  RabbitMQ STOMP      stomp://127.0.0.1:61613"; \
	echo "  RabbitMQ web-STOMP  ws://127.0.0.1:15674/ws"; \
	echo "  RabbitMQ management http://127.0.0.1:15672 (guest/guest)"; \
	echo "Stop them with: make services-stop"

clean: services-stop
	rm -rf .local
