"""A TCP proxy on loopback that can stall: it keeps every connection open but stops passing bytes on, as a
PostgreSQL server that hangs (or a network that black-holes it) looks to its clients."""

from __future__ import annotations

import socket
import threading


class StallingProxy:
    """``with StallingProxy(("127.0.0.1", 5432)) as proxy:`` connect to ``proxy.port``; ``stall()``, ``resume()``."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def __enter__(self) -> StallingProxy:
        threading.Thread(target=self._accept, name="stall-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._flowing.wait()  # a new connection while stalled: accepted, but nothing answers
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, server]
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # stalled: hold the bytes until resumed
                if self._closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
