"""uvicorn's HTTP/1.1 protocol (httptools), answering problem details where its parser refuses
a request before the app sees it: a URL over 64 KiB (httptools keeps URL offsets in 16 bits),
a malformed request line or header, a Content-Length that is not a number. uvicorn's own answer
is a plain-text 400; ``recstream serve`` runs this protocol instead."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.api.problems import PROBLEM_MEDIA_TYPE

UNPARSABLE_DETAIL = (
    "the HTTP server could not parse the request: malformed HTTP/1.1, or a URL over 64 KiB"
)


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Bad request",
                "status": 400,
                "detail": UNPARSABLE_DETAIL,
            }
        ).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
