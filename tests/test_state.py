"""The state file: what survives a restart, a kill -9, a bad file, a second holder, a fork."""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightd_sync import ConfigError, Status
from lightd_sync._engine.state import CLOSE_GRACE, StateStore, StoredUpdate
from lightd_sync._engine.state_rows import drain

from .conftest import LogCapture
from .servers import lightd_threads, wait_until
from .state_crash import kill_run

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200)
_FORK_WARNING = "ignore:.*fork.*:DeprecationWarning"  # 3.12+: fork() with threads running


def opened(path: Path, **kwargs: Any) -> tuple[StateStore, list[StoredUpdate]]:
    kwargs.setdefault("max_servers", 100)
    store = StateStore(str(path), **kwargs)
    return store, store.open()


def reopen(path: Path, max_servers: int = 100) -> list[StoredUpdate]:
    store, rows = opened(path, max_servers=max_servers)
    assert store.active
    assert store.close(5.0)
    return rows


def table(path: Path) -> dict[str, tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT server, status, data, event_id, acked FROM lightd_sync_state"
            )
        }
    finally:
        conn.close()


def errors(logs: LogCapture) -> list[str]:
    return logs.messages(logging.ERROR)


# -- what survives a restart -----------------------------------------------------


def test_unacknowledged_latest_updates_come_back_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, rows = opened(path)
    assert rows == []
    assert store.active
    store.accepted("web-1", Status.INSTALLING, None, "e1")
    store.accepted("web-2", Status.FAILED, "image not found", "e2")
    store.accepted("web-3", "ready", None, "e3")
    store.accepted("web-1", Status.READY, None, "e4")  # newer: web-1 is now the latest updated
    store.acknowledged("web-3", "e3")
    assert store.close(5.0)

    assert reopen(path) == [
        StoredUpdate("web-2", Status.FAILED, "image not found", "e2"),
        StoredUpdate("web-1", Status.READY, None, "e4"),
    ]


def test_an_ack_of_an_older_event_does_not_mark_the_newer_update(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, _ = opened(path)
    store.accepted("web-1", "installing", None, "e1")
    assert store.wait_flushed(5.0)
    store.accepted("web-1", "ready", None, "e2")
    store.acknowledged("web-1", "e1")  # late: e2 is the latest
    assert store.wait_flushed(5.0)
    store.accepted("web-2", "ready", None, "e3")
    assert store.wait_flushed(5.0)
    store.acknowledged("web-2", "e3")  # its row is already in the file
    assert store.close(5.0)
    assert [u.event_id for u in reopen(path)] == ["e2"]
    assert table(path)["web-2"] == ("ready", None, "e3", 1)


def test_acknowledged_servers_stay_acknowledged_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, _ = opened(path)
    store.accepted("web-1", "ready", None, "e1")
    store.acknowledged("web-1", "e1")
    store.close(5.0)
    assert reopen(path) == []
    assert reopen(path) == []
    assert set(table(path)) == {"web-1"}


def test_rows_are_those_of_the_most_recently_updated_servers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, _ = opened(path, max_servers=3)
    for i in range(5):
        store.accepted(f"s{i}", "ready", None, f"a{i}")
        assert store.wait_flushed(5.0)  # one batch each: the trim runs in the file
    store.accepted("s1", "ready", None, "b1")  # s1 becomes the most recent
    store.close(5.0)
    assert [u.server for u in reopen(path, max_servers=3)] == ["s3", "s4", "s1"]
    assert [u.server for u in reopen(path, max_servers=2)] == ["s4", "s1"]  # a smaller bound trims
    assert set(table(path)) == {"s4", "s1"}


def test_one_batch_larger_than_the_bound_keeps_its_newest(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(str(path), max_servers=10)
    for i in range(50):  # before open(): all in the first batch
        store.accepted(f"s{i:02d}", "ready", None, f"e{i}")
    store.open()
    store.close(5.0)
    assert [u.server for u in reopen(path, max_servers=10)] == [f"s{i}" for i in range(40, 50)]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.booleans(), st.booleans()),
        max_size=30,
    )
)
def test_the_file_matches_a_model_of_latest_and_acked(tmp_path: Path, ops: list[Any]) -> None:
    """Any mix of updates, acks of the latest or of a stale event, and flushes."""
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "state.db"
    # Writes every 2 ms, not 100: a flush then waits for one short batch (the model holds
    # for any batching; shorter batches split the ops in more places).
    store, _ = opened(path, flush_interval=0.002)
    model: dict[str, tuple[str, bool, float]] = {}  # server -> (event id, acked, order)
    for n, (server, ack_latest, flush) in enumerate(ops):
        event = f"e{n}"
        store.accepted(server, "ready", None, event)
        model[server] = (event, False, n)
        if ack_latest:
            store.acknowledged(server, event)
            model[server] = (event, True, n)
        else:
            store.acknowledged(server, f"stale-{n}")
        if flush:
            assert store.wait_flushed(5.0)
    store.close(5.0)
    want = sorted((o, s, e) for s, (e, a, o) in model.items() if not a)
    assert [(u.server, u.event_id) for u in reopen(path)] == [(s, e) for _, s, e in want]


