# amphora-agent: `make run` and `make test` do everything on a fresh Debian machine (as root).

PYTHON  ?= python3
VENV    ?= .venv
DEV     ?= dev
PORT    ?= 9443
DEBS    := haproxy keepalived iproute2 curl systemd nftables
PY      := $(VENV)/bin/python
# A strict editable install links each file: the stamp names the set of modules, so
# adding or removing one reinstalls.
MODULES := $(shell find amphora twisted -name '*.py' | sort | cksum | cut -d' ' -f1)
STAMP   := $(VENV)/.installed-$(MODULES)
PYTEST_ARGS ?=

.PHONY: all deps venv octavia run test unit integration bench clean distclean

all: test

# Debian packages the agent drives (haproxy, keepalived) and the tests use
# (ip, curl, systemd-analyze / systemd-tmpfiles for the packaged units), nft for
# the 1.0 interface rules.
deps:
	@missing=""; \
	for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The virtualenv with the agent (strict editable install: twistd finds the plugin
# from anywhere, and edits in amphora/ take effect at once).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=strict
	rm -f $(VENV)/.installed*
	touch $@

venv: $(STAMP)

# Octavia's own controller code for the acceptance tests (tests/octavia): each
# release in its own directory (they cannot share one site-packages), with
# --no-deps and only the pinned libraries its client, data models and templates
# import. The tests run it as a subprocess with that directory on PYTHONPATH.
OCTAVIA_VERSIONS := 19.0.0 4.0.0 0.5.2
OCTAVIA_DIR      := $(VENV)/octavia
OCTAVIA_STAMPS   := $(foreach v,$(OCTAVIA_VERSIONS),$(OCTAVIA_DIR)/$(v)/.installed)

$(OCTAVIA_DIR)/%/.installed: tests/octavia/requirements-%.txt | $(STAMP)
	rm -rf $(OCTAVIA_DIR)/$*
	$(VENV)/bin/pip install -q --no-deps --no-compile --target $(OCTAVIA_DIR)/$* -r $<
	touch $@

octavia: $(OCTAVIA_STAMPS)

run: deps venv
	@$(PY) -m amphora.devpki $(DEV) $(PORT) >/dev/null
	@echo "Development agent: config $(DEV)/agent.conf, PKI in $(DEV)/ (reused on the next run;"
	@echo "the port is fixed when $(DEV)/ is first made: remove $(DEV)/ to change it)."
	@echo "Try it from another shell:"
	@echo "  curl --cacert $(DEV)/ca.pem --cert $(DEV)/client.pem --key $(DEV)/client-key.pem https://localhost:$(PORT)/info"
	@echo "or with amphora-ctl:"
	@echo "  export AMPHORA_URL=https://localhost:$(PORT) AMPHORA_CA=$(DEV)/ca.pem AMPHORA_CERT=$(DEV)/client.pem AMPHORA_KEY=$(DEV)/client-key.pem"
	@echo "  $(VENV)/bin/amphora-ctl info; $(VENV)/bin/amphora-ctl listeners; $(VENV)/bin/amphora-ctl --json details"
	@echo "Watch its heartbeats:"
	@echo "  $(VENV)/bin/amphora-ctl heartbeats --bind 127.0.0.1:5555 --key $$(sed -n 's/^key = //p' $(DEV)/agent.conf)"
	@echo "The API contract: $(VENV)/bin/amphora-ctl openapi (or docs/openapi.yaml)"
	@echo
	exec $(VENV)/bin/twistd -n --pidfile= amphora-agent --config $(DEV)/agent.conf

test: deps venv octavia
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

integration: deps venv octavia
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

bench: deps venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(DEV)
