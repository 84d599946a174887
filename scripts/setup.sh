#!/usr/bin/env bash
# Installs what building twinroute needs on a fresh Debian machine: cmake (Pingora's zlib-ng
# build script), CA certificates (TLS to real providers), openssl and curl (webhook test),
# redis-server and redis-cli (shared-state tests), promtool (alert tests), and the pinned
# OpenAI/Anthropic Python SDKs (translation tests). Idempotent; quiet when all is there.
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
# The webhook test makes a certificate with openssl and calls the webhook with curl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The shared-state tests start a real Redis (standalone and a three-master Cluster).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# The chart's alerts are unit-tested with the real promtool (Debian's prometheus package).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
# The real OpenAI and Anthropic Python SDKs, which tests/sdk.rs drives through translation.
req="$(dirname "$0")/../tests/sdk/requirements.txt"
if ! python3 -c 'import openai, anthropic' >/dev/null 2>&1; then
  echo "setup: installing the OpenAI and Anthropic Python SDKs for the tests" >&2
  python3 -m pip install -q --disable-pip-version-check -r "$req" >/dev/null
fi
