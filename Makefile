# Thin wrappers: every target delegates to ./qwengate-dev, which does the
# set-up (venvs in .venv/, Debian packages when missing) by itself.
#   make test ARGS=tests.test_trial_summary     trial arguments
#   make bench ARGS="--help"
#   make check-config CONFIG=etc/qwengate/demo.yaml

ARGS ?=
CONFIG ?= etc/qwengate/demo.yaml

.PHONY: demo test test-debian12 test-newest bench check-config deb check-deb clean help

help:
	./qwengate-dev help

demo:
	./qwengate-dev demo

test:
	./qwengate-dev test $(ARGS)

test-debian12:
	./qwengate-dev test-debian12 $(ARGS)

test-newest:
	./qwengate-dev test-newest $(ARGS)

bench:
	./qwengate-dev bench $(ARGS)

check-config:
	./qwengate-dev check-config $(CONFIG)

deb:
	./qwengate-dev deb

check-deb:
	./qwengate-dev check-deb $(ARGS)

clean:
	./qwengate-dev clean