def test_accepting_and_acknowledging_from_two_threads_while_the_writer_drains(
    tmp_path: Path,
) -> None:
    """Race the caller, a lane's ack and the writer 200 times: every acked latest stays acked."""
    path = tmp_path / "state.db"
    store, _ = opened(path, max_servers=1000, flush_interval=0.0005)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: between the drains too
    try:
        for round_ in range(200):
            events = [(f"s{k}", f"r{round_}-{k}") for k in range(20)]
            acker = threading.Thread(
                target=lambda ev=events: [store.acknowledged(s, e) for s, e in ev],
                name="test-acker",
            )
            for s, e in events[:10]:
                store.accepted(s, "installing", None, e)
            acker.start()
            for s, e in events[10:]:  # accepted while the acker runs: some acks come first
                store.accepted(s, "ready", None, e)
            acker.join(5)
            for s, e in events[10:]:
                store.acknowledged(s, e)  # the caller's own ack, right after
    finally:
        sys.setswitchinterval(old)
    store.close(5.0)
    assert reopen(path, max_servers=1000) == []  # every latest update got its ack after it


def test_a_drain_takes_the_older_keys_too_when_a_newer_one_arrives_meanwhile() -> None:
    """popitem() takes the newest key first: a key stored during the drain must not strand one."""

    class Busy(dict):  # type: ignore[type-arg]
        stored = False

        def popitem(self) -> tuple[Any, Any]:
            item = super().popitem()
            if not self.stored:  # a caller stores a new server right after the first pop
                self.stored = True
                self["c"] = 3
            return item

    pending = Busy(a=1, b=2)
    assert sorted(drain(pending)) == [("a", 1), ("b", 2), ("c", 3)]
    assert pending == {}


def test_a_zero_length_file_is_a_fresh_state(tmp_path: Path, logs: LogCapture) -> None:
    path = tmp_path / "state.db"
    path.touch()
    store, rows = opened(path)
    assert (rows, store.active) == ([], True)
    store.close(5.0)
    assert errors(logs) == []


def test_a_new_file_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, _ = opened(path)
    store.close(5.0)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Path(f"{path}.lock").stat().st_mode & 0o777 == 0o600


