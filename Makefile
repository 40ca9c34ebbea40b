# FaaS on Ray — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT        := $(abspath .)
VENV        := $(ROOT)/.venv
PY          := $(VENV)/bin/python
STATE       := $(ROOT)/.faas
CACHE       ?= $(HOME)/.cache/faas
KAFKA_VER   := 3.9.1
KAFKA_LIBS  := $(CACHE)/kafka-$(KAFKA_VER)/libs
export CONTAINERS_CONF := $(ROOT)/infra/podman/containers.conf
export FAAS_HOME ?= $(STATE)
export PIP_CACHE_DIR ?= $(CACHE)/pip
RAY_DASHBOARD_PORT ?= 8265
APT_PACKAGES := podman runc busybox-static postgresql uidmap slirp4netns etcd-server

.PHONY: help setup apt venv kafka-jars kube-bins kuberay-tools images run stop status test test-unit test-hostile test-fault lint bench clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

setup: apt venv kafka-jars kube-bins kuberay-tools images ## Install everything that is missing (idempotent)

apt: ## Debian packages: podman, runc, busybox-static, postgresql
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed ## Python venv with the project and its dev tools

kafka-jars: $(KAFKA_LIBS)/.complete ## Apache Kafka jars from Maven Central (cached outside the repo)

$(KAFKA_LIBS)/.complete: infra/kafka/pom.xml
	mvn -q -B -f infra/kafka/pom.xml dependency:copy-dependencies \
	  -DincludeScope=runtime -DoutputDirectory=$(KAFKA_LIBS)
	@touch $@

kube-bins: apt venv ## kube-apiserver/-controller-manager/-scheduler and kwok built with Go into $(CACHE)/kube-<version>
	@$(PY) infra/kube.py build

kuberay-tools: venv ## kustomize (Go), KubeRay and Strimzi CRDs into $(CACHE) for the kuberay/ dry-run test
	@$(PY) kuberay/tools.py build >/dev/null

images: apt ## Local test images FROM scratch: localhost/faas-{echo,cpu,mem,crash}
	@infra/images/build.sh

run: setup ## Start the whole platform in the background (state, logs, pids under .faas/)
	@mkdir -p $(STATE)
	@$(PY) infra/devstack.py start kafka --state $(STATE) --port 9092
	@$(PY) infra/devstack.py start smtp --state $(STATE) --port 2525 --mail-dir $(STATE)/mail
	@$(PY) infra/devstack.py start podman --state $(STATE) --socket $(STATE)/podman.sock
	@$(PY) infra/devstack.py start ray --state $(STATE) --port $(RAY_DASHBOARD_PORT)
	@$(PY) -m deployments.launch
	@$(PY) infra/devstack.py start meter-server --state $(STATE)
	@$(PY) infra/devstack.py start meter-agent --state $(STATE)
	@echo
	@echo "  API            http://127.0.0.1:8080   (Swagger UI: http://127.0.0.1:8080/docs)"
	@echo "  Ray dashboard  http://127.0.0.1:$(RAY_DASHBOARD_PORT)   (token auth: paste the token from"
	@echo "                 \`$(VENV)/bin/ray get-auth-token\`, stored in ~/.ray/auth_token)"
	@echo "  Meter          udp://127.0.0.1:9999, counters at http://127.0.0.1:9464/metrics"
	@echo "  Mail           $(STATE)/mail/*.eml"
	@echo "  Logs           $(STATE)/*.log        Stop with: make stop"

stop: ## Stop exactly what `make run` started (by pid)
	@for s in meter-agent meter-server ray functions podman smtp kafka; do $(PY) infra/devstack.py stop $$s --state $(STATE); done

status: ## Show which services of `make run` are up
	@for s in kafka smtp podman ray meter-server meter-agent; do $(PY) infra/devstack.py status $$s --state $(STATE) || true; done

test: setup ## Run the whole test suite on real components (fails on zero tests)
	$(VENV)/bin/pytest -q -W ignore::DeprecationWarning

test-unit: venv ## Unit tests only (no services)
	$(VENV)/bin/pytest -q tests/unit

test-fault: setup ## Fault tests only: Kafka, meter server, workers, ClickHouse, runtime, SMTP killed mid-stream
	$(VENV)/bin/pytest -q -m fault -W ignore::DeprecationWarning

test-hostile: setup ## Hostile input only: tenancy, function isolation, oversized bodies, schemathesis
	$(VENV)/bin/pytest -q -m hostile -W ignore::DeprecationWarning

lint: venv ## ruff, ruff-format check and mypy (strict on app/ analytics/ meter/)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup ## Benchmarks (figures go to docs/BENCHMARKS.md)
	$(PY) -m bench

clean: stop ## Remove state, build outputs and the venv (keeps the cache in ~/.cache/faas)
	rm -rf $(STATE) $(VENV) infra/images/build infra/images/busybox .pytest_cache .mypy_cache .ruff_cache
