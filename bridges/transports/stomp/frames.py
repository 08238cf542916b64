"""STOMP 1.2 frames: a pure, incremental parser and a serialiser (no I/O).

The parser works on a bytearray with ``find``: per frame it does one search for the end
of the headers, one split of the header block and, for bodies, either a slice
(content-length) or one search for the NUL. Header unescaping only runs when the block
contains a backslash, which RabbitMQ's own headers never do.
"""

from __future__ import annotations

import re

import msgspec

from bridges.transports.base import ProtocolError

__all__ = ["Frame", "FrameParser", "encode_frame", "escape", "unescape"]

COMMANDS = frozenset(
    {
        # server frames
        "CONNECTED", "MESSAGE", "RECEIPT", "ERROR",
        # client frames (so the parser can also read what the serialiser wrote)
        "CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK",
        "BEGIN", "COMMIT", "ABORT", "DISCONNECT",
    }
)  # fmt: skip
# STOMP 1.2: CONNECT and CONNECTED headers are not escaped (for 1.0 compatibility).
UNESCAPED_COMMANDS = frozenset({"CONNECT", "CONNECTED"})

DEFAULT_MAX_HEADER_SIZE = 64 * 1024
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024


class Frame(msgspec.Struct, frozen=True, gc=False):
    command: str
    headers: dict[str, str]
    body: bytes = b""


_ESCAPES = {"\\r": "\r", "\\n": "\n", "\\c": ":", "\\\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(.?)", re.DOTALL)


def _unescape_one(m: re.Match[str]) -> str:
    try:
        return _ESCAPES[m.group(0)]
    except KeyError:
        # The spec makes undefined escapes a fatal protocol error.
        raise ProtocolError(f"invalid header escape {m.group(0)!r}") from None


def unescape(text: str) -> str:
    return _ESCAPE_RE.sub(_unescape_one, text) if "\\" in text else text


_ESCAPE_TABLE = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"})


def escape(text: str) -> str:
    # translate() with this table costs over a microsecond even when nothing changes, and
    # it runs for every ACK: test first (RabbitMQ's ack ids never need escaping).
    if "\\" in text or ":" in text or "\n" in text or "\r" in text:
        return text.translate(_ESCAPE_TABLE)
    return text


def encode_frame(
    command: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    content_length: bool = True,
) -> bytes:
    """Serialise one frame. ``content_length=False`` relies on the NUL terminator
    instead (the body must then contain no NUL)."""
    lines = [command]
    if headers and any("\x00" in key or "\x00" in value for key, value in headers.items()):
        raise ValueError("a header cannot contain NUL (it ends the frame)")
    if headers:
        if command in UNESCAPED_COMMANDS:
            for key, value in headers.items():
                if any(c in key + value for c in "\r\n") or ":" in key:
                    raise ValueError(f"{command} header {key!r} cannot carry CR, LF or a colon in its name")
                lines.append(f"{key}:{value}")
        else:
            lines.extend(f"{escape(key)}:{escape(value)}" for key, value in headers.items())
    if content_length and body:
        lines.append(f"content-length:{len(body)}")
    elif b"\x00" in body:
        raise ValueError("a body containing NUL needs content-length")
    return ("\n".join(lines) + "\n\n").encode() + body + b"\x00"


