#!/usr/bin/env bash
# Validates everything under deploy/ with the tools a platform team uses; CI runs it.
#
#   deploy/check.sh            install missing tools, then run every check
#   deploy/check.sh install    only install the tools (tests/run.sh does this before pytest)
#   deploy/check.sh tools      install if missing, then print NAME=PATH for each tool
#   deploy/check.sh CHECK...   run some checks: prom-config rules rules-test k8s compose grafana
#                              (k8s: deploy/k8s and its PostgreSQL overlay deploy/k8s-postgres;
#                              compose: compose.yaml alone and with compose.postgres.yaml)
#                              (grafana runs tests/deploy/test_dashboard.py: metric names, PromQL)
#
# Tools, pinned below and cached under $CIRELAY_TOOLS_DIR (default ~/.cache/cirelay/deploy-tools):
#   promtool, prometheus  Debian's `prometheus` package (apt-get)
#   kubeconform, kustomize  `go install` through the Go module proxy
#   docker compose        built from the Go module github.com/docker/compose/v2 (`go install`
#                         refuses it: its go.mod has exclude directives), run as a standalone binary
#   schemas for kubeconform, which would fetch them from GitHub: Kubernetes' from the PyPI wheel
#                         kubernetes-validate, the Prometheus Operator's CRDs from its Go module
#                         (deploy/tools/k8s_schemas.py lays them out)
# CIRELAY_DEPLOY_DIR points the checks at another copy of deploy/ (the tests break copies on
# purpose to prove each check fails).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=${CIRELAY_DEPLOY_DIR:-$ROOT/deploy}
TOOLS=${CIRELAY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cirelay/deploy-tools}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

KUBECONFORM_VERSION=v0.7.0
KUSTOMIZE_VERSION=v5.7.1
COMPOSE_VERSION=v2.40.3
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
# The oldest and the newest Kubernetes the manifests are validated against.
KUBERNETES_VERSIONS=1.29.0,1.37.0

KUBECONFORM=$TOOLS/kubeconform-$KUBECONFORM_VERSION/kubeconform
KUSTOMIZE=$TOOLS/kustomize-$KUSTOMIZE_VERSION/kustomize
COMPOSE=$TOOLS/compose-$COMPOSE_VERSION/docker-compose
SCHEMAS=$TOOLS/k8s-schemas-$KUBERNETES_VALIDATE_VERSION-$PROMETHEUS_OPERATOR_VERSION

# Go lives outside the default PATH on some machines (the official tarball's location).
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
export GOTOOLCHAIN=local # a module needing a newer Go fails here instead of fetching one
export GOFLAGS=${GOFLAGS:--buildvcs=false}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'deploy/check.sh: %s\n' "$*" >&2; exit 1; }

# --- installing --------------------------------------------------------------------------------

install_promtool() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return
  [ "$(id -u)" = 0 ] || die "promtool/prometheus missing: install Debian's prometheus package"
  say "apt-get install prometheus"
  apt-get update -qq
  # No recommends (node-exporter); policy-rc.d or the absence of systemd keeps the daemon stopped.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

go_install() { # binary path, package@version
  [ -x "$1" ] && return
  command -v go >/dev/null || die "go is needed to install $2"
  say "go install $2"
  GOBIN=$(dirname "$1") go install "$2"
}

install_compose() {
  [ -x "$COMPOSE" ] && return
  command -v go >/dev/null || die "go is needed to build docker compose"
  say "building docker compose $COMPOSE_VERSION (several minutes, once)"
  local src build
  src=$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" | module_dir)
  build=$(mktemp -d)
  cp -r "$src/." "$build"
  chmod -R u+w "$build"
  mkdir -p "$(dirname "$COMPOSE")"
  (cd "$build" && go build -trimpath \
    -ldflags "-w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
    -o "$COMPOSE.partial" ./cmd)
  rm -rf "$build"
  mv "$COMPOSE.partial" "$COMPOSE"
}

