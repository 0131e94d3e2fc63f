#!/usr/bin/env bash
# Installs what tests/test_browser.py needs beyond the dev extra (which brings Playwright's Python
# package), idempotently: Debian's Chromium, when /usr/bin/chromium is missing. Playwright's own
# browser download (`playwright install`) is never run: the tests drive /usr/bin/chromium.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
