#!/bin/sh
# Started by hammer-manager as `/bin/sh -c ./start.sh` in the release folder.
# PORT (default 8000) and HOST (default 127.0.0.1) come from `hammer setup --env`.
cd "$(dirname "$0")" || exit 1
exec python3 -u app.py
