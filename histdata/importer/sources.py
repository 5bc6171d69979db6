"""Find the CSV files to import, loose or inside ZIP archives, and stream them line by line.

A ZIP member is read through :meth:`zipfile.ZipFile.open`, which decompresses as it is read:
nothing is extracted to disk and no member is ever held in memory whole, so a 2.7 GB
``XBTUSD.csv`` inside a 12 GB archive costs one read buffer. Bytes are counted as they are
read (uncompressed), which drives the progress bar.

Hostile input is bounded: no line is ever held whole beyond ``max_line_bytes`` (a longer one
is skipped as it streams by and reported as a :class:`LongLine`), and a ZIP member that
claims to inflate more than :data:`MAX_INFLATION` times its compressed size is refused
before it is read. Kraken's CSVs deflate about 4:1; a ZIP bomb's members, 1000:1 and more.
(A member that inflates past its declared size cannot get further than that size:
:mod:`zipfile` stops there and fails its CRC check, which the importer reports.)
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from histdata.errors import RejectedInput

__all__ = [
    "MAX_INFLATION",
    "CountingReader",
    "ImportSource",
    "LongLine",
    "bounded_lines",
    "decode_lines",
    "discover_sources",
    "line_blocks",
]

# Uncompressed size over compressed size beyond which a ZIP member is refused unread.
MAX_INFLATION = 1000


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line longer than the limit, skipped as it was read; only its length is kept.

    ``length`` counts its bytes (characters, for text lines) without the line ending.
    """

    length: int


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
            RejectedInput: ``zip_bomb``, a member inflating over :data:`MAX_INFLATION`:1.
        """
        with self.path.open("rb") as raw:
            if self.member is None:
                yield CountingReader(raw)
                return
            with zipfile.ZipFile(raw) as archive:
                info = archive.getinfo(self.member)
                if info.file_size > MAX_INFLATION * max(info.compress_size, 1):
                    raise RejectedInput(
                        "zip_bomb",
                        f"declares {info.file_size:,} bytes from {info.compress_size:,}"
                        f" compressed (over {MAX_INFLATION}:1); refused unread",
                        where=self.label,
                    )
                with archive.open(info) as member:
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


def bounded_lines(text: IO[str], max_chars: int) -> Iterator[str | LongLine]:
    """The lines of ``text`` (with their endings), a line longer than ``max_chars`` without
    its ending given as a :class:`LongLine` instead; never more than ``max_chars + 1``
    characters are held."""
    while line := text.readline(max_chars + 1):
        if len(line) <= max_chars or line.endswith(("\n", "\r")):
            yield line
            continue
        length = len(line)
        while (line := text.readline(max_chars + 1)) and not line.endswith(("\n", "\r")):
            length += len(line)
        yield LongLine(length + len(line.rstrip("\r\n")))


def line_blocks(
    stream: IO[bytes],
    size: int,
    cut: Callable[[bytes], int] | None = None,
    *,
    max_line: int | None = None,
) -> Iterator[bytes | LongLine]:
    """Read ``stream`` in blocks of about ``size`` bytes that end at a line end.

    ``cut(block)`` may end a block earlier than its last newline (the rest starts the next
    block); the file's last block ends wherever the file does. No line is split or lost. A
    line that grows past ``max_line`` bytes before a block ends it is skipped as it streams
    by and yielded as a :class:`LongLine` in its place (shorter lines inside a block are the
    reader's to check), so memory stays within ``size + max_line`` whatever the input.
    """
    carry = b""
    skipped: int | None = None  # bytes of a long line being skipped
    while True:
        data = stream.read(size)
        if skipped is not None:
            end = data.find(b"\n")
            if end < 0 and data:
                skipped += len(data)
                continue
            yield LongLine(skipped + (end if end >= 0 else len(data)))
            skipped = None
            data = data[end + 1 :] if end >= 0 else b""
            if not data:
                continue
        if not data:
            if carry:
                yield carry
            return
        data = carry + data if carry else data
        end = data.rfind(b"\n") + 1
        carry = data[end:]
        if max_line is not None and len(carry) > max_line:
            skipped, carry = len(carry), b""
        if end == 0:
            continue  # one line longer than a block: keep reading
        if cut is not None and skipped is None:
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
