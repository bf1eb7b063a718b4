//! Which bytes of a connection carrying TLS are parsed: its plaintext (records the TLS uprobes
//! captured, `DataChunk::is_tls`) and never its ciphertext (syscall records of the same socket).
//!
//! A connection starts `Unknown`. The first plaintext record switches it to `Plaintext` (and its
//! parser restarts on the plaintext stream, which has positions of its own). Syscall bytes that open
//! a stream with a TLS record header switch it to `Ciphertext`: skipped, and not counted as bad
//! input, until plaintext arrives (it never does for a TLS library that is not probed).
//! Pure: no I/O, no panics.

use crate::capture::decode::DataChunk;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS seen (plain HTTP, or not decided yet).
    #[default]
    Unknown,
    /// TLS records at the socket, no plaintext captured (yet).
    Ciphertext,
    /// The connection's stream is the TLS plaintext.
    Plaintext,
}

/// What to do with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Feed it to the connection's parser.
    Parse,
    /// Ignore it (ciphertext).
    Skip,
    /// First plaintext of the connection: restart the parser (and stream positions) on it, then feed.
    Restart,
    /// The stream turned out to be TLS ciphertext: skip it (counted once).
    StartCiphertext,
}

/// A TLS record header: content type 20–23 (change_cipher_spec, alert, handshake,
/// application_data), version 3.x, a length within what TLS allows. No HTTP/1 request or
/// response, nor the HTTP/2 preface, starts with these bytes.
pub fn is_tls_record(b: &[u8]) -> bool {
    b.len() >= 5
        && (20..=23).contains(&b[0])
        && b[1] == 3
        && b[2] <= 4
        && u16::from_be_bytes([b[3], b[4]]) <= (1 << 14) + 2048
}

