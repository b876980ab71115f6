"""What the client check scripts share: the URL they check, a fresh schema name, and how checks are
registered and compared. Each script runs its checks against Postgres directly and through waly."""

import os
import secrets
import sys

URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATABASE_URL", "")
if not URL:
    sys.exit(f"usage: {os.path.basename(sys.argv[0])} URL  (or set DATABASE_URL)")

# Everything a script creates goes into this schema, dropped at its end.
SCHEMA = "waly_check_" + secrets.token_hex(4)
CHECKS = []


def check(fn):
    """Register a check; it fails by raising (usually AssertionError)."""
    CHECKS.append(fn)
    return fn


def eq(got, want, what=""):
    assert got == want, f"{what}: got {got!r}, want {want!r}"


def table(name):
    return f"{SCHEMA}.{name}"
