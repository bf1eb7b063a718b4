fn main() {
    // Two malloc arenas, not glibc's eight per core: the agent's allocations come from one
    // thread (the pipeline's) and a few async workers, and each extra arena keeps its own
    // resident slack (measured in docs/PERFORMANCE.md, memory).
    // SAFETY: mallopt before any thread exists; it only sets a malloc parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    if let Err(err) = infertap::app::main() {
        eprintln!("infertap: {err:#}");
        std::process::exit(1);
    }
}
