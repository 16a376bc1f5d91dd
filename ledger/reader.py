"""Streaming ledger reader: decode, check seq continuity and the hash chain.

The reader never modifies the file. It reads in bounded chunks, checks each
line (fixed-width hash suffix, hash chain, typed decode, seq), and stops at
the first invalid line. That line and what follows it decide what it is:

* a **torn tail**: what a crash can leave after the last record the writer
  finished, and nothing else: a last line cut short (no newline, and not a
  complete record with a wrong hash), or a zero-filled run reaching the end
  of the file. Readers stop before it and report it; the writer moves it
  aside on open (see :mod:`ledger.writer`).
* **corruption**: anything else, above all a complete line (newline and
  all) that is not the valid next record, or a last line that has the full
  hash suffix but a wrong hash. A crash cannot produce either, so the file
  was changed after it was written: :class:`~ledger.errors.LedgerCorrupt`
  names the seq and byte offset.

The rule itself lives in :mod:`ledger._tail`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256

import msgspec

from ledger._lines import DECODE_ERRORS, Lines
from ledger._tail import TornTail, judge_suffix
from ledger.codec import (
    GENESIS_HASH,
    HASH_END,
    HASH_PREFIX,
    SEQ_PREFIX,
    parse_seq,
    split_line,
)
from ledger.errors import LedgerCorrupt, LedgerError
from ledger.events import FORMAT_VERSION, Event, Record, record_decoder
from ledger.upcast import decode_older

__all__ = ["CHUNK_SIZE", "LedgerReader", "ScanResult", "TornTail", "verify_ledger"]

CHUNK_SIZE = 1 << 16
"""Bytes read at a time; memory stays bounded by this and one record. Small
chunks keep a chunk's lines and records in the CPU cache (64 KiB replays
about a third faster than 4 MiB here)."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Where a full pass over a ledger ended."""

    records: int
    """Valid records read (the next seq to write)."""
    last_hash: bytes
    """Hash of the last valid record (the genesis hash when empty)."""
    end_offset: int
    """Byte offset just after the last valid record."""
    size: int
    """File size when the pass ended."""
    torn: TornTail | None
    """The torn tail, if the file has one."""
    last_ts: str | None = None


