from collections import deque
from typing import Any, Counter, List, Optional, Tuple, Union

from ._framing import FrameReader
from .refusal import Refusal

def ping(params: Any) -> Any: ...

class MethodCore:
    name: str
    func: Any
    call: Any
    refusals: Tuple[Optional[Refusal], ...]
    out: str
    raw_params: bool
    context: bool
    unbound: bool
    is_async: bool
    prefix: bytes

class ServerCore:
    _reader: FrameReader
    _methods: Any
    _slots: deque[List[Optional[bytes]]]
    _raw_reply: bytes
    _fresh: bool
    closing: bool
    _max_frame_size: int
    bytes_received: int
    bytes_sent: int
    frames_sent: int
    def __init__(self, methods: Any, max_frame_size: int) -> None: ...
    def receive_data(self, data: bytes) -> bytes: ...
    def buffer_updated(self, nbytes: int) -> bytes: ...
    write: Any
    after_read: Any
    watch_reads: bool
    _errors: Optional[Counter[Tuple[Optional[str], Any]]]
    def read_and_reply(self, nbytes: int) -> None: ...
    def _result_body(self, method: Any, result: Any, rid: Optional[Union[int, str]]) -> bytes: ...
    def _send(self, body: bytes) -> None: ...
    def data_to_send(self) -> bytes: ...
