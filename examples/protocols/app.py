"""The protocols example: what the endpoint proxy's tests talk to.

:8080   GET /           hello and the request count
        GET /stats      requests so far (this route not counted), hook calls, open WebSockets
        GET /headers    the request headers as the app received them
        GET /sse?n=20   n server-sent events, one every 100 ms
        GET /big?mb=8   mb MiB streamed (a 64 KiB block of i % 251, repeated)
        POST /echo      the request body streamed back as it arrives
        WebSocket       echo of text and binary messages; picks the subprotocol "chat" if offered,
                        and tells in X-Offered-Protocols what it was offered
:50051  gRPC without generated code (bytes in and out): cocoon.Echo/Unary answers "echo: <m>",
        cocoon.Echo/Chat (bidirectional streaming) echoes each message as it arrives, then "bye";
        both send the trailing metadata x-echo-count
:9000   the runtime hooks (run/resume/suspend/terminate are counted)
"""
import base64
import hashlib
import json
import struct
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import grpc

lock = threading.Lock()
stats = {"requests": 0, "openWebSockets": 0, "hooks": {"run": 0, "resume": 0, "suspend": 0, "terminate": 0}, "grpcCalls": 0}
BLOCK = bytes(i % 251 for i in range(64 * 1024))


def count(key, delta=1):
    with lock:
        stats[key] += delta


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/stats":
            with lock:
                return self.json(stats)
        count("requests")
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if url.path == "/":
            return self.json({"message": "hello from the protocols example", "requests": stats["requests"]})
        if url.path == "/headers":
            return self.json({name.lower(): value for name, value in self.headers.items()})
        if url.path == "/sse":
            self.start_chunked("text/event-stream")
            for i in range(int(query.get("n", ["20"])[0])):
                self.chunk(f"id: {i}\ndata: event {i}\n\n".encode())
                time.sleep(0.1)
            return self.chunk(b"")
        if url.path == "/big":
            self.start_chunked("application/octet-stream")
            for _ in range(int(query.get("mb", ["8"])[0]) * 16):
                self.chunk(BLOCK)
            return self.chunk(b"")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        count("requests")
        if urlsplit(self.path).path != "/echo":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.start_chunked(self.headers.get("Content-Type", "application/octet-stream"))
        for piece in self.request_body():
            self.chunk(piece)
        self.chunk(b"")

    def json(self, value):
        body = (json.dumps(value) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def start_chunked(self, content_type):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def request_body(self):
        """The body as it arrives, with Content-Length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            piece = self.rfile.read1(min(left, 65536))
            if not piece:
                return
            left -= len(piece)
            yield piece

    def websocket(self):
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("X-Offered-Protocols", ", ".join(offered) or "none")
        if "chat" in offered:
            self.send_header("Sec-WebSocket-Protocol", "chat")
        self.end_headers()
        self.close_connection = True
        count("openWebSockets")
        try:
            while True:
                opcode, payload = self.read_frame()
                if opcode is None or opcode == 0x8:
                    self.wfile.write(b"\x88\x00")
                    return
                if opcode == 0x9:
                    self.send_frame(0xA, payload)
                elif opcode in (0x1, 0x2):
                    self.send_frame(opcode, payload)
        except (ConnectionError, OSError):
            pass
        finally:
            count("openWebSockets", -1)

    def read_frame(self):
        head = self.rfile.read(2)
        if len(head) < 2:
            return None, b""
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
        return head[0] & 0x0F, payload

    def send_frame(self, opcode, payload):
        n = len(payload)
        header = struct.pack(">BB", 0x80 | opcode, n) if n < 126 else struct.pack(">BBH", 0x80 | opcode, 126, n) if n < 65536 else struct.pack(">BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(header + payload)


class Hooks(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        name = self.path.rsplit("/", 1)[-1]
        with lock:
            if name in stats["hooks"]:
                stats["hooks"][name] += 1
        self.answer()

    def answer(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def unary(request, context):
    count("grpcCalls")
    context.set_trailing_metadata((("x-echo-count", "1"),))
    return b"echo: " + request


def chat(requests, context):
    count("grpcCalls")
    received = 0
    for message in requests:
        received += 1
        yield b"echo: " + message
    context.set_trailing_metadata((("x-echo-count", str(received)),))
    yield b"bye"


rpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
rpc.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("cocoon.Echo", {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
}),))
rpc.add_insecure_port("0.0.0.0:50051")
rpc.start()
app = ThreadingHTTPServer(("0.0.0.0", 8080), App)
app.daemon_threads = True
# The hooks port opens last: the build's readiness check waits for it, and then everything listens.
hooks = ThreadingHTTPServer(("0.0.0.0", 9000), Hooks)
hooks.daemon_threads = True
threading.Thread(target=hooks.serve_forever, daemon=True).start()
print("gRPC on :50051, HTTP on :8080, hooks on :9000", flush=True)
app.serve_forever()
