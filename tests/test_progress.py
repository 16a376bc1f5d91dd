"""Progress of `engine run` on stderr: plain lines when it is not a terminal, the live
line when it is, `paused` in both with the ETA clock stopped, `--no-progress` silent."""

from __future__ import annotations

import io
import os
import pty
import queue
import re
import subprocess
import threading
from pathlib import Path

from rich.console import Console

from cli.progress import Progress
from ledger import LedgerWriter
from ledger.events import (
    ItemDispatched,
    ItemEnqueued,
    ItemSucceeded,
    MapEnqueued,
    RunPaused,
    RunUnpaused,
)
from projections.replay import Projections
from tests.conftest import ENGINE
from tests.engine_helpers import (
    DEADLINE,
    ledger_has,
    read_terminal,
    unique_run_id,
    wait_for,
    write_workflow,
)

LINE = re.compile(
    r"engine: (\d+)/(\d+) done · (\d+) failed · (\d+) running · (\d+) retrying · "
    r"([\d.,]+) items/s · (ETA \S+|paused)( · circuit \S+)? · \S+ elapsed"
)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def _held_workflow(tmp_path: Path, release: Path) -> Path:
    """Three items whose attempts run until ``release`` exists."""
    return write_workflow(
        tmp_path,
        f"""
        name: held
        map:
          items: [a, b, c, d]
          id: "${{item}}"
          max_parallel: 3
          agent_template:
            - run: while [ ! -f {release} ]; do sleep 0.02; done
        """,
    )


