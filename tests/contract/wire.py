"""What a MySQL client sends, measured on the wire: a loopback relay in front of a real server.

:class:`QueryRelay` listens on 127.0.0.1, connects every client it accepts to
the real server, copies bytes both ways unchanged, and records the size of
each ``COM_QUERY`` the client sends (the SQL text, in bytes as sent: exactly
what the server's ``max_allowed_packet`` is compared with, less the command
byte).  Nothing is answered by the relay itself: the server does all the work.
"""

from __future__ import annotations

import socket
import threading

_COM_QUERY = 0x03
_MAX_PAYLOAD = 0xFFFFFF  # a packet this long continues in the next one


class QueryRelay:
    """A recording TCP relay to ``host:port``; ``queries`` holds (first word lowercased, bytes)
    for every query sent while :attr:`recording` is set."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.queries: list[tuple[str, int]] = []
        self.recording = False
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="query-relay", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, parse: bool) -> None:
        buffer = bytearray()
        command = 0  # the command byte of the command being read; its query's first word, bytes so far
        verb, size = "", -1  # size -1: no command in progress
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                if not parse:
                    continue
                buffer += data
                while len(buffer) >= 4:
                    length = int.from_bytes(buffer[:3], "little")
                    if len(buffer) < 4 + length:
                        break
                    seq, payload = buffer[3], bytes(buffer[4 : 4 + length])
                    del buffer[: 4 + length]
                    if size < 0 and seq == 0 and payload:  # a new command (seq 0; the handshake is not)
                        command, size = payload[0], length - 1
                        words = payload[1:32].split(maxsplit=1)
                        verb = words[0].decode("ascii", "replace").lower() if words else ""
                    elif size >= 0:
                        size += length  # a continuation packet of a command over 16 MiB
                    else:
                        continue  # handshake and authentication packets
                    if length < _MAX_PAYLOAD:  # the command is complete
                        if command == _COM_QUERY and self.recording:
                            with self._lock:
                                self.queries.append((verb, size))
                        size = -1
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
