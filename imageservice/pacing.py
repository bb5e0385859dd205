"""Reading a request body at a minimum pace, so that a client who trickles it cannot hold a thread.

Kept free of gunicorn and Django: the worker (imageservice/workers.py) reads through it, and the
app (images/errors.py) answers its exception with a 408.
"""

import socket
import time


class ClientTooSlow(TimeoutError):
    """The client sent its request more slowly than the service allows. A TimeoutError, so that
    gunicorn's own body drain treats it as the socket timeout it stands for."""


class PacedSocket:
    """The socket as gunicorn's request parser sees it: every `recv` has a deadline.

    After `restart()` (a new request), the client has `timeout` seconds of grace, then must have
    sent `min_rate` bytes per second on average since; no single wait may last longer than
    `timeout` either. A client that falls behind gets `ClientTooSlow`. After each read, the socket's
    timeout is set back to `write_timeout`, which is what bounds the writes of the response.
    """

    def __init__(
        self, sock: socket.socket, timeout: float, min_rate: float, write_timeout: float | None
    ) -> None:
        self.sock = sock
        self.timeout = timeout
        self.min_rate = min_rate
        self.write_timeout = write_timeout
        self.restart()

    def restart(self) -> None:
        self.started = time.monotonic()
        self.received = 0

    def deadline(self) -> float:
        """When the client falls behind the pace if nothing more arrives (never, with no min_rate)."""
        if self.min_rate <= 0:
            return float("inf")
        return self.started + self.timeout + self.received / self.min_rate

    def recv(self, size: int) -> bytes:
        wait = min(self.timeout, self.deadline() - time.monotonic())
        if wait <= 0:
            raise ClientTooSlow(f"the client sent {self.received} bytes, below {self.min_rate:.0f} bytes/s")
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(size)
        except TimeoutError as exc:  # socket.timeout
            raise ClientTooSlow(f"the client sent nothing for {wait:.1f} s") from exc
        finally:
            self.sock.settimeout(self.write_timeout)
        self.received += len(data)
        return data