/// Route `chunk` for a connection in `mode`. `stream_start`: the chunk is the first bytes seen in
/// its direction (stream position 0, or the first record of a connection picked up mid-stream).
pub fn route(mode: &mut TlsMode, chunk: &DataChunk<'_>, stream_start: bool) -> Route {
    if chunk.is_tls() {
        if *mode == TlsMode::Plaintext {
            return Route::Parse;
        }
        *mode = TlsMode::Plaintext;
        return Route::Restart;
    }
    match *mode {
        TlsMode::Plaintext | TlsMode::Ciphertext => Route::Skip,
        TlsMode::Unknown => {
            if stream_start && chunk.stream_pos == chunk.syscall_pos && is_tls_record(chunk.payload)
            {
                *mode = TlsMode::Ciphertext;
                Route::StartCiphertext
            } else {
                Route::Parse
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::capture::decode::{Role, SocketDir};
    use crate::conn::{ConnId, ConnTable, Origin};
    use crate::stats::Stats;
    use infertap_common::{SYS_GO_TLS_READ, SYS_GO_TLS_WRITE, SYS_READ, SYS_WRITE};

    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    const SERVER_HELLO: &[u8] = &[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03];

    fn rec(dir: SocketDir, syscall: u32, pos: u64, ts_ms: u64, payload: &[u8]) -> DataChunk<'_> {
        DataChunk {
            syscall,
            ..crate::conn::tests::record(
                dir,
                ts_ms,
                pos,
                (pos, payload.len() as u64),
                true,
                payload,
            )
        }
    }

    #[test]
    fn tls_record_headers_are_recognised_and_http_is_not() {
        assert!(is_tls_record(CLIENT_HELLO));
        assert!(is_tls_record(SERVER_HELLO));
        assert!(is_tls_record(&[0x17, 0x03, 0x03, 0x40, 0x11]));
        for not in [
            &b"POST /v1/chat/completions HTTP/1.1\r\n"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"PRI * HTTP/2.0\r\n",
            &[0x16, 0x03, 0x01, 0xff, 0xff], // longer than TLS allows
            &[0x16, 0x03],
        ] {
            assert!(!is_tls_record(not), "{not:?}");
        }
    }

    #[test]
    fn ciphertext_is_skipped_until_plaintext_restarts_the_stream() {
        let mut mode = TlsMode::Unknown;
        let hello = rec(SocketDir::Ingress, SYS_READ, 0, 1, CLIENT_HELLO);
        assert_eq!(route(&mut mode, &hello, true), Route::StartCiphertext);
        let more = rec(SocketDir::Ingress, SYS_READ, 10, 2, b"\x17\x03\x03\x00\x10");
        assert_eq!(route(&mut mode, &more, false), Route::Skip);
        let plain = rec(
            SocketDir::Ingress,
            SYS_GO_TLS_READ,
            0,
            3,
            b"GET / HTTP/1.1\r\n",
        );
        assert_eq!(route(&mut mode, &plain, false), Route::Restart);
        assert_eq!(route(&mut mode, &plain, false), Route::Parse);
        // Ciphertext that raced the kernel's switch is still skipped.
        assert_eq!(route(&mut mode, &more, false), Route::Skip);

        // Plain HTTP is parsed, and bytes that merely look like TLS later in a stream stay HTTP.
        let mut mode = TlsMode::Unknown;
        let http = rec(SocketDir::Ingress, SYS_READ, 0, 1, b"POST / HTTP/1.1\r\n");
        assert_eq!(route(&mut mode, &http, true), Route::Parse);
        let body = rec(SocketDir::Ingress, SYS_READ, 17, 2, CLIENT_HELLO);
        assert_eq!(route(&mut mode, &body, false), Route::Parse);
        assert_eq!(mode, TlsMode::Unknown);
    }

    /// The table end to end: the handshake's ciphertext (as the kernel copies it before the TLS
    /// object is matched to its socket) is not bad input, and the plaintext records make one
    /// exchange with the socket's addresses.
    #[test]
    fn a_tls_connection_yields_its_plaintext_exchange() {
        let stats = Stats::default();
        let mut table = ConnTable::new(16, u64::MAX);
        let id = ConnId {
            tgid: 7,
            conn_id: 1,
        };
        let peer = "127.0.0.1:40000".parse().unwrap();
        table.open(
            id,
            5,
            Role::Server,
            Some("127.0.0.1:8443".parse().unwrap()),
            Some(peer),
            Origin::Start,
            0,
            &stats,
        );
        let mut out = Vec::new();
        table.data(
            &rec(SocketDir::Ingress, SYS_READ, 0, 1, CLIENT_HELLO),
            &stats,
            &mut out,
        );
        table.data(
            &rec(SocketDir::Egress, SYS_WRITE, 0, 2, SERVER_HELLO),
            &stats,
            &mut out,
        );
        let body = br#"{"model":"m","stream":false}"#;
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let resp_body = br#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            resp_body.len()
        );
        let head = req.as_bytes();
        // The request head and body in two TLS reads, the response in one TLS write.
        table.data(
            &rec(SocketDir::Ingress, SYS_GO_TLS_READ, 0, 3, head),
            &stats,
            &mut out,
        );
        table.data(
            &rec(
                SocketDir::Ingress,
                SYS_GO_TLS_READ,
                head.len() as u64,
                4,
                body,
            ),
            &stats,
            &mut out,
        );
        let mut r = resp.into_bytes();
        r.extend_from_slice(resp_body);
        table.data(
            &rec(SocketDir::Egress, SYS_GO_TLS_WRITE, 0, 9, &r),
            &stats,
            &mut out,
        );
        assert_eq!(out.len(), 1, "one finished exchange");
        let f = &out[0];
        assert_eq!(f.ex().request.method, "POST");
        assert_eq!(f.ex().request.path, "/v1/chat/completions");
        assert_eq!(f.ex().response.as_ref().map(|r| r.status), Some(200));
        assert!(!f.ex().incomplete);
        assert_eq!(f.meta.peer, Some(peer));
        assert_eq!(stats.streams_not_http.load(Relaxed), 0);
        assert_eq!(stats.http_parse_failures.load(Relaxed), 0);
        assert_eq!(stats.tls_ciphertext_streams.load(Relaxed), 1);
        assert_eq!(stats.tls_streams.load(Relaxed), 1);
        assert_eq!(stats.bytes_lost.load(Relaxed), 0);
    }
}
