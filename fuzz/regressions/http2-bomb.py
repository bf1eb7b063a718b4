# Writes fuzz/regressions/http2/hpack-bomb-path-refs: python3 fuzz/regressions/http2-bomb.py fuzz/regressions/http2/hpack-bomb-path-refs 262144
# The HPACK bomb in the http2 fuzz target's input format (fuzz/src/http2.rs): a flags byte
# (1: from the start, 2: the harness feeds the client preface), then per segment an op byte
# (request direction, a syscall start, length (op>>3)*29 % 521 + 1) and its bytes.
import struct, sys
out_path, total = sys.argv[1], int(sys.argv[2])
def frame(ty, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ty, flags]) + struct.pack(">I", stream) + payload
def hint(first, n, v):
    m = (1 << n) - 1
    if v < m: return bytes([first | v])
    b = [first | m]; v -= m
    while v >= 128: b.append((v % 128) | 0x80); v //= 128
    b.append(v); return bytes(b)
def hstr(s): return hint(0, 7, len(s)) + s
HEADERS, CONTINUATION, SETTINGS = 1, 9, 4
END_STREAM, END_HEADERS = 1, 4
client = frame(SETTINGS, 0, 0, b"")
# Table size update to 64 KiB, :method GET, :path /, then :path (static name 4) = 60 KB,
# literal with incremental indexing: dynamic entry 62.
first = hint(0x20, 5, 65536) + b"\x82\x84" + hint(0x40, 6, 4) + hstr(b"/" + b"a" * 59_999)
chunks = [first[i:i + 16000] for i in range(0, len(first), 16000)]
for i, c in enumerate(chunks):
    last = i == len(chunks) - 1
    client += frame(HEADERS if i == 0 else CONTINUATION, (END_HEADERS | END_STREAM) if last else 0, 1, c)
stream = 3
while len(client) < total:
    client += frame(HEADERS, END_HEADERS | END_STREAM, stream, b"\x82\x84" + b"\xbe" * 16000)
    stream += 2
k = max(range(32), key=lambda k: k * 29 % 521)
seg = k * 29 % 521 + 1
op = k << 3
data = bytearray([0x03])
for i in range(0, len(client), seg):
    data.append(op); data += client[i:i + seg]
open(out_path, "wb").write(data)
print(out_path, len(data), "bytes,", (stream - 3) // 2, "bomb blocks of 16,000 references")
