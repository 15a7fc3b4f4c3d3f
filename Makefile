# Two commands, each doing its own set-up on a fresh machine:
#   make demo   the rl_finetune graph end to end on the MuJoCo twin with the tiny policy (CPU only)
#   make test   the test suite
VENV := .venv
# Keep all ROS traffic on this machine; one DDS domain per shell so parallel runs don't meet.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 100 + 1 )))
export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/vla-robot rl-finetune --sim --out runs/demo

test: setup
	$(VENV)/bin/python -m pytest

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow"

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache runs
