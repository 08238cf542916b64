"""A tiny STOMP 1.2 over WebSocket client, just enough for the simulator's tests
(the project's real client lives in bridges/ and is not used here on purpose)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

_UNESCAPE = {"\\n": "\n", "\\c": ":", "\\\\": "\\", "\\r": "\r"}


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        pair = value[i:i + 2]
        if pair in _UNESCAPE:
            out.append(_UNESCAPE[pair])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


@dataclass
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


def encode(command: str, headers: dict[str, str], body: str = "") -> str:
    lines = [command, *(f"{k}:{v}" for k, v in headers.items())]
    return "\n".join(lines) + "\n\n" + body + "\x00"


def decode(raw: str) -> Frame:
    head, _, body = raw.partition("\n\n")
    lines = head.lstrip("\r\n").split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.rstrip("\r").partition(":")
        headers.setdefault(_unescape(key), _unescape(value))  # first occurrence wins (1.2)
    return Frame(lines[0].strip(), headers, body)


class StompClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._buffer = ""
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, *, login: str, passcode: str, vhost: str, timeout: float = 10.0) -> "StompClient":
        ws = await connect(url, subprotocols=["v12.stomp"], open_timeout=timeout)  # type: ignore[list-item]
        client = cls(ws)
        await ws.send(encode("CONNECT", {
            "accept-version": "1.2", "host": vhost, "login": login, "passcode": passcode, "heart-beat": "0,0",
        }))
        frame = await client.next_frame(timeout)
        if frame.command != "CONNECTED":
            await client.close()
            raise ConnectionError(f"STOMP CONNECT refused: {frame.command} {frame.headers} {frame.body}")
        return client

    async def _read(self) -> None:
        async for data in self.ws:
            self._buffer += data if isinstance(data, str) else data.decode()
            while "\x00" in self._buffer:
                raw, self._buffer = self._buffer.split("\x00", 1)
                if raw.strip("\r\n"):
                    await self.frames.put(decode(raw))

    async def next_frame(self, timeout: float = 10.0) -> Frame:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def subscribe(self, destination: str, sub_id: str = "0", ack: str = "client-individual") -> None:
        # A RECEIPT makes the subscription certain before the test publishes anything.
        await self.ws.send(encode("SUBSCRIBE", {"id": sub_id, "destination": destination, "ack": ack,
                                                "receipt": f"sub-{sub_id}"}))
        frame = await self.next_frame()
        if frame.command != "RECEIPT":
            raise ConnectionError(f"SUBSCRIBE failed: {frame.command} {frame.headers} {frame.body}")

    async def next_message(self, timeout: float = 10.0) -> Frame:
        frame = await self.next_frame(timeout)
        if frame.command != "MESSAGE":
            raise AssertionError(f"expected MESSAGE, got {frame.command} {frame.headers} {frame.body}")
        return frame

    async def ack(self, frame: Frame) -> None:
        await self.ws.send(encode("ACK", {"id": frame.headers["ack"]}))

    async def close(self) -> None:
        self._reader.cancel()
        try:
            await self.ws.send(encode("DISCONNECT", {}))
        except Exception:  # noqa: BLE001 - already closed
            pass
        await self.ws.close()
