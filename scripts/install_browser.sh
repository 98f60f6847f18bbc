#!/usr/bin/env bash
# The headless browser of the dashboard's tests (tests/test_dashboard.py): Debian's chromium and
# chromium-driver, with fonts-liberation for its text. Selenium, the Python driver, comes with the dev
# extra. Does nothing where chromium and chromedriver are installed; without them the browser tests skip
# and say why.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "install_browser: $(chromium --version 2>/dev/null), chromedriver present"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver \
    fonts-liberation >/dev/null
echo "install_browser: $(chromium --version 2>/dev/null)"
