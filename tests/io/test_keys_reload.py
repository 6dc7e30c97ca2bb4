"""The users folder reloaded on SIGHUP by the signal handler, in this process."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from functools import partial
from pathlib import Path

import gevent
import pytest

from jproxy.commands.server import reread_users
from jproxy.handlers.net.signals import Reloader
from jproxy.tunnel import keys
from tests.keyfiles import JAVA_HASH


def _users_reloader(users: keys.UserDirectory) -> Reloader:
    """The server's SIGHUP, without a config file: the users are reread every time."""
    reloader = Reloader("no file", dict, {}, str)
    reloader.every_time(partial(reread_users, users))
    return reloader


def test_sighup_reloads_the_users(java_users: Path, generated) -> None:
    users = keys.UserDirectory(java_users)
    handler = _users_reloader(users).on_sighup()
    try:
        _, record = generated
        keys.save_user(record, java_users)
        (java_users / f"{JAVA_HASH}.dat").unlink()
        assert users.lookup(record.login_hash) is None
        os.kill(os.getpid(), signal.SIGHUP)
        with gevent.Timeout(5):
            while users.lookup(record.login_hash) is None:
                gevent.sleep(0.01)
        assert len(users) == 1
        assert users.lookup(bytes.fromhex(JAVA_HASH)) is None
    finally:
        handler.cancel()


def test_sighup_with_a_vanished_directory_keeps_the_users(
    java_users: Path, caplog: pytest.LogCaptureFixture
) -> None:
    users = keys.UserDirectory(java_users)
    handler = _users_reloader(users).on_sighup()
    try:
        shutil.rmtree(java_users)
        with caplog.at_level(logging.WARNING, logger="gjproxy.server"):
            os.kill(os.getpid(), signal.SIGHUP)
            with gevent.Timeout(5):
                while not caplog.records:
                    gevent.sleep(0.01)
        assert "keeping the previous 1 user(s)" in caplog.records[0].getMessage()
        assert caplog.records[0].levelname == "WARNING"
        assert users.lookup(bytes.fromhex(JAVA_HASH)).user == "alice"
    finally:
        handler.cancel()