class LedgerReader:
    """One pass over a ledger file.

    Iterate :meth:`records` (or call :meth:`verify`); afterwards
    :attr:`result` says where the valid prefix ends and whether a torn tail
    follows. Corruption raises :class:`LedgerCorrupt` from the iterator.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_size: int = CHUNK_SIZE,
        start: ScanResult | None = None,
    ) -> None:
        """``start`` resumes after an earlier pass (its valid prefix is trusted)."""
        self.path = os.fspath(path)
        self.chunk_size = chunk_size
        self.result: ScanResult | None = None
        self._start = start

    # --- public passes ---------------------------------------------------

    def records(self, *, until: int | None = None) -> Iterator[Record]:
        """Yield every valid record in order (up to seq ``until`` inclusive)."""
        for records, _lines, _offset in self.batches(until=until):
            yield from records

    def lines(self, *, until: int | None = None) -> Iterator[tuple[int, bytes, Record]]:
        """Yield ``(byte offset, raw line without newline, record)`` per record."""
        for records, lines, start in self.batches(until=until):
            offset = start
            for record, line in zip(records, lines, strict=False):
                yield offset, line, record
                offset += len(line) + 1

    def verify(self, *, end: int | None = None, decode: bool = True) -> ScanResult:
        """Check the sequence and the hash chain, and that every record decodes.

        The chain is checked on the raw bytes (no JSON parsing); ``decode``
        also decodes each record with the typed decoder, as every other
        reader does, so that a record with a recomputed hash but an unknown
        ``type`` or wrongly typed ``data`` is refused here too. Only a pass
        whose records are decoded elsewhere (replay's parallel chain check)
        turns it off. ``end`` (a line boundary) stops the pass there instead
        of at the end of the file; classifying an invalid line still reads
        past it. A record of an older format version is upcast and decoded
        whatever ``decode`` says; its chain is checked on its bytes too.
        """
        prev, seq, offset, _ = self._origin()
        new_hash = sha256
        decode_line = record_decoder.decode if decode else None
        seq_prefix = SEQ_PREFIX + b"%d,"
        limit = None if end is None else end - offset
        bad: bytes | None = None
        with open(self.path, "rb") as f:
            f.seek(offset)
            source = Lines(f, self.chunk_size, limit)
            for lines in source:
                for line in lines:
                    assert line is not None
                    digest = line[-66:-2]
                    if line[-75:-66] != HASH_PREFIX or not line.startswith(seq_prefix % seq):
                        if not _older_record_at(line, seq, prev):
                            bad = line
                            break
                    else:
                        h = new_hash(prev)
                        h.update(line[:-75])
                        if h.hexdigest().encode() != digest or line[-2:] != HASH_END:
                            bad = line
                            break
                        if decode_line is not None:
                            try:
                                decode_line(line)
                            except DECODE_ERRORS:
                                bad = line
                                break
                    prev = digest
                    offset += len(line) + 1
                    seq += 1
                else:
                    continue
                break
        torn = judge_suffix(self.path, self.chunk_size, offset, seq, prev, bad=bad, source=source)
        size = offset + (0 if torn is None else torn.length)
        self.result = ScanResult(seq, prev, offset, size, torn)
        return self.result

    # --- the scan ---------------------------------------------------------

    def batches(
        self, *, until: int | None = None, check_hash: bool = True, end: int | None = None
    ) -> Iterator[tuple[list[Record], list[bytes], int]]:
        """Yield the valid records chunk by chunk: ``(records, lines, offset)``.

        ``lines[i]`` is the raw line of ``records[i]`` (without newline) and
        ``offset`` the byte offset of the first. With ``check_hash=False`` the
        chain is not checked here (the caller checks it another way, e.g.
        :meth:`verify` in a parallel process); everything else is. ``end``
        stops reading at that byte offset (what lies after is not seen). A
        record of an older format version comes upcast (:mod:`ledger.upcast`);
        its line is as written.
        """
        decode = _decode_chained if check_hash else _decode_unchained
        prev, seq, offset, last_ts = self._origin()
        with open(self.path, "rb") as f:
            f.seek(offset)
            source = Lines(f, self.chunk_size, None if end is None else end - offset)
            failed = False
            bad: bytes | None = None
            for chunk_lines in source:
                lines: list[bytes] = chunk_lines  # type: ignore[assignment]  # no None here
                start = offset
                if until is not None:
                    del lines[max(0, until + 1 - seq) :]
                records, prev, failed = decode(lines, prev, seq)
                n = len(records)
                seq += n
                offset = start + sum(map(len, lines[:n])) + n
                bad = lines[n] if failed else None
                if records:
                    last_ts = records[-1].ts
                    yield records, lines, start
                if failed:
                    break
                if until is not None and seq > until:
                    self.result = ScanResult(seq, prev, offset, offset, None, last_ts)
                    return
        torn = judge_suffix(self.path, self.chunk_size, offset, seq, prev, bad=bad, source=source)
        size = offset + (0 if torn is None else torn.length)
        self.result = ScanResult(seq, prev, offset, size, torn, last_ts)

    def _origin(self) -> tuple[bytes, int, int, str | None]:
        start = self._start
        if start is None:
            return GENESIS_HASH, 0, 0, None
        return start.last_hash, start.records, start.end_offset, start.last_ts


_UNDECODED = Record(v=-1, seq=-1, ts="", run="", data=Event(), hash="")
"""Stands for a line the typed decoder refused: no version, so the slow path looks."""


def _decode_chained(lines: list[bytes], prev: bytes, seq: int) -> tuple[list[Record], bytes, bool]:
    """Decode a chunk's lines from ``seq`` on, checking the hash chain from ``prev``.

    Returns the valid records (one per line until the first invalid one),
    the hash of the last, and whether an invalid line stopped the pass. This
    is the replay's hot loop: a current record costs its suffix check, one
    hash (of one buffer: a call less than ``update``, which pays for the
    version's comparison), one typed decode and its version's and seq's
    comparisons; any other line goes to the slow path
    (:func:`~ledger.upcast.decode_older`).
    """
    decode_line = record_decoder.decode
    new_hash = sha256
    current = FORMAT_VERSION
    records: list[Record] = []
    append = records.append
    for line in lines:
        digest = line[-66:-2]
        if line[-75:-66] != HASH_PREFIX or line[-2:] != HASH_END:
            return records, prev, True
        if new_hash(prev + line[:-75]).hexdigest().encode() != digest:
            return records, prev, True
        try:
            record = decode_line(line)
        except DECODE_ERRORS:
            record = _UNDECODED
        if record.v != current:  # not a current record: an older one's, upcast, or invalid
            older = decode_older(line)
            if older is None:
                return records, prev, True
            record = older
        if record.seq != seq:
            return records, prev, True
        append(record)
        prev = digest
        seq += 1
    return records, prev, False


def _decode_unchained(
    lines: list[bytes], prev: bytes, seq: int
) -> tuple[list[Record], bytes, bool]:
    """:func:`_decode_chained` with the chain checked elsewhere; the suffix's shape still here."""
    decode_line = record_decoder.decode
    current = FORMAT_VERSION
    records: list[Record] = []
    append = records.append
    failed = False
    for line in lines:
        if line[-75:-66] != HASH_PREFIX or line[-2:] != HASH_END:
            failed = True
            break
        try:
            record = decode_line(line)
        except DECODE_ERRORS:
            record = _UNDECODED
        if record.v != current:  # not a current record: an older one's, upcast, or invalid
            older = decode_older(line)
            if older is None:
                failed = True
                break
            record = older
        if record.seq != seq:
            failed = True
            break
        append(record)
        seq += 1
    if records:
        prev = lines[len(records) - 1][-66:-2]
    return records, prev, failed


def _older_record_at(line: bytes, seq: int, prev: bytes) -> bool:
    """Whether ``line`` is the valid record ``seq`` of an older format version (slow path).

    Its chain is checked on its bytes as written, and it must decode once
    upcast; a current record never comes here.
    """
    parts = split_line(line)
    if parts is None or sha256(prev + parts[0]).hexdigest().encode() != parts[1]:
        return False
    record = decode_older(line)
    return record is not None and record.seq == seq


def verify_ledger(path: str | os.PathLike[str], *, parallel: bool = True) -> ScanResult:
    """Check a ledger's sequence, chain and records; raise LedgerCorrupt if broken.

    Every record is also decoded with the typed decoder, so what passes here
    is what every other command reads. A large ledger is checked in two
    halves at once (this process and a forked child), which the chain
    allows: each line carries the hash it continues from, so the second half
    starts from the hash written in the last line of the first, and the
    first half's pass checks that line.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LedgerError(f"{path}: no such ledger", hint="check the path or run id")
    split = _split_point(path) if parallel and can_verify_in_background(path) else None
    if split is None:
        return LedgerReader(path).verify()
    second = BackgroundVerify(path, start=split)
    try:
        first = LedgerReader(path).verify(end=split.end_offset)
    except BaseException:
        second.abandon()
        raise
    if first.end_offset < split.end_offset or first.torn is not None:
        second.abandon()  # the first bad line is in the first half; its pass saw the rest
        return first
    if (first.records, first.last_hash) != (split.records, split.last_hash):
        second.abandon()
        raise LedgerCorrupt(
            path,
            seq=first.records - 1,
            offset=split.end_offset,
            reason="the two halves of the chain do not meet",
        )
    return second.wait()


def _split_point(path: str) -> ScanResult | None:
    """Where a second pass can start: just after a complete line mid-file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(size // 2)
        window = f.read(2 * (1 << 18) + 2)
    first_nl = window.find(b"\n")
    second_nl = window.find(b"\n", first_nl + 1)
    if first_nl < 0 or second_nl < 0:
        return None
    line = window[first_nl + 1 : second_nl]
    parts = split_line(line)
    seq = parse_seq(line) if parts is not None else None
    if parts is None or seq is None:
        return None  # let the sequential pass say what is wrong here
    end = size // 2 + second_nl + 1
    return ScanResult(seq + 1, parts[1], end, end, None)


class BackgroundVerify:
    """:meth:`LedgerReader.verify` running in a forked child process.

    Checking the hash chain costs about as much as decoding; on a machine
    with a spare core a large replay decodes in this process while the child
    checks the chain. :meth:`wait` returns the child's result or raises the
    corruption it found.
    """

    def __init__(
        self,
        path: str,
        *,
        start: ScanResult | None = None,
        end: int | None = None,
        decode: bool = True,
    ) -> None:
        """``decode=False``: the chain only (the caller decodes every record itself)."""
        self.path = path
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its result arrives by pipe
            os.close(read_end)
            try:
                result = LedgerReader(path, start=start).verify(end=end, decode=decode)
                torn = result.torn
                message: dict[str, object] = {
                    "records": result.records,
                    "last_hash": result.last_hash.decode(),
                    "end_offset": result.end_offset,
                    "size": result.size,
                    "torn": None if torn is None else [torn.offset, torn.length, torn.reason],
                }
            except LedgerCorrupt as exc:
                message = {"corrupt": [exc.seq, exc.offset, exc.reason]}
            except BaseException as exc:
                message = {"error": repr(exc)}
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(msgspec.json.encode(message))
            os._exit(0)
        os.close(write_end)
        self._pid = pid
        self._read_end = read_end

    def abandon(self) -> None:
        """Stop the child and reap it; its result is not needed."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        os.waitpid(self._pid, 0)
        os.close(self._read_end)

    def wait(self) -> ScanResult:
        with os.fdopen(self._read_end, "rb") as pipe:
            payload = pipe.read()
        os.waitpid(self._pid, 0)
        try:
            message = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            raise LedgerError(f"{self.path}: chain verification process died") from None
        if "corrupt" in message:
            seq, offset, reason = message["corrupt"]
            raise LedgerCorrupt(self.path, seq=seq, offset=offset, reason=reason)
        if "error" in message:
            raise LedgerError(f"{self.path}: chain verification failed: {message['error']}")
        torn = message["torn"]
        seq = message["records"]
        return ScanResult(
            seq,
            message["last_hash"].encode(),
            message["end_offset"],
            message["size"],
            None if torn is None else TornTail(torn[0], torn[1], seq, torn[2]),
        )


PARALLEL_VERIFY_BYTES = 32 << 20
"""Ledgers at least this large have their chain checked in a parallel process."""


def can_verify_in_background(path: str | os.PathLike[str]) -> bool:
    """Whether a parallel chain check is worth it and safe to fork for."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    return (
        size >= PARALLEL_VERIFY_BYTES
        and (os.cpu_count() or 1) > 1
        and threading.active_count() == 1
    )
