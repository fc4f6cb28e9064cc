"""Run a command with DATABASE_URL pointing at PostgreSQL: the one in $DATABASE_URL if set, otherwise a
throwaway cluster started from the local PostgreSQL binaries (no containers) and removed afterwards.

    python ops/with_postgres.py duroxide-trio stress --provider postgres --suite
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if os.environ.get("DATABASE_URL"):
        return subprocess.call(argv)
    from duroxide_trio.providers.postgres._localcluster import ClusterUnavailable, throwaway_cluster

    try:
        with throwaway_cluster() as url:
            print(f"started a throwaway PostgreSQL at {url}", file=sys.stderr, flush=True)
            return subprocess.call(argv, env={**os.environ, "DATABASE_URL": url})
    except ClusterUnavailable as exc:
        print(f"no DATABASE_URL and no local PostgreSQL binaries to start one: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
