"""
The lane's hot path: one POST on a pooled urllib3 connection, written in one ``sendall``.

urllib3's ``urlopen`` builds ``Retry``/``Timeout`` objects, checks every header
and copies the answer into its own response class on each request, and
http.client writes the headers and the body in two system calls. Here the
constant part of the request is encoded once per transport; urllib3 still
makes, connects (TLS included) and pools the connections, and
``http.client.HTTPResponse`` parses the answer. Failures are raised as urllib3
raises them, so the transport judges both paths alike.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, cast

from urllib3 import exceptions as u3
from urllib3.util.ssl_match_hostname import CertificateError

__all__ = ["Answer", "encode_head", "post"]


class Answer(NamedTuple):
    """What the remote answered: enough for the protocol's verdicts."""

    status: int
    data: bytes
    headers: Mapping[str, str]


def encode_head(path: str, host: str, headers: Mapping[str, str]) -> bytes:
    """The request line and the constant headers of every POST, encoded once."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def post(pool: Any, head: bytes, event_id: Optional[str], body: bytes, timeout: float) -> Answer:
    """
    Send one POST on a connection of *pool* and read the whole answer.

    Raises:
        urllib3.exceptions.HTTPError: connecting failed (as urllib3 raises it), or the
            connection broke (``ProtocolError``).
        socket.timeout: no answer within *timeout* seconds.
    """
    extra = b"X-Lightd-Event-Id: " + event_id.encode("ascii") + b"\r\n" if event_id else b""
    message = b"".join(
        (head, extra, b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n\r\n", body)
    )
    conn = pool._get_conn()
    response: Optional[http.client.HTTPResponse] = None
    try:
        if getattr(conn, "sock", None) is None:
            conn.connect()  # urllib3's: timeouts, TLS and certificate checks, cut-off
        sock = conn.sock
        sock.settimeout(timeout)
        sock.sendall(message)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        data = response.read()
        if response.will_close:
            conn.close()
        # HTTPMessage: a case-insensitive .get(), all the verdicts use.
        return Answer(response.status, data, cast("Mapping[str, str]", response.headers))
    except socket.timeout:
        conn.close()
        raise
    except (ssl.SSLError, CertificateError) as exc:  # as urllib3's urlopen wraps them
        conn.close()
        raise u3.SSLError(exc) from exc
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise u3.ProtocolError("Connection aborted.", exc) from exc
    except BaseException:
        conn.close()
        raise
    finally:
        if response is not None:
            response.close()  # its reader holds the socket open until closed
        pool._put_conn(conn)