class Lines:
    """A stream's lines as they come, read by a thread (the engine never blocks on it)."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))

    def until(self, predicate: object, what: str) -> str:
        assert callable(predicate)

        def next_match() -> str | None:
            try:
                line = self.queue.get(timeout=0.1)
            except queue.Empty:
                return None
            self.seen.append(line)
            return line if predicate(line) else None

        return wait_for(next_match, what=what)


def test_plain_lines_when_stderr_is_not_a_terminal_and_paused_stops_the_eta(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    release = tmp_path / "release"
    wf = _held_workflow(tmp_path, release)
    run_id = unique_run_id("plain")
    proc = subprocess.Popen(
        [ENGINE, "--home", str(home), "run", str(wf), "--run-id", run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(ENGINE_PROGRESS_INTERVAL="0.05"),
    )
    assert proc.stderr is not None and proc.stdout is not None
    lines = Lines(proc.stderr)  # type: ignore[arg-type]
    try:
        first = lines.until(lambda s: " 3 running " in s, "a progress line with 3 running")
        match = LINE.fullmatch(first)
        assert match, first
        assert match.group(2) == "4" and match.group(7) == "ETA -"  # nothing done: no rate
        pause = subprocess.run(
            [ENGINE, "--home", str(home), "pause", run_id],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert pause.returncode == 0, pause.stderr
        paused = lines.until(lambda s: "· paused ·" in s, "a progress line saying paused")
        assert LINE.fullmatch(paused) and "ETA" not in paused
        unpause = subprocess.run(
            [ENGINE, "--home", str(home), "unpause", run_id],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert unpause.returncode == 0, unpause.stderr
        lines.until(lambda s: "· ETA" in s, "a progress line with an ETA again")
        release.touch()
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = proc.stdout.read()
        lines.thread.join(timeout=DEADLINE)  # the end of stderr read
        proc.stdout.close()
        proc.stderr.close()
    while not lines.queue.empty():
        lines.seen.append(lines.queue.get())
    assert "Traceback" not in "\n".join(lines.seen)
    assert "engine:" not in out  # progress is on stderr only; stdout has the summary
    assert "4/4 done" not in out and "completed" in out


def test_no_progress_silences_the_plain_line(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: quiet
        map:
          items: [a, b]
          id: "${item}"
          agent_template:
            - run: sleep 0.3
        """,
    )
    env = _env(ENGINE_PROGRESS_INTERVAL="0.01")  # many times shorter than the run
    shown = subprocess.run(
        [ENGINE, "--home", str(tmp_path / "h1"), "run", str(wf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    progress = [line for line in shown.stderr.splitlines() if LINE.fullmatch(line)]
    assert progress, shown.stderr
    silent = subprocess.run(
        [ENGINE, "--home", str(tmp_path / "h2"), "run", str(wf), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE,
        check=False,
    )
    assert silent.returncode == 0 and silent.stderr == ""


def test_a_bad_interval_is_one_line_exit_2(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path, "name: x\nmap: {items: [a], agent_template: [{run: 'true'}]}\n")
    proc = subprocess.run(
        [ENGINE, "--home", str(tmp_path / "h"), "run", str(wf)],
        capture_output=True,
        text=True,
        env=_env(ENGINE_PROGRESS_INTERVAL="soon"),
        timeout=DEADLINE,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "engine: error: ENGINE_PROGRESS_INTERVAL='soon': not a number of seconds "
        "(set it to e.g. 5 or 0.5, or unset it for 5)\n"
    )
    assert not (tmp_path / "h" / "runs").exists()  # refused before anything was made


def test_the_live_line_on_a_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    release = tmp_path / "release"
    wf = _held_workflow(tmp_path, release)
    run_id = unique_run_id("live")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [ENGINE, "--home", str(home), "run", str(wf), "--run-id", run_id],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=_env(ENGINE_PROGRESS_INTERVAL="0.05", COLUMNS="120", TERM="xterm"),
    )
    os.close(slave)
    drawn, reader = read_terminal(master)
    try:
        ledger = home / "runs" / run_id / "ledger.ndjson"
        wait_for(lambda: ledger_has(ledger, "item.dispatched", 3), what="3 attempts running")
        wait_for(lambda: b"running 3" in drawn, what="the live line")
        subprocess.run([ENGINE, "--home", str(home), "pause", run_id], check=True, timeout=60)
        wait_for(lambda: b"paused" in drawn, what="the live line saying paused")
        subprocess.run([ENGINE, "--home", str(home), "unpause", run_id], check=True, timeout=60)
        release.touch()
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=DEADLINE)
        os.close(master)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        proc.stdout.close()
    assert b"items/s" in drawn and b"engine: " not in drawn  # rich's line, not plain ones
    assert "items/s" not in out and "\x1b" not in out  # stdout: the summary, plain


def test_the_eta_clock_stops_while_paused(tmp_path: Path) -> None:
    """With a fake clock: 10 items, 2 done in the first 10 s (0.2/s, ETA 40 s); a pause
    of 100 s changes neither the rate nor the ETA; both displays say paused."""
    writer = LedgerWriter.open(tmp_path / "run", "eta", create=True)
    p = Projections()
    now = [1000.0]
    out = io.StringIO()
    progress = Progress(
        Console(file=io.StringIO(), width=120, force_terminal=True),
        mode="plain",
        stream=out,
        clock=lambda: now[0],
    )

    def append(*events: object) -> None:
        for event in events:
            p.apply(writer.append(event))  # type: ignore[arg-type]
        progress.update(p)

    append(*(ItemEnqueued(item=f"i{i}", index=i) for i in range(10)), MapEnqueued(total=10))
    for i in range(2):
        append(ItemDispatched(item=f"i{i}", attempt=1, idempotency_key="ik:x"))
    now[0] += 10
    for i in range(2):
        append(ItemSucceeded(item=f"i{i}", attempt=1))
    running = progress.plain_line(p)
    assert "2/10 done" in running and "0.2 items/s · ETA 40s" in running, running
    append(RunPaused(by="test"))
    now[0] += 100
    paused = progress.plain_line(p)
    assert "0.2 items/s · paused" in paused, paused
    live = Console(file=io.StringIO(), width=120, force_terminal=False)
    live.print(progress.render(p))
    assert "paused" in live.file.getvalue() and "ETA" not in live.file.getvalue()  # type: ignore[attr-defined]
    append(RunUnpaused(by="test"))
    after = progress.plain_line(p)
    assert "0.2 items/s · ETA 40s" in after, after  # the 100 s paused are not counted
    writer.close()
