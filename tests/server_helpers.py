"""A local HTTP server for download tests: http.server on 127.0.0.1 in a thread."""

from __future__ import annotations

import dataclasses
import http.server
import threading


@dataclasses.dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    length: int | None = None  # Content-Length to announce (default: the body's)
    stall: threading.Event | None = None  # send half the body, then wait for this


class Server:
    """http.server on 127.0.0.1 in a thread, serving `routes` (path -> Route) and counting requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(route.length if route.length is not None else len(route.body)))
                self.end_headers()
                if route.stall is None:
                    self.wfile.write(route.body)
                    return
                self.wfile.write(route.body[: len(route.body) // 2])
                self.wfile.flush()
                route.stall.wait(60)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
