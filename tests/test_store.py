"""The content store under concurrent writers of the same content."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.store.content import ContentStore


def test_the_same_content_stored_at_once_by_many_threads(tmp_path: Path) -> None:
    # Attempts of one engine that make identical artifacts store them at the same
    # time, from threads: each copy needs a temporary name of its own.
    source = tmp_path / "out.bin"
    source.write_bytes(b"\0" * 2_000_000)
    store = ContentStore(tmp_path / "store")
    start = threading.Barrier(8)
    errors: list[BaseException] = []
    digests: list[str] = []

    def put() -> None:
        start.wait()
        try:
            for _ in range(5):
                digests.append(store.put_file(source)[0])
                store.path(digests[-1]).unlink(missing_ok=True)  # so the next one copies again
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(digests)) == 1 and len(digests) == 40
    store.put_file(source)
    assert store.path(digests[0]).read_bytes() == source.read_bytes()
    leftovers = [p.name for p in store.path(digests[0]).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
