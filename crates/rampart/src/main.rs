//! Entry point: parse, run, exit with the contract's code.

#![forbid(unsafe_code)]

use clap::Parser;

/// mimalloc: the proxy's HTTP/2 and gRPC paths allocate a few blocks per request
/// larger than glibc's per-thread cache takes (a stream's future is kilobytes), each
/// a trip through its bins. 9 to 11 % fewer instructions per HTTP/2 request and gRPC
/// call, 2 % per HTTP/1.1 one (BENCHMARKS.md, "Header lookups and the allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    quiet_on_a_closed_pipe();
    let cli = rampart::cli::Cli::parse();
    let level = std::env::var("RAMPART_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::WARN);
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level);
    match cli.log_format {
        rampart::cli::LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        rampart::cli::LogFormat::Text => logs.init(),
    }
    // RAMPART_WORKER_THREADS sizes the runtime (a data plane beside its load and its
    // backends on a small machine does better with fewer threads than cores). One
    // thread, for a data plane alone, is tokio's current-thread scheduler: the
    // multi-thread one with a single worker runs a task just spawned (each HTTP/2
    // stream is one) before those already waiting, and some streams waited long (p99
    // 56 ms against 11 ms, BENCHMARKS.md). A command that reaches the store keeps a
    // worker of its own for the proxy: a SQLite commit blocks its thread.
    let threads = std::env::var("RAMPART_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let mut builder = match threads {
        Some(1) if cli.serves_alone() => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(rampart::cli::main(cli));
    // Connections the proxy still holds must not delay the exit.
    runtime.shutdown_background();
    std::process::exit(code);
}

/// Output into a pipe whose reader has gone (`rampart events R | head`) ends the command
/// quietly with 141, as a Unix tool that SIGPIPE stops, rather than with a panic's
/// message. (SIGPIPE itself stays ignored, as Rust sets it: a socket's peer that goes
/// must be an error the proxy handles, never the end of the process.)
fn quiet_on_a_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| {
            m.starts_with("failed printing to stdout") && m.contains("Broken pipe")
        }) {
            std::process::exit(rampart::cli::CLOSED_PIPE);
        }
        report(info);
    }));
}
