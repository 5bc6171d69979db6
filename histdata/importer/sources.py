"""Find the CSV files to import, loose or inside ZIP archives, and stream them line by line.

A ZIP member is read through :meth:`zipfile.ZipFile.open`, which decompresses as it is read:
nothing is extracted to disk and no member is ever held in memory whole, so a 2.7 GB
``XBTUSD.csv`` inside a 12 GB archive costs one read buffer. Bytes are counted as they are
read (uncompressed), which drives the progress bar.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = ["CountingReader", "ImportSource", "decode_lines", "discover_sources", "line_blocks"]


class CountingReader(io.RawIOBase):
    """A read-only binary stream that counts the bytes read through it."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self._inner = inner
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


@dataclass(frozen=True, slots=True)
class ImportSource:
    """One CSV to import: a loose file (``member`` None) or a member of a ZIP archive."""

    path: Path
    member: str | None
    size: int  # uncompressed bytes

    @property
    def name(self) -> str:
        """The CSV's own name, which carries the pair and interval."""
        return PurePosixPath(self.member).name if self.member else self.path.name

    @property
    def label(self) -> str:
        """``archive.zip:folder/XBTUSD.csv`` or the file path, for messages."""
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    @contextmanager
    def open_binary(self) -> Iterator[CountingReader]:
        """Open for streaming byte reads; the stream counts the bytes read through it.

        Raises:
            OSError, zipfile.BadZipFile: the file or archive cannot be read.
        """
        with self.path.open("rb") as raw:
            if self.member is None:
                yield CountingReader(raw)
                return
            with zipfile.ZipFile(raw) as archive, archive.open(self.member) as member:
                yield CountingReader(member)

    @contextmanager
    def open_text(self) -> Iterator[tuple[io.TextIOWrapper, CountingReader]]:
        """Open for streaming text reads; yields the text stream and its byte counter.

        Undecodable bytes become U+FFFD, so a corrupt line is rejected by the row parser
        instead of aborting the file.

        Raises:
            OSError, zipfile.BadZipFile: the file or archive cannot be read.
        """
        with self.open_binary() as counter:
            yield decode_lines(io.BufferedReader(counter, buffer_size=1 << 20)), counter


def decode_lines(stream: IO[bytes]) -> io.TextIOWrapper:
    """``stream`` as text lines the way every importer reads them.

    UTF-8 with undecodable bytes as U+FFFD; lines end at ``\n``, ``\r\n`` or ``\r``,
    which stay on the line.
    """
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")


def line_blocks(
    stream: IO[bytes], size: int, cut: Callable[[bytes], int] | None = None
) -> Iterator[bytes]:
    """Read ``stream`` in blocks of about ``size`` bytes that end at a line end.

    ``cut(block)`` may end a block earlier than its last newline (the rest starts the next
    block); the file's last block ends wherever the file does. No line is split or lost.
    """
    carry = b""
    while True:
        data = stream.read(size)
        if not data:
            if carry:
                yield carry
            return
        data = carry + data if carry else data
        end = data.rfind(b"\n") + 1
        if end == 0:
            carry = data  # one line longer than a block: keep reading
            continue
        if cut is not None:
            end = cut(data[:end]) or end
        carry = data[end:]
        yield data[:end]


def discover_sources(paths: Iterable[Path]) -> Iterator[ImportSource]:
    """Expand paths into CSV sources: ``*.csv`` files, CSV members of ``*.zip`` files, and
    both found under directories (sorted, recursively).

    ZIP members are matched by suffix wherever they sit in the archive; macOS resource forks
    (``__MACOSX/``) are skipped.

    Raises:
        FileNotFoundError: a path does not exist.
        zipfile.BadZipFile: a ``.zip`` is not a ZIP archive.
    """
    for path in paths:
        if path.is_dir():
            yield from discover_sources(
                sorted(p for p in path.rglob("*") if p.suffix.lower() in (".csv", ".zip"))
            )
        elif path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if (
                        not info.is_dir()
                        and info.filename.lower().endswith(".csv")
                        and not info.filename.startswith("__MACOSX/")
                    ):
                        yield ImportSource(path, info.filename, info.file_size)
        elif path.exists():
            yield ImportSource(path, None, path.stat().st_size)
        else:
            raise FileNotFoundError(f"no such file: {path}")
