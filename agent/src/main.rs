fn main() {
    if let Err(err) = infertap::app::main() {
        eprintln!("infertap: {err:#}");
        std::process::exit(1);
    }
}
