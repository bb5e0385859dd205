"""gunicorn's gthread worker, hardened against slow clients (`manage.py serve` runs it).

gthread gives a connection a thread once its first byte arrives, and that thread then blocks on the
socket, with no timeout, for as long as the client takes to send its request. Twenty clients that
trickle their headers (slowloris) hold every thread of two workers, and nobody else is served.

This worker changes three things, and nothing else:
- It reads each request's head (request line and headers) in the worker's event loop, without a
  thread, and with it a body that fits in HEAD_BUFFER (a sign-in form, say). A connection gets a
  thread only once those have arrived whole. A head, or a small body, that takes longer than
  CLIENT_TIMEOUT, counted from the connection (or from the previous response), is answered 408
  and closed.
- It reads the body through `PacedSocket`: after CLIENT_TIMEOUT of grace, the body must have come at
  MIN_UPLOAD_RATE_KB on average, and no wait may last longer than CLIENT_TIMEOUT. A client that
  falls behind is answered 408 (images/errors.py), and nothing of its upload is stored.
- Every write of a response is bounded by gunicorn's `--timeout`, so a client that stops reading
  gives its thread back.
So a trickling upload holds a thread for about CLIENT_TIMEOUT at most, and a slow head or form
holds none. Larger bodies than a form's are refused from their headers, except uploads
(images/bodylimits.py).
With TLS (which `serve` does not configure) it leaves everything to gthread.

It also names the server `image-service` in the `Server` header, without gunicorn's name, and
answers what gunicorn refuses before the app sees it (a request line longer than 8190 bytes: 414,
too many or too large headers: 431, a malformed request: 400) with the service's JSON error body
instead of gunicorn's HTML page.
"""

import contextlib
import errno
import json
import re
import time
from collections import deque
from functools import partial
from selectors import EVENT_READ

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers.gthread import TConn
from gunicorn.workers.gthread import ThreadWorker as GThreadWorker

from imageservice.pacing import PacedSocket

# A head is handed to a thread once it ends, or once this much of it has arrived (gunicorn's own
# limits then judge it, reading the rest through PacedSocket).
HEAD_BUFFER = 64 * 1024
HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
SERVER = "image-service"  # no product or version for a scanner to match
CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


