#!/usr/bin/env bash
# Start a throwaway PostgreSQL from the local server binaries (initdb/pg_ctl; no containers), print its
# URL, and stop it and delete its data directory on Ctrl-C (or SIGTERM).
#
#   ops/throwaway-postgres.sh            # durable settings
#   ops/throwaway-postgres.sh --fast     # fsync off: for tests and benchmarks only
#   ops/throwaway-postgres.sh --set max_connections=500
#
# In another shell: DATABASE_URL=<printed URL> pytest -m postgres
# Binaries are searched in $DUROXIDE_PG_BINDIR, /usr/lib/postgresql/*/bin, pg_config --bindir, PATH.
# When run as root the server runs as the unprivileged user "duroxide-pg" (created if missing).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$here/../.venv/bin/python" ]]; then python="$here/../.venv/bin/python"; else python="python3"; fi
fi
# exec: Ctrl-C and SIGTERM go straight to the Python process, which stops and removes the cluster.
exec "$python" -m duroxide_trio.providers.postgres._localcluster "$@"
