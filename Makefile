# Two commands do everything on a fresh machine:
#   make demo   set up .venv if needed, then run the offline end-to-end demo
#   make test   set up .venv if needed, then run the test suite
# make organism trains the model organism and scores the chain against it (~40 min, 2 cores)
WORKDIR ?= /tmp/musicsae-demo
ORGANISM_WORKDIR ?= /tmp/musicsae-organism
.PHONY: setup demo test bench clean organism
setup:
	@bash scripts/setup.sh
demo: setup
	.venv/bin/python -m launch.demo --workdir=$(WORKDIR)
test: setup
	.venv/bin/python -m pytest -q tests
organism: setup
	.venv/bin/python -m launch.organism --workdir=$(ORGANISM_WORKDIR)
bench: setup
	.venv/bin/python bench/store.py
clean:
	rm -rf .venv
