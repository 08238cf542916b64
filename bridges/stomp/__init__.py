"""STOMP 1.2 over WebSocket (``ws://``, ``wss://``) or TCP (``stomp://``, ``stomp+ssl://``)."""

from bridges.stomp.client import StompSource
from bridges.stomp.frames import Frame, FrameParser, encode_frame

__all__ = ["Frame", "FrameParser", "StompSource", "encode_frame"]
