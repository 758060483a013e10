"""fastrpc: fast length-prefixed JSON RPC over TCP for asyncio."""

from .client import Client, connect
from .errors import (
    CallTimeout,
    ConnectionClosed,
    DeadlineExceeded,
    ErrorCode,
    FastRPCError,
    FrameTooLarge,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    ProtocolError,
    RemoteError,
    RequestTooLarge,
    ServerBusy,
    ShuttingDown,
    Unauthenticated,
)
from .hooks import ClientHook
from .limits import DEFAULT_MAX_FRAME_SIZE
from .middleware import CallInfo, Middleware
from .protocol import metadata
from .server import Server, remaining, run
from .sync_client import SyncClient

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "CallInfo",
    "CallTimeout",
    "ClientHook",
    "Client",
    "ConnectionClosed",
    "DeadlineExceeded",
    "ErrorCode",
    "FastRPCError",
    "FrameTooLarge",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "Middleware",
    "ParseError",
    "ProtocolError",
    "RemoteError",
    "RequestTooLarge",
    "Server",
    "ServerBusy",
    "ShuttingDown",
    "SyncClient",
    "Unauthenticated",
    "connect",
    "metadata",
    "remaining",
    "run",
]
