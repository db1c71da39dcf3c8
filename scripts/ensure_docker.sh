#!/usr/bin/env bash
# Make sure the Debian packages in scripts/apt-packages.txt are installed and a Docker engine
# answers. Idempotent: when everything is there it only checks (well under a second).
#
# - Engine answers (DOCKER_HOST or the default socket): nothing to do for it.
# - Otherwise, on Debian as root: install what is missing, start `dockerd` in the background
#   (log: $DIT4C_BUILD_DIR/dockerd.log) and wait until it answers.
# - Elsewhere: stop with a message saying what to install.
#
# Only the default engine is ever started here. A second dockerd in the same network namespace
# is not harmless: with --bridge=none (or a stale default network plus --default-address-pool)
# it deletes the interface docker0, which belongs to the first engine. So a DOCKER_HOST that
# names another socket and does not answer is an error, not something to start.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# dockerd, apt-get and dpkg live in sbin, which a non-login CI shell may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
build_dir="${DIT4C_BUILD_DIR:-$here/../build}"
wait_seconds="${DIT4C_DOCKERD_WAIT:-60}"

say() { printf 'ensure_docker: %s\n' "$*" >&2; }

engine_answers() {
    command -v docker >/dev/null 2>&1 || return 1
    timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

is_debian_root() {
    [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1
}

wanted_packages() {
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$here/apt-packages.txt"
}

missing_packages() {
    local pkg
    for pkg in $(wanted_packages); do
        if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
            echo "$pkg"
        fi
    done
}

install_missing() {
    local missing
    missing="$(missing_packages | tr '\n' ' ')"
    [ -n "${missing// /}" ] || return 0
    if ! is_debian_root; then
        say "missing Debian packages: $missing(not root on Debian: install them yourself)"
        return 0
    fi
    say "installing: $missing"
    # No init system here: keep package scripts from starting services (nginx on :80, dockerd);
    # we start dockerd ourselves below. Only add the policy when none exists.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null || rc=$?
    [ -z "$added_policy" ] || rm -f "$policy"
    if [ "$rc" != 0 ]; then
        say "apt-get failed (exit $rc) installing: $missing"
        exit "$rc"
    fi
}

start_dockerd() {
    local log
    case "${DOCKER_HOST:-}" in
        "" | unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
        *)
            say "DOCKER_HOST=$DOCKER_HOST does not answer. Start that engine yourself, or unset"
            say "DOCKER_HOST to use (and, when needed, start) the default one."
            exit 1
            ;;
    esac
    mkdir -p "$build_dir"
    log="$(cd "$build_dir" && pwd)/dockerd.log"
    say "no Docker engine answers; starting dockerd (log: $log)"
    # setsid + nohup: the engine outlives this make run, like a service would.
    setsid nohup dockerd >>"$log" 2>&1 </dev/null &
    local pid=$! waited=0
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "dockerd exited early; last lines of $log:"
            tail -n 20 "$log" >&2
            exit 1
        fi
        if [ "$waited" -ge "$wait_seconds" ]; then
            say "dockerd did not answer within ${wait_seconds}s; last lines of $log:"
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "dockerd (pid $pid) answers after ${waited}s"
}

install_missing
if engine_answers; then
    exit 0
fi
if ! is_debian_root; then
    say "no Docker engine answers${DOCKER_HOST:+ at $DOCKER_HOST}."
    say "Install Docker Engine (Debian/Ubuntu: apt-get install docker.io; elsewhere:"
    say "https://docs.docker.com/engine/install/), start it, and make sure \`docker version\`"
    say "works for this user. On Debian as root, \`make deps\` does all of this for you."
    exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
    say "dockerd is not installed even though docker.io is listed; installing docker.io"
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
start_dockerd
