# Two commands on a fresh machine with python3 (3.11+) and make: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Serve the app with gunicorn on 127.0.0.1:$PORT (default 5000); embedded Redis when REDIS_URL
## is unset. Ctrl-C, or killing this make, stops gunicorn, its workers and the embedded Redis.
run: $(STAMP)
	IVR_STOP_WITH_PARENT=1 exec $(BIN)/gunicorn --config python:ivr.gunicorn_config "ivr:create_app()"

## The whole suite with coverage (fails under 85 %), after a lint.
test: $(STAMP)
	$(BIN)/ruff check ivr tests bench
	$(BIN)/pytest --cov=ivr --cov-report=term --cov-fail-under=85

lint: $(STAMP)
	$(BIN)/ruff check ivr tests bench
	$(BIN)/ruff format --check ivr tests bench

## Our webhooks and API against three peers (static TwiML, signature + one read, the Twilio
## tutorial webhook) on the same gunicorn settings, 10 rounds; then the caller's seconds.
bench: $(STAMP)
	$(BIN)/python -m bench

## Capacity: concurrent paced calls through the whole default flow for some minutes, e.g.
## make soak SOAK_ARGS="--calls 1000 --minutes 5 --ramp-seconds 30" (defaults: 100 calls, 1 min).
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage htmlcov
