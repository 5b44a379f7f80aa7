# Two commands do everything on a fresh machine:
#   make demo   set up .venv if needed, then run the offline end-to-end demo
#   make test   set up .venv if needed, then run the test suite
WORKDIR ?= /tmp/musicsae-demo
.PHONY: setup demo test bench clean
setup:
	@bash scripts/setup.sh
demo: setup
	.venv/bin/python -m launch.demo --workdir=$(WORKDIR)
test: setup
	.venv/bin/python -m pytest -q tests
bench: setup
	.venv/bin/python bench/store.py
clean:
	rm -rf .venv