def test_close_leaves_no_thread_and_no_wal(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, _ = opened(path)
    threads = [t for t in lightd_threads() if t.name == "lightd-sync-state"]
    assert len(threads) == 1
    assert threads[0].daemon
    store.accepted("a", "ready", None, "e")
    assert store.close(5.0)
    assert not threads[0].is_alive()
    assert not store.active
    assert not Path(f"{path}-wal").exists()
    assert store.close(5.0)  # twice is fine
    store.accepted("b", "ready", None, "e")  # after close: never raises
    store.acknowledged("b", "e")


def test_close_writes_what_was_accepted_before_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, _ = opened(path, flush_interval=60.0)  # no periodic batch before close
    store.accepted("a", "ready", None, "e1")
    assert store.flush_count == 0
    assert store.close(0.0)  # even with no time left: the last batch is written
    assert [u.event_id for u in reopen(path)] == ["e1"]


# -- kill -9 ------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_kill_9_at_random_moments_loses_nothing_outside_the_window(tmp_path: Path) -> None:
    """16 producers on one file, each killed at a random moment (100 in benchmarks/)."""
    path = str(tmp_path / "state.db")
    rng = random.Random(12)
    for _ in range(16):
        result = kill_run(path, rng)  # asserts on every server; see tests/state_crash.py
        assert result["durable"] > 0
        assert result["open_seconds"] < 5


# -- locks ----------------------------------------------------------------------------


def test_a_second_store_on_the_file_in_one_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first, _ = opened(path)
    try:
        for other in (str(path), str(tmp_path / "." / "state.db")):
            with pytest.raises(ConfigError, match=rf"remote\.state_path: .*pid {os.getpid()}"):
                StateStore(other, max_servers=10).open()
        link = tmp_path / "link.db"
        link.symlink_to(path)
        Path(f"{link}.lock").symlink_to(f"{path}.lock")
        with pytest.raises(ConfigError, match="already open in this process"):
            StateStore(str(link), max_servers=10).open()
        assert first.active
    finally:
        first.close(5.0)
    second, _ = opened(path)  # released: the next one gets it
    assert second.active
    second.close(5.0)


HOLDER = """
import sys, time
from lightd_sync._engine.state import StateStore
store = StateStore(sys.argv[1], max_servers=10)
store.open()
print("held", flush=True)
time.sleep(60)
"""


def test_a_file_held_by_another_process_names_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError) as caught:
            StateStore(str(path), max_servers=10).open()
        assert f"pid {holder.pid}" in str(caught.value)
        assert str(caught.value).startswith("remote.state_path: ")
        os.kill(holder.pid, signal.SIGKILL)  # the lock dies with its process
        holder.wait(10)
        store, _ = opened(path)
        assert store.active
        store.close(5.0)
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.filterwarnings(_FORK_WARNING)
def test_a_forked_child_never_writes_the_parents_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, _ = opened(path)
    store.accepted("parent-1", "ready", None, "p1")
    assert store.wait_flushed(5.0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read)
            store.forget_in_child()  # what the engine's one fork path does for its store
            ok = not store.active
            store.accepted("child", "failed", "from the child", "c1")
            store.acknowledged("parent-1", "p1")
            ok = ok and not store.wait_flushed(0.2)
            ok = ok and store.close(1.0)
            try:
                StateStore(str(path), max_servers=10).open()
                ok = False
            except ConfigError as exc:
                ok = ok and f"pid {os.getppid()}" in str(exc)
            code = 0 if ok else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    try:
        assert os.read(read, 1) == b"\x00"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    store.accepted("parent-2", "ready", None, "p2")  # the parent keeps writing
    assert store.wait_flushed(5.0)
    assert store.active
    store.close(5.0)
    assert set(table(path)) == {"parent-1", "parent-2"}
    assert table(path)["parent-1"][3] == 0  # the child's ack never reached the file


# -- bad files ------------------------------------------------------------------------


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('keep me')")
    conn.commit()
    conn.close()


