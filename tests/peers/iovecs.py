"""Small responses written as two iovecs each, for `tests/tests/buffers.rs`.

    iovecs.py server MARKER PORT COUNT   answer COUNT pipelined GETs on one connection, each with
                                         one sendmsg of two iovecs (head, body), back to back
    iovecs.py client PORT COUNT          send COUNT pipelined GETs at once, read every answer

A server writing its head and body as separate iovecs (nginx's writev, asyncio's writelines)
makes one data record per iovec; each must take a ring slot near its own size. MARKER only puts
a string on the server's command line for `--target-cmdline`.
"""

import socket
import sys

BODY = b'{"id":"iov-%d","model":"iov-model","object":"text_completion"}' + b" " * 440


def server(port, count):
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", port))
    lst.listen()
    print("listening", flush=True)
    conn, _ = lst.accept()
    buf = b""
    while buf.count(b"\r\n\r\n") < count:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
    for i in range(count):
        body = BODY.replace(b"%d", str(i).encode())
        head = (
            b"HTTP/1.1 200 OK\r\nServer: iovecs\r\nContent-Type: application/json\r\n"
            b"Cache-Control: no-store\r\nX-Request-Id: " + b"%040d" % i + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        conn.sendmsg([head, body])
    print("served", flush=True)
    while conn.recv(65536):
        pass


def client(port, count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"".join(b"GET /iov/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count)))
    got = b""
    while got.count(b"iov-model") < count:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("server closed early")
        got += chunk
    print("done", flush=True)
    s.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[3]), int(sys.argv[4]))
    else:
        client(int(sys.argv[2]), int(sys.argv[3]))
