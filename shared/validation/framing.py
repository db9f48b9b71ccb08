"""Framing: an upload's byte chunks as lines, in constant memory (lines may span chunks; a line over the record
size limit is dropped as it arrives, never buffered; a UTF-8 byte order mark and CRLF endings are removed)."""

from __future__ import annotations

from typing import BinaryIO, Iterable, Iterator

from .sniffing import BOM

CHUNK_BYTES = 1 << 20  # read size: large chunks keep the per-chunk overhead out of the hot path


def read_chunks(stream: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Chunks of a binary file object until its end."""
    while chunk := stream.read(size):
        yield chunk


def line_batches(chunks: Iterable[bytes], limit: int) -> Iterator[list[bytes | None]]:
    """The complete lines of each chunk, in a list (line break and a trailing '\\r' removed); None stands for a
    line over the limit, whose bytes are dropped as they arrive rather than buffered.

    Each line is sliced out of its chunk as its own bytes object: a valid line is kept as it is, with no second
    copy, and no line holds its chunk alive. (`bytes.split` would be one C call, but measured 3x slower here:
    it allocates all of a chunk's lines at once, where slices made and freed one after another reuse memory
    that is still in cache.)"""
    tail = bytearray()  # the unfinished line, carried to the next chunk
    skipping = False  # inside a line already known to be too long: drop bytes until its end
    for chunk in without_bom(chunks):
        find = chunk.find
        end = find(b"\n")
        if end < 0:
            if not skipping:
                tail += chunk
                if len(tail) > limit + 1:  # over the limit even without a '\r'
                    skipping = True
                    tail = bytearray()
            continue
        if skipping:
            first = None
            skipping = False
        elif tail:
            tail += memoryview(chunk)[:end]
            first = within(bytes(tail), limit)
            tail = bytearray()
        else:
            first = within(chunk[:end], limit)
        lines: list = []
        add = lines.append
        start = end + 1
        while (end := find(b"\n", start)) >= 0:
            add(chunk[start:end])
            start = end + 1
        if lines:
            if b"\r" in chunk:
                lines = [line[:-1] if line[-1:] == b"\r" else line for line in lines]
            if max(map(len, lines)) > limit:
                lines = [line if len(line) <= limit else None for line in lines]
        lines.insert(0, first)
        yield lines
        if len(chunk) - start > limit + 1:
            skipping = True
        else:
            tail += memoryview(chunk)[start:]
    if skipping:
        yield [None]
    elif tail:
        yield [within(bytes(tail), limit)]


def without_bom(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks with a leading UTF-8 byte order mark removed, even when it spans chunks."""
    chunks = iter(chunks)
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(BOM) or not BOM.startswith(head):
            break
    if head:
        yield head[len(BOM):] if head.startswith(BOM) else head
    yield from chunks


def within(line: bytes, limit: int) -> bytes | None:
    """The line without a trailing '\\r', or None when that is over `limit` bytes."""
    if line[-1:] == b"\r":
        line = line[:-1]
    return None if len(line) > limit else line


def prepend(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from chunks


