"""A small https server for unit tests of TLS clients (the job script's reports, the session's
hub and MLflow calls, the trainer console): it records every request and answers each path with
a fixed JSON body; with ``client_cas`` it asks for a client certificate of those CAs, as the hub
API does under JupyterHub's internal_ssl."""

from __future__ import annotations

import http.server
import json
import ssl
import threading


class TlsServer:
    """An https server with ``files`` (key, cert) that records requests and answers each path with
    ``answers[path]`` (JSON, 200). With ``client_cas`` it asks for a client certificate of those
    CAs, as the hub API does under internal_ssl; the MLflow service does not."""

    def __init__(self, files: dict, answers: dict[str, object], client_cas: str | None = None):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                reply = json.dumps(answers.get(path, {})).encode()
                self.send_response(200 if path in answers else 404)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = answer

            def log_message(self, *args):
                pass

        purpose = ssl.Purpose.CLIENT_AUTH
        context = (
            ssl.create_default_context(purpose, cafile=client_cas)
            if client_cas
            else ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        )
        if client_cas:
            context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(files["cert"], files["key"])
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def posts(self) -> list[tuple[str, object]]:
        """(path, JSON body) of every POST."""
        return [(path, json.loads(body)) for method, path, _, body in self.requests if method == "POST"]