def _other_application(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id=1234")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()


FOREIGN = {
    "a text file": lambda p: p.write_text('{"remote": {"url": "https://example.org"}}\n'),
    "a PNG": lambda p: p.write_bytes(PNG),
    "another program's SQLite database": _foreign_sqlite,
    "a SQLite database of another application": _other_application,
    "a truncated SQLite header": lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(40)),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_foreign_file_is_left_alone_and_the_store_runs_on_memory(
    tmp_path: Path, logs: LogCapture, kind: str
) -> None:
    path = tmp_path / "state.db"
    FOREIGN[kind](path)
    before = path.read_bytes()
    store, rows = opened(path)
    assert (rows, store.active) == ([], False)
    store.accepted("a", "ready", None, "e")  # never raises, costs nothing
    store.acknowledged("a", "e")
    assert not store.wait_flushed(0.1)
    assert store.close(1.0)
    assert path.read_bytes() == before
    (line,) = errors(logs)
    assert line.startswith(f"ERROR lightd_sync.state remote.state_path: {path}: ")
    assert "running on memory only" in line
    assert not [t for t in lightd_threads() if t.name == "lightd-sync-state"]
    fresh, _ = opened(tmp_path / "other.db")  # the lock was released, nothing else held
    fresh.close(1.0)


def _written_state(path: Path, servers: int = 2000) -> None:
    store, _ = opened(path, max_servers=servers)
    for i in range(servers):
        store.accepted(f"server-{i:05d}", "failed", "x" * 200, f"e{i}")
    store.close(5.0)
    assert path.stat().st_size > 100 * servers


def _truncate_half(path: Path) -> None:
    _written_state(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _scribble(path: Path) -> None:
    _written_state(path)
    with open(path, "r+b") as f:
        f.seek(8192)
        f.write(b"\xa5" * 4096 * 8)  # garbage over btree pages, header intact


@pytest.mark.parametrize("damage", [_truncate_half, _scribble], ids=["truncated", "corrupt"])
def test_a_damaged_state_file_is_moved_aside_and_a_new_one_started(
    tmp_path: Path, logs: LogCapture, damage: Any
) -> None:
    path = tmp_path / "state.db"
    damage(path)
    store, rows = opened(path, max_servers=2000)
    assert (rows, store.active) == ([], True)
    store.accepted("after", "ready", None, "e")
    store.close(5.0)
    (line,) = errors(logs)
    assert line.startswith(f"ERROR lightd_sync.state remote.state_path: {path}: it is corrupt")
    assert "moved it to" in line
    (aside,) = [p for p in tmp_path.iterdir() if ".bad-" in p.name]
    assert aside.stat().st_size > 0
    assert [u.server for u in reopen(path, max_servers=2000)] == ["after"]


def test_a_folder_is_not_a_state_file(tmp_path: Path, logs: LogCapture) -> None:
    store, rows = opened(tmp_path)
    assert (rows, store.active) == ([], False)
    store.accepted("a", "ready", None, "e")
    store.close(1.0)
    (line,) = errors(logs)
    assert f"remote.state_path: {tmp_path}: it is a folder" in line
    assert not Path(f"{tmp_path}.lock").exists()


def test_a_missing_folder_is_not_created(tmp_path: Path, logs: LogCapture) -> None:
    path = tmp_path / "nope" / "state.db"
    store, rows = opened(path)
    assert (rows, store.active) == ([], False)
    store.close(1.0)
    (line,) = errors(logs)
    assert f"remote.state_path: {path}: its folder {path.parent} does not exist" in line
    assert not path.parent.exists()


UNWRITABLE = """
import logging, os, sys
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
from lightd_sync._engine.state import StateStore
store = StateStore(sys.argv[1], max_servers=10)
rows = store.open()
store.accepted("a", "ready", None, "e")
store.acknowledged("a", "e")
store.close(1.0)
print(rows, store.active)
"""


@pytest.mark.parametrize("what", ["folder", "file"])
def test_an_unwritable_path_runs_on_memory(tmp_path: Path, what: str) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "state.db"
    if what == "file":
        _written_state(path, servers=3)
        path.chmod(0o444)
        Path(f"{path}.lock").chmod(0o666)
    folder.chmod(0o555)
    before = path.read_bytes() if what == "file" else None
    command = [sys.executable, "-c", UNWRITABLE, str(path)]
    if os.geteuid() == 0:  # root ignores permissions: run the store without that power
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        command[:0] = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[] False\n"
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("ERROR")]
    assert line.startswith(f"ERROR lightd_sync.state remote.state_path: {path}: ")
    assert "running on memory only" in line
    if before is not None:
        assert path.read_bytes() == before


# -- write errors and a hung disk ------------------------------------------------------

DISK_FULL = """
import logging, resource, signal, sys
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
from lightd_sync._engine.state import StateStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
store = StateStore(sys.argv[1], max_servers=100_000, flush_interval=0.01)
store.open()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the disk is now "full"
for i in range(2000):
    store.accepted(f"server-{i}", "failed", "x" * 500, f"e{i}")
print("full", store.wait_flushed(1.0), flush=True)
sys.stdin.readline()
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
print("retried", store.wait_flushed(10.0), store.active, flush=True)
print("closed", store.close(5.0), flush=True)
"""


def test_a_full_disk_keeps_the_state_in_memory_and_the_next_batch_retries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", DISK_FULL, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["full False", "retried True True", "closed True"]
    failures = [x for x in err.splitlines() if x.startswith("ERROR")]
    assert len(failures) == 1, err  # about 100 failed batches, one line (throttled)
    assert "remote.state_path: " in failures[0]
    assert "cannot write" in failures[0]
    assert "WARNING lightd_sync.state remote.state_path: " in err  # "writing again"
    assert len(reopen(path, max_servers=100_000)) == 2000


def test_close_keeps_its_deadline_when_the_file_is_stuck(tmp_path: Path, logs: LogCapture) -> None:
    path = tmp_path / "state.db"
    store, _ = opened(path)
    blocker = sqlite3.connect(path, isolation_level=None)  # another program's write lock:
    blocker.execute("BEGIN IMMEDIATE")  # every write of the store now waits 2 s and fails
    try:
        store.accepted("a", "ready", None, "e1")
        started = time.perf_counter()
        for i in range(10_000):  # the caller never waits for the stuck writer
            store.accepted(f"s{i}", "ready", None, f"e{i}")
        assert time.perf_counter() - started < 1.0
        started = time.monotonic()
        assert store.close(0.0) is False  # waits CLOSE_GRACE for the last write, no more
        assert time.monotonic() - started < CLOSE_GRACE + 0.5
        assert any("did not finish within 0.5 s" in x for x in errors(logs))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_until(
        lambda: not [t for t in lightd_threads() if t.name == "lightd-sync-state"], 10
    )
    assert not store.active
    again, _ = opened(path)  # the lock went with the thread
    again.close(5.0)


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_servers"):
        StateStore("x", max_servers=0)
    with pytest.raises(ValueError, match="flush_interval"):
        StateStore("x", max_servers=1, flush_interval=0)


def test_open_twice_is_a_programming_error(tmp_path: Path) -> None:
    store, _ = opened(tmp_path / "state.db")
    try:
        with pytest.raises(RuntimeError):
            store.open()
    finally:
        store.close(5.0)


# -- the docs quote these lines ---------------------------------------------------------

DOCS = ROOT / "docs" / "state.md"


def _quoted_lines() -> list[str]:
    return [line.strip() for line in DOCS.read_text().splitlines() if "ERROR lightd_sync" in line]


def test_the_log_lines_docs_quote_are_what_the_store_logs(tmp_path: Path, logs: LogCapture) -> None:
    foreign, damaged = _quoted_lines()
    text = tmp_path / "config.json"
    text.write_text("{}")
    StateStore(str(text), max_servers=10).open()
    path = tmp_path / "sync-state.db"
    _scribble(path)
    logs.records.clear()
    store, _ = opened(path, max_servers=2000)
    store.close(5.0)
    (found,) = errors(logs)
    found = re.sub(r"\.bad-\d{8}T\d{6}-\d+", ".bad-20250101T120000-4242", found)
    assert found.replace(str(tmp_path), "/var/lib/lightd") == damaged
    logs.records.clear()
    StateStore(str(text), max_servers=10).open()
    (found,) = errors(logs)
    assert found.replace(str(tmp_path), "/etc/lightd") == foreign


def test_the_lock_errors_docs_quote_are_what_open_raises(tmp_path: Path) -> None:
    docs = " ".join(DOCS.read_text().replace("`", " ").split())
    path = tmp_path / "sync-state.db"
    first, _ = opened(path)
    try:
        with pytest.raises(ConfigError) as caught:
            StateStore(str(path), max_servers=10).open()
    finally:
        first.close(5.0)
    message = str(caught.value).replace(str(tmp_path), "/var/lib/lightd")
    message = message.replace(f"pid {os.getpid()}", "pid 4242")
    assert message in docs
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError) as caught:
            StateStore(str(path), max_servers=10).open()
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    message = str(caught.value).replace(str(tmp_path), "/var/lib/lightd")
    assert message.replace(f"pid {holder.pid}", "pid 4242") in docs


def test_summary_reads_rows_and_unacknowledged_while_the_store_runs(tmp_path: Path) -> None:
    from lightd_sync._engine.state_file import summary

    path = tmp_path / "odd ?#% name.db"  # quoted into the read-only URI
    store, _ = opened(path)
    try:
        store.accepted("a", "ready", None, "e1")
        store.accepted("b", "ready", None, "e2")
        store.acknowledged("a", "e1")
        assert store.wait_flushed(5.0)
        assert summary(str(path)) == (2, 1)  # without the lock: check may run beside a daemon
    finally:
        store.close(5.0)


def test_rows_stay_bounded_when_new_servers_arrive_in_small_batches(tmp_path: Path) -> None:
    """Batches of new servers, each under max_servers, never add up past it."""
    from lightd_sync._engine.state_file import summary

    path = tmp_path / "state.db"
    store = StateStore(str(path), max_servers=50)
    store.open()
    try:
        for batch in range(5):  # 5 x 40 new servers, one write each
            for i in range(40):
                n = batch * 40 + i
                store.accepted(f"s{n}", "ready", None, f"ev-{n:06d}")
            assert store.wait_flushed(5.0)
    finally:
        store.close(5.0)
    assert (50, 50) == summary(str(path))