# The error codes of the refusals that gunicorn makes itself (gunicorn.workers.base's handle_error).
GUNICORN_ERRORS = {
    400: "malformed_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def error_answer(status: int, reason: str, code: str, detail: str) -> bytes:
    """A whole answer that closes the connection, with the body that images/errors.py gives the
    app's errors: for what the worker answers before (or instead of) the app."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


REQUEST_TIMEOUT = error_answer(
    408, "Request Timeout", "request_timeout", "The request arrived too slowly; the connection was closed."
)


def write_json_error(sock, status: int, reason: str, detail: str) -> None:
    """gunicorn's `util.write_error`, with a JSON body (its own is an HTML page)."""
    code = GUNICORN_ERRORS.get(status, "bad_request")
    if status == 414:
        detail = f"{detail}; send long lists of model_ids to POST /models/lookup"
    util.write_nonblock(sock, error_answer(status, reason, code, detail or reason))


def whole_at(head: bytes | bytearray) -> int:
    """How many bytes of a connection whose head has ended to wait for in the event loop: the head
    and a body that fits within HEAD_BUFFER, or only what has arrived when the body is larger
    (a thread reads that, at the paced rate)."""
    end = min(i + len(mark) for mark in HEAD_ENDS if (i := head.find(mark)) >= 0)
    match = CONTENT_LENGTH.search(head, 0, end)
    whole = end + (int(match.group(1)) if match else 0)
    return whole if whole <= HEAD_BUFFER else 0


class ThreadWorker(GThreadWorker):
    def init_process(self) -> None:
        self.heads: deque[TConn] = deque()  # connections whose head is arriving, oldest first
        wsgi.SERVER = SERVER  # what gunicorn's responses say in `Server` (read per response)
        util.write_error = write_json_error  # what its refusals say (looked up per refusal)
        super().init_process()

    def load_wsgi(self) -> None:
        """Reads the limits from Django's settings, which loading the app has just configured."""
        super().load_wsgi()
        from django.conf import settings

        self.client_timeout = float(settings.CLIENT_TIMEOUT)
        self.min_rate = settings.MIN_UPLOAD_RATE_KB * 1024
        self.write_timeout = self.cfg.timeout or None  # gunicorn's 0 means none

    # --- Heads, read by the event loop ---------------------------------------------------------

    def accept(self, listener) -> None:
        if self.cfg.is_ssl:
            return super().accept(listener)
        try:
            sock, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return None
        self.nr_conns += 1
        self.await_head(TConn(self.cfg, sock, address, listener.getsockname()))  # non-blocking
        return None

    def on_client_socket_readable(self, conn: TConn, client) -> None:
        """A kept-alive connection's next request: its head is read like a new connection's."""
        if self.cfg.is_ssl:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.await_head(conn)
        self.on_head_readable(conn, client)
        return None

    def await_head(self, conn: TConn) -> None:
        conn.head = bytearray()
        conn.whole = None  # known once the head has ended (whole_at)
        conn.timeout = time.monotonic() + self.client_timeout
        self.heads.append(conn)
        self.poller.register(conn.sock, EVENT_READ, partial(self.on_head_readable, conn))

    def on_head_readable(self, conn: TConn, client) -> None:
        try:
            data = conn.sock.recv(HEAD_BUFFER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data and conn.whole is None:  # the client went away
            self.heads.remove(conn)
            self.drop_head(conn)
            return
        conn.head += data
        tail = conn.head[-len(data) - 3 :]  # a head sent a byte at a time is not rescanned each time
        if conn.whole is None and any(end in tail for end in HEAD_ENDS):
            conn.whole = whole_at(conn.head)
        # A body cut short (the client stopped sending) goes to a thread too, which answers 400.
        if (
            not data
            or len(conn.head) >= HEAD_BUFFER
            or (conn.whole is not None and len(conn.head) >= conn.whole)
        ):
            self.poller.unregister(conn.sock)
            self.heads.remove(conn)
            self.dispatch(conn)

    def dispatch(self, conn: TConn) -> None:
        """Hands a connection whose head has arrived to a thread, with the head already read."""
        if conn.parser is None:
            conn.pacer = PacedSocket(conn.sock, self.client_timeout, self.min_rate, self.write_timeout)
            conn.parser = http.get_parser(self.cfg, conn.pacer, conn.client)
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head = bytearray()
        conn.data_ready = True  # gthread's handle() must not wait for data again
        self.enqueue_req(conn)

    def drop_head(self, conn: TConn, answer: bytes = b"") -> None:
        """Closes a connection taken off `heads`, with `answer` if the client may still read it."""
        self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        if answer:
            with contextlib.suppress(OSError):
                conn.sock.send(answer)  # non-blocking, best effort: the client is slow anyway
        conn.close()

    def murder_pending(self) -> None:
        """Runs once a second or more often: also cuts off the heads that are late."""
        super().murder_pending()
        now = time.monotonic()
        while self.heads and self.heads[0].timeout <= now:
            conn = self.heads.popleft()
            self.drop_head(conn, REQUEST_TIMEOUT if conn.head else b"")

    # --- Bodies, read by the thread --------------------------------------------------------------

    def handle(self, conn: TConn):
        """A thread's turn with a connection: the pace counts from here, not from the wait for a
        thread (the rest of a head over HEAD_BUFFER, or of a pipelined one, is read at it too)."""
        if (pacer := getattr(conn, "pacer", None)) is not None:
            pacer.restart()
        return super().handle(conn)

    def handle_request(self, req, conn: TConn) -> bool:
        if (pacer := getattr(conn, "pacer", None)) is not None:
            pacer.restart()  # the body's own pace
            conn.sock.settimeout(self.write_timeout)  # bounds the response's writes
        return super().handle_request(req, conn)
