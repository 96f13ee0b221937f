# Shared set-up for scripts/run and scripts/test: installs what litefs and
# its tests need on Debian, only what is missing. Sourced, not run.
set -euo pipefail

need_pkgs=()
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
command -v sqlite3 >/dev/null 2>&1 || need_pkgs+=(sqlite3)
# The fault tests make network namespaces (ip netns, veth, a bridge) and
# run nodes in them with nsenter.
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need_pkgs+=(util-linux)
if [ "${LITEFS_SETUP_TESTS:-}" = 1 ]; then
	# The tests also call the API with curl and check the example
	# systemd unit with systemd-analyze.
	command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
	command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
	echo "setup: installing ${need_pkgs[*]}" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
	echo "setup: /dev/fuse is missing: load the fuse module (modprobe fuse) or give the container the device" >&2
	exit 1
fi
if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		export PATH="/usr/local/go/bin:$PATH"
	else
		echo "setup: Go is not installed (https://go.dev/doc/install); litefs builds with Go 1.22 or later and cgo" >&2
		exit 1
	fi
fi
