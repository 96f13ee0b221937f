#!/usr/bin/env bash
# Builds the Consul agent the tests run (Debian ships none) from the Go
# module proxy, once: the binary is cached and its path printed. Sourced
# by scripts/test; can be run by itself.
set -euo pipefail
ver=v1.20.6
cache="${LITEFS_CACHE:-$HOME/.cache/litefs}"
out="$cache/consul-$ver"
if [ ! -x "$out" ]; then
	echo "setup: building consul $ver from the Go module proxy (a few minutes, once)" >&2
	mkdir -p "$cache"
	work=$(mktemp -d)
	trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
	(
		cd "$work"
		dir=$(GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/consul@$ver" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		cp -r "$dir" src
		chmod -R u+w src
		cd src
		# The repository points its submodules at its own folders; use the
		# published modules instead.
		go mod edit \
			-dropreplace=github.com/hashicorp/consul/api \
			-dropreplace=github.com/hashicorp/consul/sdk \
			-dropreplace=github.com/hashicorp/consul/proto-public \
			-dropreplace=github.com/hashicorp/consul/envoyextensions \
			-dropreplace=github.com/hashicorp/consul/troubleshoot
		GOFLAGS=-mod=mod go build -o "$out.tmp" . >&2
		mv "$out.tmp" "$out"
	)
fi
echo "$out"
