"""A traced server that reuses a socket's descriptor number for a file or a pipe.

Usage: fdreuse.py MARKER PATH PORT CANARY DIR [FD]
       fdreuse.py MARKER churn PORT CONNECTIONS DIR

Serves one HTTP exchange on an accepted connection (so that the agent traces the socket), waits
until DIR/go exists, then makes the connection's descriptor number name something else by PATH:

  close        close(2) it, open a file (lowest free number: the same one)
  close_range  close_range(fd, ~0U, 0) (as closefrom does), open a file
  dup2         dup2(file, fd)
  dup3         dup3(file, fd, O_CLOEXEC)
  pipe         close(2) it, make a pipe (its read end takes the number)
  exec         exec itself (the socket is close-on-exec); the new program opens files until it
               holds the old number
  cloexec      mark the socket close-on-exec with close_range(fd, fd, CLOSE_RANGE_CLOEXEC), exec

and moves HTTP-looking bytes carrying CANARY (as model and response id) through that number:
a request written and read back, then a response written. Prints `reused N` and waits to be
killed.

`churn`: connects to itself CONNECTIONS times (both ends traced: connect and accept) and gets rid
of each pair in turn by close, close_range, dup2 onto the numbers, and dup3; keeps the last 5
pairs open, prints `churned N in S s`, and waits to be killed. MARKER only puts the test's marker on the command line (it is targeted by it).
"""

import ctypes
import os
import socket
import sys
import time

SYS_CLOSE_RANGE = 436
CLOSE_RANGE_CLOEXEC = 1 << 2
libc = ctypes.CDLL(None, use_errno=True)


def close_range(lo, hi, flags):
    if libc.syscall(SYS_CLOSE_RANGE, ctypes.c_uint(lo), ctypes.c_uint(hi), ctypes.c_uint(flags)) != 0:
        raise OSError(ctypes.get_errno(), "close_range")


def canary_bytes(canary):
    body = ('{"model":"%s","prompt":"%s"}' % (canary, canary)).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body
    rbody = ('{"id":"%s","object":"text_completion","model":"%s","choices":[]}' % (canary, canary)).encode()
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(rbody)
    ) + rbody
    return request, response


def move_canary(fd, canary, path):
    request, response = canary_bytes(canary)
    if path == "pipe":
        # The read end holds the number: the request comes in through it.
        os.write(fd + 1, request)
        os.read(fd, 65536)
        os.write(fd + 1, response)
        return
    os.write(fd, request)
    os.lseek(fd, 0, os.SEEK_SET)
    os.read(fd, 65536)
    os.write(fd, response)


def serve_one(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise SystemExit("client went away")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    rbody = b'{"id":"cmpl-ok","object":"text_completion","model":"fd-model","choices":[]}'
    conn.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        % len(rbody)
        + rbody
    )


def after_exec(canary, directory, fd):
    # Take numbers until the old socket's number is ours.
    held = []
    while True:
        f = os.open(os.path.join(directory, "reused-%d" % len(held)), os.O_RDWR | os.O_CREAT, 0o600)
        if f == fd:
            break
        if f > fd:
            raise SystemExit("fd %d is taken (got %d)" % (fd, f))
        held.append(f)
    # Let the agent see the exec first (it looks at each exec as it happens).
    time.sleep(0.5)
    move_canary(fd, canary, "exec")
    print("reused %d" % fd, flush=True)
    while True:
        time.sleep(60)


def churn(port, count, directory):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    spare = os.open(os.path.join(directory, "spare"), os.O_RDWR | os.O_CREAT, 0o600)
    start = time.monotonic()
    kept = []
    for i in range(count):
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = listener.accept()
        if count - i <= 5:
            kept.append((c, s))
            continue
        a, b = c.detach(), s.detach()
        way = i % 4
        if way == 0:
            os.close(a)
            os.close(b)
        elif way == 1:
            lo, hi = min(a, b), max(a, b)
            assert hi == lo + 1, (a, b)
            close_range(lo, hi, 0)
        elif way == 2:
            os.dup2(spare, a)
            os.dup2(spare, b)
            os.close(a)
            os.close(b)
        else:
            os.dup2(spare, a, inheritable=False)
            os.dup2(spare, b, inheritable=False)
            os.close(a)
            os.close(b)
    print("churned %d in %.1f s" % (count, time.monotonic() - start), flush=True)
    while True:
        time.sleep(60)


def main():
    if sys.argv[2] == "churn":
        return churn(int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    _marker, path, port, canary, directory = sys.argv[1:6]
    if len(sys.argv) > 6:
        return after_exec(canary, directory, int(sys.argv[6]))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(16)
    print("listening", flush=True)
    conn, _ = listener.accept()
    serve_one(conn)
    print("served", flush=True)
    while not os.path.exists(os.path.join(directory, "go")):
        time.sleep(0.05)
    fd = conn.fileno()
    file_path = os.path.join(directory, "reused")
    if path in ("exec", "cloexec"):
        if path == "cloexec":
            os.set_inheritable(fd, True)
            close_range(fd, fd, CLOSE_RANGE_CLOEXEC)
        conn.detach()
        os.execv(sys.executable, [sys.executable] + sys.argv[:6] + [str(fd)])
    conn.detach()  # the number is ours to reuse; Python must not close it again
    if path == "close":
        os.close(fd)
        new = os.open(file_path, os.O_RDWR | os.O_CREAT, 0o600)
    elif path == "close_range":
        listener.detach()
        close_range(fd, 0xFFFFFFFF, 0)
        new = os.open(file_path, os.O_RDWR | os.O_CREAT, 0o600)
    elif path in ("dup2", "dup3"):
        f = os.open(file_path, os.O_RDWR | os.O_CREAT, 0o600)
        new = os.dup2(f, fd, inheritable=(path == "dup2"))
    elif path == "pipe":
        os.close(fd)
        new, w = os.pipe()
        assert w == new + 1, (new, w)
    else:
        raise SystemExit("unknown path " + path)
    assert new == fd, (new, fd)
    move_canary(fd, canary, path)
    print("reused %d" % fd, flush=True)
    while True:
        time.sleep(60)


main()
