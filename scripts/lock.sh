#!/usr/bin/env bash
# `make lock`: refresh constraints.txt, the lock of tested versions.
# Resolves the newest releases within pyproject.toml's ranges in a throwaway venv (.lock-venv),
# runs every test there (`make test`), and only if they all pass writes what that venv holds to
# constraints.txt. torch stays at the locked release (change its line by hand to move it: its
# CPU build must lie on the machines' disk). Then commit constraints.txt with the change it tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.lock-venv
rm -rf "$venv"
make --no-print-directory install VENV="$venv" PIP_LOCK=
"$venv/bin/python" scripts/versions.py
make --no-print-directory test VENV="$venv" PIP_LOCK=
{
  echo "# The lock of tested versions: what \`make test\` passed with on $(date -u +%F),"
  echo "# Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'). Every install goes through it"
  echo "# (pip install -c constraints.txt ...). Refresh it with \`make lock\`; never edit it by hand,"
  echo "# except the torch line. Written by scripts/lock.sh."
  # Local build labels (torch's +cpu) are dropped so a GPU machine takes the same release.
  "$venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*/\1/' | sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt written ($(grep -vc '^#' constraints.txt) pins)"