module_dir() { "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'; }

install_schemas() {
  [ -f "$SCHEMAS/.complete" ] && return
  say "kubeconform schemas: kubernetes-validate $KUBERNETES_VALIDATE_VERSION," \
    "prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
  local wheels=$TOOLS/wheels crds
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  crds=$(go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | module_dir)
  crds=$crds/example/prometheus-operator-crd
  rm -rf "$SCHEMAS"
  "$PYTHON" "$ROOT/deploy/tools/k8s_schemas.py" --out "$SCHEMAS" \
    --wheel "$wheels/kubernetes_validate-$KUBERNETES_VALIDATE_VERSION-py3-none-any.whl" \
    --versions "$KUBERNETES_VERSIONS" \
    "$crds/monitoring.coreos.com_servicemonitors.yaml" \
    "$crds/monitoring.coreos.com_prometheusrules.yaml"
  touch "$SCHEMAS/.complete"
}

install_all() {
  mkdir -p "$TOOLS"
  install_promtool
  go_install "$KUBECONFORM" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  go_install "$KUSTOMIZE" "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  install_compose
  install_schemas
}

# --- checks ------------------------------------------------------------------------------------

check_prom_config() { promtool check config "$DEPLOY/prometheus/prometheus.yml"; }
check_rules() { promtool check rules "$DEPLOY/prometheus/alerts.yml"; }
check_rules_test() { promtool test rules "$DEPLOY/prometheus/alerts_test.yml"; }

# The SQLite base (one replica) and the PostgreSQL overlay (several) are validated alike.
KUSTOMIZATIONS=(k8s k8s-postgres)
COMPOSE_STACKS=("compose.yaml" "compose.yaml compose.postgres.yaml")

check_k8s() {
  local kustomization built resources version summary
  for kustomization in "${KUSTOMIZATIONS[@]}"; do
    built=$("$KUSTOMIZE" build "$DEPLOY/$kustomization")
    # kustomize writes each resource's top-level keys at column 0.
    resources=$(grep -c '^kind: ' <<<"$built")
    for version in ${KUBERNETES_VERSIONS//,/ }; do
      echo "$kustomization, Kubernetes $version:"
      summary=$("$KUBECONFORM" -strict -summary -kubernetes-version "$version" \
        -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
        -schema-location "$SCHEMAS/crds/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
        - <<<"$built") || { echo "$summary"; return 1; }
      echo "$summary"
      # A resource kubeconform skipped or never saw would otherwise pass silently.
      grep -q "Valid: $resources, Invalid: 0, Errors: 0, Skipped: 0" <<<"$summary" ||
        die "kubeconform did not validate all $resources resources of $kustomization"
    done
  done
}

check_compose() {
  local stack file args
  for stack in "${COMPOSE_STACKS[@]}"; do
    args=()
    for file in $stack; do args+=(-f "$DEPLOY/$file"); done
    "$COMPOSE" "${args[@]}" config --quiet && echo "${stack// / + }: valid"
  done
}

check_grafana() {
  "$PYTHON" -m pytest -q -p no:cacheprovider "$ROOT/tests/deploy/test_dashboard.py"
}

run_check() {
  local name=$1 started
  started=$(date +%s)
  say "$name"
  case $name in
    prom-config) check_prom_config ;;
    rules) check_rules ;;
    rules-test) check_rules_test ;;
    k8s) check_k8s ;;
    compose) check_compose ;;
    grafana) check_grafana ;;
    *) die "unknown check: $name" ;;
  esac
  say "$name ok ($(($(date +%s) - started))s)"
}

ALL_CHECKS=(prom-config rules rules-test k8s compose grafana)

case ${1:-all} in
  install)
    install_all
    ;;
  tools)
    install_all
    printf '%s=%s\n' promtool "$(command -v promtool)" prometheus "$(command -v prometheus)" \
      kubeconform "$KUBECONFORM" kustomize "$KUSTOMIZE" compose "$COMPOSE" schemas "$SCHEMAS"
    ;;
  all)
    started=$(date +%s)
    install_all
    for check in "${ALL_CHECKS[@]}"; do run_check "$check"; done
    say "deploy/ is valid ($(($(date +%s) - started))s)"
    ;;
  *)
    install_all
    for check in "$@"; do run_check "$check"; done
    ;;
esac
