"""STOMP 1.2 over WebSocket (``ws://``, ``wss://``) or TCP (``stomp://``, ``stomp+ssl://``)."""

from bridges.transports.stomp.client import StompConnection
from bridges.transports.stomp.frames import Frame, FrameParser, encode_frame

__all__ = ["Frame", "FrameParser", "StompConnection", "encode_frame"]