class FrameParser:
    """Feed bytes in arbitrary chunks, get complete frames out.

    Heartbeat EOLs between frames are skipped. Anything that cannot be STOMP raises
    :class:`ProtocolError`; after that the parser (and the connection) is unusable.
    """

    __slots__ = ("_buf", "_max_header", "_max_frame", "_failed")

    def __init__(
        self,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self._buf = bytearray()
        self._max_header = max_header_size
        self._max_frame = max_frame_size
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise ProtocolError("parser already failed")
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        try:
            while True:
                frame, pos = self._parse_one(buf, pos)
                if frame is None:
                    break
                frames.append(frame)
        except ProtocolError:
            self._failed = True
            raise
        finally:
            if pos:
                del buf[:pos]
        return frames

    def _parse_one(self, buf: bytearray, pos: int) -> tuple[Frame | None, int]:
        """One frame starting at ``pos``, or ``(None, pos)`` if it is incomplete."""
        size = len(buf)
        # Heartbeats: bare EOLs (LF or CRLF) between frames.
        while pos < size:
            c = buf[pos]
            if c == 10:
                pos += 1
            elif c == 13:
                if pos + 1 >= size:
                    return None, pos
                if buf[pos + 1] != 10:
                    raise ProtocolError("CR not followed by LF between frames")
                pos += 2
            else:
                break
        if pos >= size:
            return None, pos

        end = buf.find(b"\n\n", pos)
        limit = end if end >= 0 else size
        crlf = buf.find(b"\n\r\n", pos, limit + 1)
        if crlf >= 0 and (end < 0 or crlf < end):
            end, body_start = crlf, crlf + 3
        elif end >= 0:
            body_start = end + 2
        else:
            self._check_incomplete_headers(buf, pos, size)
            return None, pos
        if end - pos > self._max_header:
            raise ProtocolError(f"header block longer than {self._max_header} bytes")

        command, headers = self._parse_head(buf, pos, end)
        length = headers.get("content-length")
        if length is not None:
            n = self._content_length(length)
            stop = body_start + n
            if stop >= size:
                return None, pos
            if buf[stop] != 0:
                raise ProtocolError("frame body not terminated by NUL after content-length bytes")
        else:
            stop = buf.find(b"\x00", body_start)
            if stop < 0:
                if size - pos > self._max_frame:
                    raise ProtocolError(f"frame larger than {self._max_frame} bytes")
                return None, pos
        return Frame(command, headers, bytes(buf[body_start:stop])), stop + 1

    def _check_incomplete_headers(self, buf: bytearray, pos: int, size: int) -> None:
        """Fail early on garbage instead of buffering it until the size limit."""
        if size - pos > self._max_header:
            raise ProtocolError(f"header block longer than {self._max_header} bytes")
        if buf.find(b"\x00", pos, size) >= 0:
            raise ProtocolError("NUL inside frame headers")
        nl = buf.find(b"\n", pos, size)
        if nl >= 0:
            self._command(bytes(buf[pos:nl]))
            return
        head = bytes(buf[pos:size]).rstrip(b"\r").decode("ascii", "replace")
        if not any(command.startswith(head) for command in COMMANDS):
            raise ProtocolError(f"unknown STOMP command {head[:32]!r}")

    @staticmethod
    def _command(line: bytes) -> str:
        command = line.rstrip(b"\r").decode("ascii", "replace")
        if command not in COMMANDS:
            raise ProtocolError(f"unknown STOMP command {line[:32]!r}")
        return command

    def _parse_head(self, buf: bytearray, pos: int, end: int) -> tuple[str, dict[str, str]]:
        try:
            block = buf[pos:end].decode()
        except UnicodeDecodeError:
            raise ProtocolError("headers are not UTF-8") from None
        lines = block.split("\n")
        if "\r" in block:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        command = lines[0]
        if command not in COMMANDS:
            raise ProtocolError(f"unknown STOMP command {command[:32]!r}")
        if "\x00" in block:
            raise ProtocolError("NUL inside frame headers")
        escaped = "\\" in block and command not in UNESCAPED_COMMANDS
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"header line without a colon: {line[:64]!r}")
            if escaped:
                key, value = unescape(key), unescape(value)
            # STOMP 1.2: when a header repeats, the first occurrence wins.
            headers.setdefault(key, value)
        return command, headers

    def _content_length(self, value: str) -> int:
        if not value.isdigit() or not value.isascii():
            raise ProtocolError(f"invalid content-length {value[:32]!r}")
        n = int(value)
        if n > self._max_frame:
            raise ProtocolError(f"frame larger than {self._max_frame} bytes")
        return n
