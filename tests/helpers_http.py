"""A local HTTP server on 127.0.0.1 for download tests and benchmarks (stdlib only).

Serves files from memory or disk with Range support; 404 for anything else; can drop the
connection half-way through a file once, or ignore Range headers, to exercise resumption.
"""
from __future__ import annotations

import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes | Path] = {}
        self.drop_once: set[str] = set()      # paths whose next GET is cut half-way
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{path.lstrip('/')}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0].lstrip("/")
            rng = self.headers.get("Range")
            server.requests.append((path, rng))
            body = server.files.get(path)
            if body is None:
                self.send_error(404)
                return
            size = body.stat().st_size if isinstance(body, Path) else len(body)
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if match and not server.ignore_range:
                start = int(match.group(1))
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            end = size
            if path in server.drop_once:
                server.drop_once.discard(path)
                end = start + (size - start) // 2
            self._send(body, start, end)
            if end < size:  # cut the connection mid-file
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _send(self, body: bytes | Path, start: int, end: int) -> None:
            if isinstance(body, bytes):
                self.wfile.write(body[start:end])
                return
            with open(body, "rb") as f:
                offset = start
                while offset < end:
                    offset += os.sendfile(self.connection.fileno(), f.fileno(), offset,
                                          min(end - offset, 1 << 24))

    return Handler
