"""Import under hostile input: overlong lines and ZIP members that lie about their size."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from histdata.importer import import_paths
from histdata.importer.sources import LongLine, bounded_lines, decode_lines, line_blocks
from histdata.storage import Storage

T0 = 1_600_000_000
MIB = 1 << 20


class Endless(io.RawIOBase):
    """``size`` bytes of ``fill`` with no newline, then ``tail``; never held in memory."""

    def __init__(self, size: int, *, fill: bytes = b"7", tail: bytes = b"\n") -> None:
        self._left = size
        self._fill = fill
        self._tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._left <= 0:
            n = min(len(buffer), len(self._tail))
            buffer[:n] = self._tail[:n]
            self._tail = self._tail[n:]
            return n
        n = min(len(buffer), self._left)
        buffer[:n] = self._fill * n
        self._left -= n
        return n


class TestLongLines:
    def test_line_blocks_skip_a_line_longer_than_the_limit_in_flat_memory(self) -> None:
        """A 256 MiB line streams by as one LongLine while memory stays near one block."""
        stream = io.BufferedReader(Endless(256 * MIB, tail=b"\n1,2,3\n"), buffer_size=MIB)
        tracemalloc.start()
        try:
            items = list(line_blocks(stream, MIB, max_line=MIB))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert items == [LongLine(256 * MIB), b"1,2,3\n"]
        assert peak < 8 * MIB

    def test_text_lines_skip_a_line_longer_than_the_limit_in_flat_memory(self) -> None:
        """The text reader yields a LongLine for a 64 MiB line and never holds it whole."""
        raw = Endless(64 * MIB, tail=b"\nnext\n")
        text = decode_lines(io.BufferedReader(raw, buffer_size=MIB))
        tracemalloc.start()
        try:
            items = list(bounded_lines(text, MIB))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert items == [LongLine(64 * MIB), "next\n"]
        assert peak < 16 * MIB

    @pytest.mark.parametrize("block_bytes", [64 * 1024, 8 * MIB])
    async def test_a_long_trades_line_is_rejected_with_its_line_number(
        self, storage: Storage, tmp_path: Path, block_bytes: int
    ) -> None:
        """A line over max_line_bytes is rejected and counted; the lines around it land."""
        path = tmp_path / "XBTUSD.csv"
        good = [f"{T0 + i},100.5,0.25\n" for i in range(10)]
        path.write_text("".join([*good[:4], "9" * (3 * MIB) + "\n", *good[4:]]))
        summary = (
            await import_paths(storage, [path], block_bytes=block_bytes, max_line_bytes=MIB)
        ).files[0]
        assert (summary.rows_read, summary.inserted) == (11, 10)
        assert summary.rejected == {"line_too_long": 1}
        assert summary.examples["line_too_long"][0].startswith("line 5: line of 3,145,728 bytes")

    async def test_a_long_candle_line_is_rejected_with_its_line_number(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """The OHLCVT reader bounds its lines the same way."""
        path = tmp_path / "XBTUSD_1.csv"
        rows = [f"{T0 + 60 * i - T0 % 60},10,11,9,10.5,2.5,3\n" for i in range(4)]
        path.write_text("".join([rows[0], "x" * (2 * MIB) + "\n", *rows[1:]]))
        summary = (await import_paths(storage, [path], max_line_bytes=MIB)).files[0]
        assert summary.rejected == {"line_too_long": 1}
        assert summary.examples["line_too_long"][0].startswith("line 2:")
        assert summary.inserted == 4


def _patch_declared_size(archive: Path, size: int) -> None:
    """Rewrite the member's uncompressed size in its local and central headers."""
    data = bytearray(archive.read_bytes())
    local = data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, size)
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, size)
    archive.write_bytes(bytes(data))


class TestZipMembers:
    async def test_absurd_inflation_is_refused_unread(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """A member declaring over 1000:1 inflation is refused with a clear reason, exit 1."""
        archive = tmp_path / "bomb.zip"
        with (
            zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
            zf.open("XBTUSD.csv", "w") as member,
        ):
            for _ in range(64):
                member.write(b"\0" * MIB)
        summary = (await import_paths(storage, [archive])).files[0]
        assert summary.skipped.startswith("zip_bomb: declares 67,108,864 bytes")
        assert summary.rows_read == 0

    async def test_member_inflating_past_its_declared_size_is_stopped(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """Data beyond the declared size are never read; the file reports a clear error."""
        archive = tmp_path / "lying.zip"
        lines = "".join(f"{T0 + i},100.5,0.25\n" for i in range(1_000))
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("XBTUSD.csv", lines)
        declared = len(lines) // 2
        _patch_declared_size(archive, declared)
        summary = (await import_paths(storage, [archive])).files[0]
        assert summary.error.startswith("damaged ZIP member, read stopped: Bad CRC-32")
        assert summary.rows_read <= declared // len(f"{T0},100.5,0.25\n") + 1

    async def test_ordinary_members_still_import(self, storage: Storage, tmp_path: Path) -> None:
        """A normally compressed member (Kraken's deflate about 4:1) imports whole."""
        archive = tmp_path / "ok.zip"
        lines = "".join(f"{T0 + i},100.5,0.25\n" for i in range(5_000))
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("XBTUSD.csv", lines)
        summary = (await import_paths(storage, [archive])).files[0]
        assert (summary.inserted, summary.error, summary.skipped) == (5_000, "", "")
