"""
Clients of the framing receivers' test servers (C{tests/protocols/framedapp.py})
and of the examples: how each family frames a message, and a lock-step client
that reconnects after a clean close, as a real client of a draining server does.

Plain threads and sockets, as the rest of the harness: the server is observed
from outside.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count


class Codec:
    """
    How one family frames requests and replies (lines by default).
    """

    delimiter = b"\r\n"

    def encode(self, message: bytes) -> bytes:
        return message + self.delimiter

    def decode(self, buffer: bytearray) -> list[bytes]:
        """
        Take every complete reply out of C{buffer}.
        """
        replies = []
        while (end := buffer.find(self.delimiter)) >= 0:
            replies.append(bytes(buffer[:end]))
            del buffer[: end + len(self.delimiter)]
        return replies


class IntN(Codec):
    def __init__(self, fmt: str) -> None:
        self.prefix = struct.Struct(fmt)

    def encode(self, message: bytes) -> bytes:
        return self.prefix.pack(len(message)) + message

    def decode(self, buffer: bytearray) -> list[bytes]:
        replies = []
        while len(buffer) >= self.prefix.size:
            (length,) = self.prefix.unpack_from(buffer)
            end = self.prefix.size + length
            if len(buffer) < end:
                break
            replies.append(bytes(buffer[self.prefix.size : end]))
            del buffer[:end]
        return replies


class Netstring(Codec):
    def encode(self, message: bytes) -> bytes:
        return b"%d:%s," % (len(message), message)

    def decode(self, buffer: bytearray) -> list[bytes]:
        replies = []
        while (colon := buffer.find(b":")) > 0:
            end = colon + 1 + int(buffer[:colon])
            if len(buffer) < end + 1:
                break
            replies.append(bytes(buffer[colon + 1 : end]))
            del buffer[: end + 1]
        return replies


def ampBox(**values: bytes) -> bytes:
    return (
        b"".join(
            struct.pack("!H", len(k)) + k.encode() + struct.pack("!H", len(v)) + v
            for k, v in values.items()
        )
        + b"\0\0"
    )


class AMPCodec(Codec):
    """
    AMP's boxes: a command C{command} with one argument, answered with one
    value (C{answer}).
    """

    def __init__(
        self, command: bytes = b"Echo", argument: str = "message", answer: str = "reply"
    ) -> None:
        self.command, self.argument, self.answer = command, argument, answer.encode()
        self.tags = count(1)

    def encode(self, message: bytes) -> bytes:
        tag = b"%d" % next(self.tags)
        box = {"_command": self.command, "_ask": tag, self.argument: message}
        return ampBox(**box)

    def decode(self, buffer: bytearray) -> list[bytes]:
        replies: list[bytes] = []
        while True:
            box: dict[bytes, bytes] = {}
            offset = 0
            while len(buffer) >= offset + 2:
                (length,) = struct.unpack_from("!H", buffer, offset)
                if length == 0:
                    break
                key = bytes(buffer[offset + 2 : offset + 2 + length])
                offset += 2 + length
                if len(buffer) < offset + 2:
                    return replies
                (length,) = struct.unpack_from("!H", buffer, offset)
                if len(buffer) < offset + 2 + length:
                    return replies
                box[key] = bytes(buffer[offset + 2 : offset + 2 + length])
                offset += 2 + length
            else:
                return replies
            del buffer[: offset + 2]
            if b"_error" in box:
                raise AssertionError(f"AMP error: {box}")
            replies.append(box[self.answer])


CODECS: dict[str, Callable[[], Codec]] = {
    "line": Codec,
    "lineonly": Codec,
    "int8": lambda: IntN("!B"),
    "int16": lambda: IntN("!H"),
    "int32": lambda: IntN("!I"),
    "netstring": Netstring,
    "amp": AMPCodec,
}


class Connection:
    """
    One client connection of a family (blocking, with a timeout).
    """

    def __init__(self, port: int, codec: Codec, timeout: float = 10) -> None:
        self.codec = codec
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.port = self.sock.getsockname()[1]
        self._buffer = bytearray()
        self._replies: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """
        The next reply; fails if the connection ends first.
        """
        while not self._replies:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the reply")
            self._buffer += chunk
            self._replies += self.codec.decode(self._buffer)
        return self._replies.pop(0)

    def ask(self, message: bytes) -> bytes:
        self.send(self.codec.encode(message))
        return self.reply()

    def closedByServer(self, wait: bool = False) -> bool:
        """
        Whether the server has closed (its FIN has arrived, nothing before it);
        with C{wait}, block until it closes or sends.
        """
        if self._replies or self._buffer:
            return False
        if not wait and not select.select([self.sock], [], [], 0)[0]:
            return False
        return self.sock.recv(1, socket.MSG_PEEK) == b""

    def close(self) -> None:
        self.sock.close()


@dataclass
class LockStats:
    exchanges: int = 0
    closes: int = 0
    errors: list[str] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)
    pids: set[bytes] = field(default_factory=set)


class LockStep(threading.Thread):
    """
    Asks, waits for the reply, asks again; after a reply that came with the
    server's close, connects again.  Every reply must be C{PID COUNT MESSAGE}
    with COUNT one more than the last on that connection (fields kept).
    """

    def __init__(self, port: int, family: str, name: str = "lockstep") -> None:
        super().__init__(daemon=True)
        self.port, self.family, self.label = port, family, name
        self.stats = LockStats()
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            try:
                connection = Connection(self.port, CODECS[self.family]())
            except OSError as e:
                self.stats.errors.append(f"connect: {e}")
                return
            self.stats.ports.add(connection.port)
            last = 0
            try:
                while not self._halt.is_set():
                    n += 1
                    message = b"%s-%d" % (self.label.encode(), n)
                    pid, number, echoed = connection.ask(message).split(b" ", 2)
                    if echoed != message or int(number) != last + 1:
                        self.stats.errors.append(
                            f"{message!r}: {pid!r} {number!r} {echoed!r}"
                        )
                    last = int(number)
                    self.stats.pids.add(pid)
                    self.stats.exchanges += 1
                    if connection.closedByServer():
                        self.stats.closes += 1
                        break
            except (OSError, ValueError) as e:
                self.stats.errors.append(f"{n}: {e!r}")
            finally:
                connection.close()

    def stop(self) -> LockStats:
        self._halt.set()
        self.join(15)
        assert not self.is_alive(), "a lock-step client hangs"
        return self.stats
