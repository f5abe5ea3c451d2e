"""Read and write W&B run files (`run-<id>.wandb`), the transaction log `wandb sync` replays.

The format is internal to wandb (pinned to 0.31.0 in pyproject): a LevelDB-log-like framing around
`wandb_internal_pb2.Record` protobufs. File header: `:W&B`, magic 0xBEE1 (little-endian), version 0.
The file is cut into 32 KiB blocks (offsets counted from the start of the file, header included); each
chunk has a 7-byte header (CRC32 IEEE of type byte + payload, uint16 length, type) and a record larger
than the room left in a block is split FIRST / MIDDLE... / LAST. Fewer than 7 bytes left: zero padding.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
_CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class RunFileError(Exception):
    """A `.wandb` file that is not in the format we write (corrupt, truncated, or a newer wandb)."""


class RecordWriter:
    """Appends records to a `.wandb` file. Record numbers are assigned in order, starting at 1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(FILE_HEADER)
        self._offset = len(FILE_HEADER)
        self._num = 0
        self._pending: list[bytes] = []

    def write(self, record: pb.Record) -> None:
        self._num += 1
        record.num = self._num
        self._emit(record.SerializeToString())

    def _emit(self, data: bytes) -> None:
        first = True
        while True:
            left = BLOCK - self._offset % BLOCK
            if left < _CHUNK_HEADER:
                self._pending.append(b"\x00" * left)
                self._offset += left
                left = BLOCK
            room = left - _CHUNK_HEADER
            piece, data = data[:room], data[room:]
            last = not data
            kind = (FULL if last else FIRST) if first else (LAST if last else MIDDLE)
            crc = zlib.crc32(bytes([kind]) + piece)
            self._pending.append(struct.pack("<IHB", crc, len(piece), kind))
            self._pending.append(piece)
            self._offset += _CHUNK_HEADER + len(piece)
            first = False
            if last:
                break
        if len(self._pending) > 256:
            self._flush()

    def _flush(self) -> None:
        self._fh.write(b"".join(self._pending))
        self._pending.clear()

    @property
    def count(self) -> int:
        return self._num

    def close(self) -> None:
        self._flush()
        self._fh.flush()
        self._fh.close()


def read_records(path: Path) -> Iterator[pb.Record]:
    """Every record of a `.wandb` file; a torn tail (a writer killed mid-record) ends the iteration."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[: len(FILE_HEADER)] != FILE_HEADER:
        raise RunFileError(f"{path} is not a W&B run file (bad header)")
    offset = len(FILE_HEADER)
    parts: list[bytes] = []
    while offset < len(data):
        left = BLOCK - offset % BLOCK
        if left < _CHUNK_HEADER:
            offset += left
            continue
        if offset + _CHUNK_HEADER > len(data):
            return
        crc, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0 and length == 0:
            offset += left  # zero padding to the end of the block
            continue
        piece = data[offset + _CHUNK_HEADER : offset + _CHUNK_HEADER + length]
        if len(piece) < length or zlib.crc32(bytes([kind]) + piece) != crc:
            return
        offset += _CHUNK_HEADER + length
        if kind == FULL:
            parts = [piece]
        elif kind == FIRST:
            parts = [piece]
            continue
        elif kind == MIDDLE:
            parts.append(piece)
            continue
        elif kind == LAST:
            parts.append(piece)
        else:
            raise RunFileError(f"{path}: unknown chunk type {kind} at offset {offset}")
        record = pb.Record()
        record.ParseFromString(b"".join(parts))
        parts = []
        yield record
