"""The content-addressed store under the home directory.

Files are kept by the SHA-256 of their bytes (``store/sha256/ab/<hex>``),
written once (atomically, fsynced) and never changed: artifacts, large
captured values and cached results all live here, and two runs producing
the same bytes share one copy.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import msgspec

from ledger.atomic import FILE_MODE, atomic_write, fsync_dir, make_private_dir

__all__ = ["INLINE_LIMIT", "ContentStore", "file_sha256"]

_CHUNK = 1 << 20

INLINE_LIMIT = 64 * 1024
"""Bytes of JSON a value may take inside a ledger record; a larger one is stored
here and the record references it (records are at most 256 KiB)."""


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(``sha256:<hex>``, size) of a file's bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def _surely_small(value: Any) -> bool:
    """True for values whose JSON is surely under :data:`INLINE_LIMIT` (no encoding needed)."""
    if value is None or isinstance(value, bool | int | float):
        return True
    # A character is at most 6 bytes of JSON (``\u0000``); only ASCII surely encodes.
    return isinstance(value, str) and value.isascii() and len(value) * 6 < INLINE_LIMIT


class ContentStore:
    def __init__(self, home: Path) -> None:
        self.root = home / "store" / "sha256"

    def path(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        if len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / hexdigest[:2] / hexdigest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if not target.exists():
            make_private_dir(target.parent)
            atomic_write(target, data)
        return digest

    def put_file(self, source: Path) -> tuple[str, int]:
        """Copy a file into the store; its digest and size."""
        digest, size = file_sha256(source)
        target = self.path(digest)
        if not target.exists():
            make_private_dir(target.parent)
            tmp = _temporary(target, "tmp")
            shutil.copyfile(source, tmp)
            os.chmod(tmp, FILE_MODE)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        return digest, size

    def get_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def inline_or_ref(self, value: Any) -> tuple[Any, str | None]:
        """``(value, None)`` when small enough for a record, else ``(None, digest)``.

        The digest is that of the value's JSON, stored here (durably) before
        the record that references it is written.
        """
        if _surely_small(value):
            return value, None
        encoded = msgspec.json.encode(value)
        if len(encoded) <= INLINE_LIMIT:
            return value, None
        return None, self.put_bytes(encoded)

    def get_json(self, digest: str) -> Any:
        """A value stored by :meth:`inline_or_ref`."""
        return msgspec.json.decode(self.get_bytes(digest))

    def restore(self, digest: str, dest: Path, mode: int | None = None) -> bool:
        """Put the stored bytes at ``dest`` atomically; False when ``dest`` already has them."""
        if dest.is_file():
            try:
                if file_sha256(dest)[0] == digest:
                    return False
            except OSError:
                pass
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(dest, "restore")
        shutil.copyfile(self.path(digest), tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return True


def _temporary(path: Path, suffix: str) -> Path:
    """A temporary name beside ``path`` that no other writer uses, in this process or another
    (attempts store the same content at the same time from threads of one engine)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.{suffix}")
