"""FileTransport on paths that are not regular files: folders and FIFOs (issue 10)."""

from __future__ import annotations

import os
import pathlib
import threading
import time

import pytest

from lightd_sync import DeliveryError, FileTransport, Update

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")


def test_a_folder_is_unhealthy_and_sending_to_it_fails(tmp_path: pathlib.Path) -> None:
    with FileTransport(tmp_path) as t:
        with pytest.raises(DeliveryError, match=r"it is a folder, not a file") as info:
            t.check_health()
        assert str(tmp_path) in str(info.value)
        with pytest.raises(DeliveryError, match=str(tmp_path)):
            t.send(Update("s", "ready"))


def test_a_fifo_without_a_reader_never_blocks(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "updates.fifo"
    os.mkfifo(fifo)
    t = FileTransport(fifo)
    with pytest.raises(DeliveryError, match=r"it is a FIFO, not a file"):
        t.check_health()
    result: list[BaseException] = []

    def send() -> None:
        try:
            t.send(Update("s", "ready"))
        except BaseException as exc:
            result.append(exc)

    sender = threading.Thread(target=send)
    started = time.monotonic()
    sender.start()
    sender.join(5)
    assert not sender.is_alive(), "opening a FIFO without a reader blocked"
    [error] = result
    assert isinstance(error, DeliveryError)
    assert "FIFO" in str(error)
    t.close()
    assert time.monotonic() - started < 2


def test_a_fifo_with_a_reader_is_refused_too(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "updates.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with FileTransport(fifo) as t:
            with pytest.raises(DeliveryError, match="not a regular file"):
                t.send(Update("s", "ready"))
    finally:
        os.close(reader)


def test_close_never_waits_for_a_write_in_progress(tmp_path: pathlib.Path) -> None:
    """A write stuck (on a hung mount, say) holds the lock: close() returns at once anyway."""
    t = FileTransport(tmp_path / "updates.jsonl")
    t.send(Update("s", "installing"))
    with t._lock:  # as a send blocked in write() holds it
        started = time.monotonic()
        t.close()
        assert time.monotonic() - started < 0.1
    with pytest.raises(DeliveryError, match="closed"):
        t.send(Update("s", "ready"))


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_fork_while_a_send_holds_the_lock_leaves_the_child_able_to_write(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "updates.jsonl"
    t = FileTransport(path)
    with t._lock:  # a lane of the parent in the middle of a line at fork time
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                t.send(Update("child", "ready"))
                code = 0
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)
    t.close()
    assert "child" in path.read_text(encoding="utf-8")


def test_every_error_form_and_billing_events_are_logged_as_sent(tmp_path: pathlib.Path) -> None:
    """The file transport logs body(): each form as the HTTP transport would POST it."""
    from lightd_sync import BillingEvent, Status
    from lightd_sync.testing import read_events

    path = tmp_path / "updates.jsonl"
    billing: dict[str, float] = {
        "memory_gb": 0.5,
        "cpu_vcpus": 0.25,
        "storage_gb": 2.0,
        "egress_gb": 0.01,
        "duration_hours": 1.0,
        "estimated_cost": 0.0123,
    }
    with FileTransport(path) as t:
        t.send(Update("s1", Status.FAILED, error="timeout"))
        t.send(Update("s1", Status.FAILED, "x", error="disk full"))
        t.send(BillingEvent("s1", **billing, timestamp=1767225600))
        assert [None, None] == t.send_many([Update("s2", "ready"), Update("s3", "installing")])
    assert [
        {"event": "update", "server": "s1", "error": "timeout"},
        {"event": "update", "server": "s1", "error": "disk full", "data": "x"},
        {"event": "billing", "server": "s1", **billing, "timestamp": 1767225600},
        {"event": "update", "server": "s2", "status": "ready"},
        {"event": "update", "server": "s3", "status": "installing"},
    ] == read_events(path)
