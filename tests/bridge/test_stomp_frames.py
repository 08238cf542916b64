"""The STOMP 1.2 frame parser and serialiser: examples, then hypothesis fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridges.transports.base import ProtocolError
from bridges.transports.stomp.frames import (
    COMMANDS,
    UNESCAPED_COMMANDS,
    Frame,
    FrameParser,
    encode_frame,
    escape,
    unescape,
)


def parse_all(data: bytes, chunk: int | None = None) -> list[Frame]:
    parser = FrameParser()
    if chunk is None:
        return parser.feed(data)
    frames: list[Frame] = []
    for i in range(0, len(data), chunk):
        frames += parser.feed(data[i : i + chunk])
    return frames


MESSAGE = (
    b"MESSAGE\nsubscription:sub-1\ndestination:/queue/q\nmessage-id:T_sub-1@@session-x@@1\n"
    b"redelivered:false\nack:T_sub-1@@session-x@@1\nx-message-id:abc\npersistent:true\n"
    b"content-type:application/json\ncontent-length:9\n\n{\"a\": 1}\n\x00\n"
)


def test_rabbitmq_message_frame() -> None:
    [frame] = parse_all(MESSAGE)
    assert frame.command == "MESSAGE"
    assert frame.body == b'{"a": 1}\n'
    assert frame.headers["ack"] == "T_sub-1@@session-x@@1"
    assert frame.headers["x-message-id"] == "abc"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_split_anywhere(chunk: int) -> None:
    frames = parse_all(MESSAGE * 3, chunk)
    assert [f.body for f in frames] == [b'{"a": 1}\n'] * 3


def test_content_length_body_may_hold_nuls() -> None:
    body = b"\x00a\x00\x00b\n\n\x00"
    [frame] = parse_all(encode_frame("MESSAGE", {"k": "v"}, body))
    assert frame.body == body
    assert frame.headers == {"k": "v", "content-length": str(len(body))}


def test_nul_terminated_body() -> None:
    [frame] = parse_all(b"MESSAGE\nk:v\n\nhello\nworld\x00")
    assert frame.body == b"hello\nworld"


def test_heartbeats_between_frames_are_skipped() -> None:
    data = b"\n\r\n\n" + b"RECEIPT\nreceipt-id:1\n\n\x00" + b"\n\n\r\n" + b"RECEIPT\nreceipt-id:2\n\n\x00\n"
    assert [f.headers["receipt-id"] for f in parse_all(data, 1)] == ["1", "2"]


def test_only_heartbeats() -> None:
    parser = FrameParser()
    assert parser.feed(b"\n\r\n\n\r") == []
    assert parser.feed(b"\n") == []
    assert parser.buffered == 0


def test_crlf_line_endings() -> None:
    [frame] = parse_all(b"MESSAGE\r\nk:v\r\nx:y\r\n\r\nbody\x00", 1)
    assert frame.headers == {"k": "v", "x": "y"}
    assert frame.body == b"body"


def test_header_escapes() -> None:
    [frame] = parse_all(b"MESSAGE\na\\cb:x\\ny\\rz\\\\w\n\n\x00")
    assert frame.headers == {"a:b": "x\ny\rz\\w"}


def test_connect_and_connected_are_not_unescaped() -> None:
    [frame] = parse_all(b"CONNECTED\nsession:a\\cb\nversion:1.2\n\n\x00")
    assert frame.headers["session"] == "a\\cb"


def test_repeated_header_first_wins() -> None:
    [frame] = parse_all(b"MESSAGE\nk:first\nk:second\n\n\x00")
    assert frame.headers["k"] == "first"


def test_value_may_contain_colons() -> None:
    [frame] = parse_all(b"CONNECTED\nserver:RabbitMQ:3.10\n\n\x00")
    assert frame.headers["server"] == "RabbitMQ:3.10"


@pytest.mark.parametrize(
    "data",
    [
        b"HELLO\n\n\x00",  # unknown command
        b"GET / HTTP/1.1\r\n",  # not STOMP at all
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello on a plain port
        b"MESSAGE\nk:\\t\n\n\x00",  # undefined escape
        b"MESSAGE\nno colon here\n\n\x00",
        b"MESSAGE\ncontent-length:3\n\nabcd\x00",  # no NUL after content-length bytes
        b"MESSAGE\ncontent-length:-1\n\n\x00",
        b"MESSAGE\ncontent-length:x\n\n\x00",
        b"MESSAGE\n\xff\xfe:v\n\n\x00",  # headers not UTF-8
        b"MESS\x00AGE\n\n\x00",
        b"\rX",  # CR that does not start an EOL
    ],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_all(data)
    with pytest.raises(ProtocolError):
        parse_all(data, 1)


def test_garbage_fails_before_the_frame_is_complete() -> None:
    # No need to wait for a NUL or a blank line to know this is not STOMP.
    with pytest.raises(ProtocolError):
        FrameParser().feed(b"SSH-2.0-OpenSSH")


def test_failed_parser_stays_failed() -> None:
    parser = FrameParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"NOPE\n\n\x00")
    with pytest.raises(ProtocolError):
        parser.feed(MESSAGE)


def test_size_limits() -> None:
    with pytest.raises(ProtocolError, match="larger than"):
        FrameParser(max_frame_size=100).feed(b"MESSAGE\ncontent-length:101\n\n")
    with pytest.raises(ProtocolError, match="larger than"):
        FrameParser(max_frame_size=100).feed(b"MESSAGE\n\n" + b"x" * 200)
    with pytest.raises(ProtocolError, match="header block"):
        FrameParser(max_header_size=100).feed(b"MESSAGE\nk:" + b"v" * 200)


def test_encode_rejects_what_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        encode_frame("SEND", {}, b"a\x00b", content_length=False)
    with pytest.raises(ValueError):
        encode_frame("CONNECT", {"passcode": "a\nb"})
    with pytest.raises(ValueError):
        encode_frame("SEND", {"k": "a\x00b"})


# -- properties -----------------------------------------------------------------

# Header text: any Unicode that UTF-8 can carry, except NUL (the frame terminator).
header_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
plain_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"))


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, Frame]:
    """A serialised frame (LF or CRLF line endings) and the frame the parser must return."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    if command in UNESCAPED_COMMANDS:
        keys = plain_text.filter(lambda k: k and ":" not in k)
        values = plain_text
    else:
        keys = header_text.filter(bool)
        values = header_text
    headers = draw(st.dictionaries(keys.filter(lambda k: k != "content-length"), values, max_size=6))
    with_length = draw(st.booleans())
    body = draw(st.binary(max_size=300) if with_length else st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"")))
    data = encode_frame(command, headers, body, content_length=with_length)
    if draw(st.booleans()):  # CRLF line endings in the command and header lines
        head, sep, rest = data.partition(b"\n\n")
        data = head.replace(b"\n", b"\r\n") + b"\r\n\r\n" + rest
    expected = dict(headers)
    if with_length and body:
        expected["content-length"] = str(len(body))
    return data, Frame(command, expected, body)


