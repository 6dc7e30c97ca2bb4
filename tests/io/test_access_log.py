"""The access log writer: one JSON line per record whatever the record holds, bounded lines,
a full disk that does not disturb the connection, reopening by name."""

from __future__ import annotations

import json
import logging
import os

from jproxy.handlers.logs.access import MAX_REASON, AccessLog, AccessRecord
from jproxy.tunnel.mux import Ending


def record(**fields) -> AccessRecord:
    return AccessRecord("socks", "bob", "127.0.0.1:5000", "a.test:80", 1_800_000_000.25, **fields)


def test_a_hostile_target_stays_on_one_ascii_line_and_reasons_are_bounded(tmp_path) -> None:
    log = AccessLog(str(tmp_path / "access.jsonl"))
    hostile = AccessRecord("tunnel", "bob", "127.0.0.1:1", 'x\n{"status":"OK"}\u2028é:80', 0.0)
    log.write(hostile)
    log.write(record(reason="r" * 10_000, ended=Ending.FAILED, status="UNKNOWN_HOST"))
    log.close()
    text = (tmp_path / "access.jsonl").read_bytes()
    assert text.isascii()
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["target"] == hostile.target
    assert first["time"] == "1970-01-01T00:00:00.000+00:00"
    assert second["time"] == "2027-01-15T08:00:00.250+00:00"
    assert second["reason"] == "r" * MAX_REASON
    assert os.stat(tmp_path / "access.jsonl").st_mode & 0o777 == 0o640


def test_a_full_disk_is_logged_once_and_never_raises(caplog) -> None:
    log = AccessLog("/dev/full")
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            log.write(record())
    assert [r.message for r in caplog.records].count(
        "access log /dev/full: cannot write: [Errno 28] No space left on device"
    ) == 1


def test_reopen_follows_the_name_and_without_a_file_the_logger_gets_the_line(
    tmp_path, caplog
) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(str(path))
    log.write(record())
    path.rename(tmp_path / "old.jsonl")
    log.write(record())  # still the old file until told
    log.reopen()
    log.write(record())
    log.close()
    assert len((tmp_path / "old.jsonl").read_text().splitlines()) == 2
    assert len(path.read_text().splitlines()) == 1
    with caplog.at_level(logging.INFO, logger="gjproxy.access"):
        AccessLog(None).write(record())
    assert json.loads(caplog.records[-1].message)["user"] == "bob"
