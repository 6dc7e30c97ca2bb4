"""An admin listener in the test's own process, with short delays so tests stay fast: for the
listener's own tests and for ``gjproxy admin`` run against it."""

from __future__ import annotations

from jproxy.handlers.admin.listener import serve_admin
from jproxy.metrics import Counters
from jproxy.policy.passwords import AdminCredentials, LoginThrottle, hash_password
from jproxy.tuning import RelayTuning

USER, PASSWORD = "alice", "s3cret"
BASE_DELAY = 0.1
MAX_DELAY = 0.4


def start_admin(counters: Counters, tuning: RelayTuning):
    """An admin listener on an ephemeral port, with short delays so tests stay fast."""
    credentials = AdminCredentials(USER, hash_password(PASSWORD, n=1024), "test")
    throttle = LoginThrottle(BASE_DELAY, MAX_DELAY)
    return serve_admin(
        ("127.0.0.1", 0), credentials, counters, tuning, throttle=throttle, deadline=1.0
    )
