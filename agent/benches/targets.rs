//! What finding a process's open TCP sockets costs the targeting thread (at each new target and
//! each exec of one), while the node holds many other connections: each socket descriptor asked
//! through `pidfd_getfd`, against the process's TCP tables in /proc (which walk the kernel's whole
//! established hash, every namespace's connections, and format each one).
//!
//! A helper process (`python3`) holds `OTHERS` established loopback connections; the process
//! looked at is this one, with a listener and 16 connections.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use infertap::probes::targets::{
    socket_descriptors, tcp_sockets_by_pidfd, tcp_sockets_from_tables,
};
use procfs::process::Process;

/// Connection pairs the helper holds (two sockets each).
const OTHERS: usize = 4_000;

const HOLDER: &str = r#"
import resource, socket, sys
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4096)
keep = []
for _ in range(n):
    c = socket.create_connection(l.getsockname()); s, _ = l.accept(); keep += [c, s]
print("ready", flush=True)
sys.stdin.read()
"#;

fn bench(c: &mut Criterion) {
    let mut holder = Command::new("python3")
        .args(["-c", HOLDER, &OTHERS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the helper holds its connections");

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut mine = vec![l.as_raw_fd()];
    let mut keep = Vec::new();
    for _ in 0..16 {
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        mine.extend([s.as_raw_fd(), a.as_raw_fd()]);
        keep.extend([s, a]);
    }
    let me = Process::myself().unwrap();
    let mut fds = socket_descriptors(&me);
    fds.retain(|(fd, _)| mine.contains(&(*fd as i32)));
    let pid = std::process::id();
    let asked = tcp_sockets_by_pidfd(pid, &fds).expect("pidfd_getfd on this process");
    let tables = tcp_sockets_from_tables(&me, &fds);
    assert_eq!(asked.len(), 33, "a listener and 32 connection ends");
    assert_eq!(asked.len(), tables.len(), "both ways find the same sockets");

    let mut g = c.benchmark_group(format!("tcp_sockets_33_of_{}_on_the_node", 2 * OTHERS + 33));
    g.bench_function("asked_each_socket", |b| {
        b.iter(|| black_box(tcp_sockets_by_pidfd(pid, black_box(&fds))))
    });
    g.bench_function("tcp_tables", |b| {
        b.iter(|| black_box(tcp_sockets_from_tables(&me, black_box(&fds))))
    });
    g.finish();
    let _ = holder.stdin.take().map(|mut s| s.flush());
    let _ = holder.kill();
    let _ = holder.wait();
}

criterion_group!(benches, bench);
criterion_main!(benches);
