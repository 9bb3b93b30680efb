#!/usr/bin/env bash
# `make istio-analyze`: Istio's own analyzer on the manifests in istio/, offline
# (`istioctl analyze --use-kube=false`: no cluster, the files alone). istioctl is built, pinned, by
# scripts/ensure-tools.sh into .tools/bin: about 7 minutes on a cold machine of 2 cores (Kubernetes,
# Helm and Envoy API modules), which is why `make test` does not run it; tests/packaging.rs checks
# the same manifests against Istio's CRD schemas on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh istioctl
exec .tools/bin/istioctl analyze --use-kube=false istio/*.yaml
