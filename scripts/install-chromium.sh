#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (Playwright's own browser download cannot work
# offline). Installs it when it is missing; the tests fail, never skip, without it.
# The package lists are refreshed only when the install from the lists at hand fails (none, or stale).
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
sudo_=""
[ "$(id -u)" -eq 0 ] || sudo_="sudo"
install() { DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null; }
install 2>/dev/null || { $sudo_ apt-get update -qq && install; }
