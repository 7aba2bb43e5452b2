"""
The quick answer reader against ``http.client``: same status, body, headers and keep-alive.

``_transports/_quick.py`` reads the common shape of answer itself and hands
everything else to ``http.client``. Hypothesis builds answers, well-formed
and not (odd status lines, folded and repeated headers, bare newlines,
chunked bodies, NULs, lengths that lie); whenever the quick reader takes an
answer, what it returns must be what ``http.client`` makes of the same bytes,
and whenever it declines, it must have consumed nothing.
"""

from __future__ import annotations

import http.client
import io
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightd_sync._transports._deadline import MAX_ANSWER
from lightd_sync._transports._quick import Headers, quick_answer


class _Sock:
    def __init__(self, file: io.BufferedReader) -> None:
        self.file = file

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return self.file


def reference(data: bytes, method: str) -> Optional[tuple[int, bytes, Any, bool]]:
    """What http.client makes of *data*: (status, body, headers, reusable), or None if it fails."""
    response = http.client.HTTPResponse(_Sock(io.BufferedReader(io.BytesIO(data))), method=method)  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read()
    except (http.client.HTTPException, ValueError):
        return None
    reusable = not response.will_close and response.isclosed()
    return response.status, body, response.headers, reusable


def mostly(usual: Any, *odd: Any) -> st.SearchStrategy[Any]:
    """*usual* four times in five, else one of *odd*: most answers are well-formed."""
    return st.one_of(
        st.just(usual), st.just(usual), st.just(usual), st.just(usual), st.sampled_from(odd)
    )


NAMES = st.sampled_from(
    [
        "Connection",
        "Retry-After",
        "Location",
        "X-A",
        "Content-Type",
        "Keep-Alive",
        "Server",
        "connection",
        "Transfer-Encoding",
        "Content-Length",
        "Bad Name",
        "x:y",
        "",
        "X\x00",
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [
            "close",
            "keep-alive",
            "Close, TE",
            "CLOSE",
            "chunked",
            "2",
            " 2",
            "",
            "Wed, 21 Oct 2099 07:28:00 GMT",
            "a\x00b",
            "v  ",
            "\tv\t",
        ]
    ),
    st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=12),
)
LENGTHS = ["+2", "-1", "0x2", "²", "1e1", " 2", "99999999999999", "1 2", ""]


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    version = draw(mostly("HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1", "HTTP/1.1 "))
    status = draw(
        st.one_of(
            st.sampled_from(["200", "201", "429", "503", "301", "400", "500"]),
            mostly("200", "204", "304", "100", "999", "20", "2000", "abc"),
        )
    )
    reason = draw(st.sampled_from([" OK", "", " ", " Service Unavailable", " \x00x", " a\rb"]))
    body = draw(st.binary(max_size=24))
    lines = [f"{version} {status}{reason}"]
    fields = [(draw(NAMES), draw(VALUES)) for _ in range(draw(st.integers(0, 5)))]
    length = draw(mostly(str(len(body)), str(len(body) + 3), str(max(0, len(body) - 1)), *LENGTHS))
    if draw(mostly(True, False)):
        fields.insert(draw(st.integers(0, len(fields))), ("Content-Length", length))
    if draw(st.integers(0, 15)) == 0:
        fields.append(("Content-Length", draw(st.sampled_from([length, "0", "7"]))))
    for name, value in fields:
        separator = draw(mostly(": ", ":", ":  \t", " : ", ":\t", ":\t "))
        lines.append(f"{name}{separator}{value}")
        if draw(st.integers(0, 30)) == 0:
            lines.append(draw(st.sampled_from([" folded", "\tfolded"])))
    ending = draw(mostly("\r\n", "\n", "\r"))
    head = ending.join(lines) + ending + draw(mostly(ending, "\r\n", "\n"))
    return head.encode("latin-1", "replace") + body


@settings(max_examples=800, deadline=None)
@given(answers(), st.sampled_from(["POST", "GET", "HEAD"]))
def test_quick_reader_agrees_with_http_client_or_declines(data: bytes, method: str) -> None:
    file = io.BufferedReader(io.BytesIO(data))
    try:
        quick = quick_answer(file, method, MAX_ANSWER)
    except http.client.IncompleteRead:
        ref = reference(data, method)
        assert ref is None  # http.client refuses the short body too
        return
    if quick is None:
        assert file.read() == data  # nothing consumed: http.client reads it all
        return
    status, body, headers, reusable, too_large = quick
    assert too_large is None
    ref = reference(data, method)
    assert ref is not None, data
    assert (status, body, reusable) == (ref[0], ref[1], ref[3]), data
    for name in ("Content-Length", "connection", "RETRY-AFTER", "Location", "X-A", "Content-Type"):
        assert headers.get(name) == ref[2].get(name), (name, data)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 503 Busy\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        b"HTTP/1.1 301 Moved\r\nLocation: /x\r\nlocation: /y\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_the_common_answers_are_read_quickly(data: bytes) -> None:
    """The shapes nginx, waitress and Express send are taken, and agree with http.client."""
    file = io.BufferedReader(io.BytesIO(data + b"HTTP/1.1 next"))
    quick = quick_answer(file, "POST", MAX_ANSWER)
    assert quick is not None
    ref = reference(data, "POST")
    assert ref is not None
    assert quick[0] == ref[0] and quick[1] == ref[1] and quick[3] == ref[3]
    assert quick[2].get("location") == ref[2].get("Location")
    assert file.read() == b"HTTP/1.1 next"  # the next pipelined answer is left in the buffer


def test_a_declared_length_over_the_limit_reads_no_body() -> None:
    file = io.BufferedReader(io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\nxx"))
    quick = quick_answer(file, "POST", MAX_ANSWER)
    assert quick is not None
    assert quick[4] == 70000 and quick[1] == b"" and quick[3] is False


def test_headers_mapping() -> None:
    headers = Headers({"retry-after": "5"})
    assert headers["Retry-After"] == "5" and "RETRY-after" in headers and 1 not in headers
    assert list(headers) == ["retry-after"] and len(headers) == 1
    assert "retry-after" in repr(headers)
    with pytest.raises(KeyError):
        headers["x"]


@pytest.mark.parametrize(
    ("data", "method"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n{}", "POST"),  # no body by rule
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n", "GET"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "POST"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "HEAD"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "POST"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "POST"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}", "POST"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", "POST"),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}", "POST"),
        (b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\n{}", "POST"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", "POST"),  # the header block not all here
        (b"HTTP/1.1 200 OK\r\n\r\n{}", "POST"),  # delimited by the close
    ],
)
def test_the_shapes_it_leaves_to_http_client(data: bytes, method: str) -> None:
    """Each of these goes to http.client, with nothing consumed."""
    file = io.BufferedReader(io.BytesIO(data))
    assert quick_answer(file, method, MAX_ANSWER) is None
    assert file.read() == data
