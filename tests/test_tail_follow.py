"""`engine tail -f` prints records as another process appends them, and exits once the
run has ended and no engine holds it."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

from ledger import LedgerWriter
from ledger.codec import encode_body, line_hash
from ledger.events import (
    Heartbeat,
    ItemEnqueued,
    RunAborted,
    RunCompleted,
    RunResumed,
    RunStarted,
)
from ledger.times import utc_now
from tests.conftest import ENGINE
from tests.engine_helpers import DEADLINE, wait_for


def test_follow_prints_new_records_with_filters(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "live"
    writer = LedgerWriter.open(run_dir, "live", create=True)
    writer.append(ItemEnqueued(item="before", index=0))
    proc = subprocess.Popen(
        [
            ENGINE,
            "--home",
            str(tmp_path),
            "tail",
            "live",
            "-f",
            "-n",
            "0",
            "--json",
            "--type",
            "item.*",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        # With -n 0 what is there when it starts is not printed: append probes
        # until one comes out, and it is following.
        probes = itertools.count()

        def following() -> bool:
            writer.append(ItemEnqueued(item=f"probe-{next(probes)}", index=0))
            try:
                lines.get(timeout=0.2)
            except queue.Empty:
                return False
            return True

        wait_for(following, what="tail -f to print an appended record")
        for i in range(1, 6):
            writer.append(Heartbeat(item=f"i{i}", attempt=1))  # filtered out
            writer.append(ItemEnqueued(item=f"i{i}", index=i))
        got: list[dict[str, object]] = []
        while len(got) < 5:
            record = json.loads(lines.get(timeout=DEADLINE))
            if not str(record["data"]["item"]).startswith("probe-"):
                got.append(record)
        assert [g["data"]["item"] for g in got] == [f"i{i}" for i in range(1, 6)]
        assert all(g["type"] == "item.enqueued" for g in got)
        # A record written in two pieces is printed once it is complete, whole:
        # never the partial line being written. A complete marker record is
        # written in the same write as the first piece, so once the marker is
        # printed, tail has read the file with the partial line in it.
        last = writer.append(ItemEnqueued(item="last", index=6))
        assert json.loads(lines.get(timeout=DEADLINE))["data"]["item"] == "last"
        writer.close()
        marker = _line(last.seq + 1, last.hash.encode(), ItemEnqueued(item="marker", index=7))
        line = _line(
            last.seq + 2, json.loads(marker)["hash"].encode(), ItemEnqueued(item="whole", index=8)
        )
        with open(run_dir / "ledger.ndjson", "ab") as f:
            f.write(marker + line[:13])
            f.flush()
            os.fsync(f.fileno())
            assert lines.get(timeout=DEADLINE).encode() == marker
            f.write(line[13:])
        printed = lines.get(timeout=DEADLINE)
        assert printed.encode() == line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=DEADLINE)
        stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        writer.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _line(seq: int, prev: bytes, event: ItemEnqueued) -> bytes:
    """A ledger line of run ``live``, chained to the hash ``prev``."""
    body = encode_body(seq=seq, ts=utc_now(), run="live", event=event)
    return body + b',"hash":"' + line_hash(prev, body) + b'"}\n'


def _follow(home: Path, run: str, *extra: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    proc = subprocess.Popen(
        [ENGINE, "--home", str(home), "tail", run, "-f", "-n", "0", "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    return proc, lines


def _type(lines: queue.Queue[str]) -> str:
    return str(json.loads(lines.get(timeout=DEADLINE))["type"])


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    return code, err


def test_follow_of_an_ended_run_exits_at_once(tmp_path: Path) -> None:
    writer = LedgerWriter.open(tmp_path / "runs" / "done", "done", create=True)
    writer.append(RunStarted(pid=1, host="h"))
    writer.append(RunCompleted(succeeded=0))
    writer.close()
    proc = subprocess.run(
        [ENGINE, "--home", str(tmp_path), "tail", "done", "-f", "-n", "1"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "run.completed" in proc.stdout


def test_follow_exits_once_the_run_ends_and_its_engine_lets_go(tmp_path: Path) -> None:
    """The end record printed, the run still held: it follows; let go: it exits 0."""
    writer = LedgerWriter.open(tmp_path / "runs" / "ending", "ending", create=True)
    writer.append(RunStarted(pid=1, host="h"))
    proc, lines = _follow(tmp_path, "ending")
    try:
        probes = itertools.count()

        def following() -> bool:
            writer.append(ItemEnqueued(item=f"probe-{next(probes)}", index=0))
            try:
                lines.get(timeout=0.2)
            except queue.Empty:
                return False
            return True

        wait_for(following, what="tail -f to print an appended record")
        writer.append(RunAborted(reason="cancelled"))
        while _type(lines) != "run.aborted":
            pass
        assert proc.poll() is None  # the lock is held: an engine may write more
        writer.append(RunResumed(pid=1, host="h"))  # and one does
        assert _type(lines) == "run.resumed"
        writer.append(RunCompleted(succeeded=1))
        assert _type(lines) == "run.completed"
        assert proc.poll() is None
    finally:
        writer.close()  # the engine lets go of the run
    code, err = _finish(proc)
    assert (code, err) == (0, "")


def test_follow_of_an_interrupted_run_waits_for_its_resume(tmp_path: Path) -> None:
    """An engine killed mid-run leaves no end record and no holder: tail -f follows on
    (a resume goes on writing), and exits once that resume ends the run."""
    run_dir = tmp_path / "runs" / "killed"
    first = LedgerWriter.open(run_dir, "killed", create=True)
    first.append(RunStarted(pid=1, host="h"))
    first.close()  # as a killed engine's lock dies with it
    proc, lines = _follow(tmp_path, "killed", "--type", "run.*")
    try:
        resumed = LedgerWriter.open(run_dir, "killed")
        try:
            # Until it prints a record appended after it started, it may still be
            # reading; a resume appends until one comes out.
            def printed() -> bool:
                resumed.append(RunResumed(pid=2, host="h"))
                try:
                    return json.loads(lines.get(timeout=0.2))["type"] == "run.resumed"
                except queue.Empty:
                    return False

            wait_for(printed, what="tail -f to print the resume's record")
            assert proc.poll() is None
            resumed.append(RunCompleted(succeeded=1))
            while _type(lines) != "run.completed":
                pass
        finally:
            resumed.close()
    finally:
        code, err = _finish(proc)
    assert (code, err) == (0, "")