heartbeats = st.lists(st.sampled_from([b"\n", b"\r\n"]), max_size=3).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(heartbeats, frames()), min_size=1, max_size=8), st.lists(st.integers(0, 10_000), max_size=20))
def test_roundtrip_split_at_random_points(items: list[tuple[bytes, tuple[bytes, Frame]]], cuts: list[int]) -> None:
    stream = b"".join(hb + data for hb, (data, _) in items) + b"\n"
    parser = FrameParser()
    got: list[Frame] = []
    for chunk in split(stream, cuts):
        got += parser.feed(chunk)
    assert got == [frame for _, (_, frame) in items]
    assert parser.buffered == 0


@settings(max_examples=400)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_random_bytes_parse_or_raise_protocol_error(chunks: list[bytes]) -> None:
    parser = FrameParser(max_header_size=256, max_frame_size=1024)
    try:
        for chunk in chunks:
            for frame in parser.feed(chunk):
                assert frame.command in COMMANDS
    except ProtocolError:
        pass


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_corrupted_streams_parse_or_raise_protocol_error(items: list[tuple[bytes, Frame]], data: st.DataObject) -> None:
    stream = bytearray(b"".join(raw for raw, _ in items))
    for _ in range(data.draw(st.integers(1, 5))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=10))
    parser = FrameParser()
    try:
        for chunk in split(bytes(stream), cuts):
            parser.feed(chunk)
    except ProtocolError:
        pass


@given(header_text)
def test_escape_roundtrip(text: str) -> None:
    escaped = escape(text)
    assert not any(c in escaped for c in "\r\n:")
    assert unescape(escaped) == text
