# Two commands do everything on a fresh machine:
#   make demo   set up .venv if needed, then run the offline end-to-end demo
#   make test   set up .venv if needed, then run the test suite
# make organism trains the model organism, scores the chain against it and steers it (~65 min, 2 cores)
WORKDIR ?= /tmp/musicsae-demo
ORGANISM_WORKDIR ?= /tmp/musicsae-organism
# Test processes (pytest-xdist, one test file per worker): 2 fits a 2-core, 24 GB machine;
# each worker peaks at about 4 GB. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
.PHONY: setup demo test bench clean organism
setup:
	@bash scripts/setup.sh
demo: setup
	.venv/bin/python -m launch.demo --workdir=$(WORKDIR)
test: setup
	.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests
organism: setup
	.venv/bin/python -m launch.organism --workdir=$(ORGANISM_WORKDIR)
bench: setup
	.venv/bin/python bench/store.py
clean:
	rm -rf .venv
