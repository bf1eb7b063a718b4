"""Large single reads and writes on one connection, HTTP/1.1 or HTTP/2 (cleartext, prior
knowledge), both ends hand-written so that every syscall's size is known.

Usage: bigbuf.py server MARKER PROTO SIZE PORT      (the traced end; MARKER targets it)
       bigbuf.py client PROTO SIZE PORT

Three exchanges on one connection:
  1. a request whose body is SIZE bytes, which the server takes with one recv(SIZE) (the client
     has sent it all before the server reads), and a small response;
  2. a small request, answered by a response of SIZE body bytes written with one send();
  3. a small request and response whose HTTP/2 headers are all references to the HPACK dynamic
     tables the first exchange filled (decoded only if no byte of the connection was missed).
Every request names model `big-model`; responses name model `resp-model` and ids `big-1`..`big-3`.
The client prints `done` when the three responses arrived.
"""

import socket
import struct
import sys
import time

SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hstr(s):
    b = s.encode()
    assert len(b) < 127
    return bytes([len(b)]) + b


def data_frames(stream, body):
    out = []
    for i in range(0, len(body), 16384):
        last = i + 16384 >= len(body)
        out.append(frame(0, 1 if last else 0, stream, body[i : i + 16384]))
    return b"".join(out)


def request_body(size):
    head = b'{"model":"big-model","prompt":"'
    tail = b'"}'
    return head + b"a" * max(0, size - len(head) - len(tail)) + tail


def response_body(n, size):
    head = ('{"id":"big-%d","object":"text_completion","model":"resp-model","choices":[{"index":0,"text":"' % n).encode()
    tail = b'","finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
    return head + b"b" * max(0, size - len(head) - len(tail)) + tail


def h1_request(body):
    return (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body


def h1_response(body):
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
    ) + body


def h2_request(n, body):
    stream = 2 * n - 1
    if n == 1:
        # POST, http, then :path, :authority and content-type with incremental indexing (dynamic
        # table: 62 content-type, 63 :authority, 64 :path).
        block = (
            b"\x83\x86"
            + b"\x44" + hstr("/v1/completions")
            + b"\x41" + hstr("x")
            + b"\x5f" + hstr("application/json")
        )
    else:
        block = b"\x83\x86" + bytes([0x80 | 64, 0x80 | 63, 0x80 | 62])
    return frame(1, 4, stream, block) + data_frames(stream, body)


def h2_response(n, body):
    stream = 2 * n - 1
    if n == 1:
        block = b"\x88" + b"\x5f" + hstr("application/json")  # dynamic table: 62 content-type
    else:
        block = b"\x88" + bytes([0x80 | 62])
    return frame(1, 4, stream, block) + data_frames(stream, body)


def exchanges(size):
    return [
        (request_body(size), response_body(1, 200)),
        (request_body(200), response_body(2, size)),
        (request_body(200), response_body(3, 200)),
    ]


def wire(proto, size):
    """The bytes each way of each exchange (the HTTP/2 connection set-up goes with the first)."""
    out = []
    for n, (req, resp) in enumerate(exchanges(size), 1):
        if proto == "h1":
            out.append((h1_request(req), h1_response(resp)))
        else:
            r, s = h2_request(n, req), h2_response(n, resp)
            if n == 1:
                r = PREFACE + frame(4, 0, 0, b"") + r
                s = frame(4, 0, 0, b"") + frame(4, 1, 0, b"") + s
            out.append((r, s))
    return out


def recv_exactly(sock, n, chunk):
    got = 0
    while got < n:
        b = sock.recv(min(chunk, n - got))
        if not b:
            raise SystemExit("peer closed after %d of %d bytes" % (got, n))
        got += len(b)


def server(proto, size, port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Root: past net.core.rmem_max, so that a whole request waits in the queue for one read.
    listener.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    listener.bind(("127.0.0.1", port))
    listener.listen(4)
    print("listening", flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
    for req, resp in wire(proto, size):
        # Let the whole request arrive, then take it in reads of SIZE bytes.
        time.sleep(0.3)
        recv_exactly(conn, len(req), size)
        sent = conn.send(resp)
        if sent != len(resp):
            raise SystemExit("one send took %d of %d bytes" % (sent, len(resp)))
    print("served", flush=True)
    time.sleep(3600)


def client(proto, size, port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    for req, resp in wire(proto, size):
        sock.sendall(req)
        recv_exactly(sock, len(resp), 1 << 20)
    print("done", flush=True)
    time.sleep(2)


def main():
    role = sys.argv[1]
    if role == "server":
        _marker, proto, size, port = sys.argv[2:6]
        server(proto, int(size), int(port))
    else:
        proto, size, port = sys.argv[2:5]
        client(proto, int(size), int(port))


main()
