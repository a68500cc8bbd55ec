//! `ws-echo-load`: the proxy benchmark's WebSocket load client (scripts/bench_proxy.py),
//! there being no WebSocket load tool among Debian's packages.
//!
//! ```text
//! ws-echo-load HOST:PORT PATH CONNECTIONS SECONDS
//! ```
//!
//! Opens CONNECTIONS WebSockets to `ws://HOST:PORT/PATH`, then on each, closed-loop,
//! sends a small masked text frame and waits for its echo, for SECONDS. Prints one
//! JSON line: messages echoed, messages/s, p50 and p99 milliseconds per message, and
//! errors (a failed upgrade, a wrong echo or a lost connection, each ending that
//! connection). Single-threaded, like `wrk -t1` and `h2load` in the same benchmark.
//! It measures; it must not judge: the script compares the targets.

#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What each message carries.
const MESSAGE: &[u8] = b"rampart websocket bench";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path, conns, secs] = args.as_slice() else {
        eprintln!("usage: ws-echo-load HOST:PORT PATH CONNECTIONS SECONDS");
        std::process::exit(2);
    };
    let (Ok(conns), Ok(secs)) = (conns.parse::<u32>(), secs.parse::<f64>()) else {
        eprintln!("ws-echo-load: CONNECTIONS is a count and SECONDS a number");
        std::process::exit(2);
    };
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|i| tokio::spawn(connection(addr.clone(), path.clone(), i, end)))
        .collect();
    let mut micros = Vec::new();
    let mut errors = 0u64;
    for task in tasks {
        match task.await {
            Ok((samples, error)) => {
                micros.extend(samples);
                errors += u64::from(error.is_some());
                if let Some(e) = error {
                    eprintln!("ws-echo-load: {e}");
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("ws-echo-load: {e}");
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    micros.sort_unstable();
    let q = |f: f64| {
        let i = ((f * micros.len() as f64) as usize).min(micros.len().saturating_sub(1));
        micros.get(i).map_or(0.0, |m| f64::from(*m) / 1000.0)
    };
    println!(
        "{{\"messages\": {}, \"rps\": {}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"errors\": {errors}}}",
        micros.len(),
        (micros.len() as f64 / elapsed).round(),
        q(0.5),
        q(0.99),
    );
}

/// One WebSocket until `end`: the microseconds of each message's round trip, and
/// what ended it early, if anything did.
async fn connection(
    addr: String,
    path: String,
    i: u32,
    end: Instant,
) -> (Vec<u32>, Option<String>) {
    let mut micros = Vec::new();
    let error = echo_until(&addr, &path, i, end, &mut micros).await.err();
    (micros, error)
}

async fn echo_until(
    addr: &str,
    path: &str,
    i: u32,
    end: Instant,
    micros: &mut Vec<u32>,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut ws = BufReader::new(stream);
    // The key's value does not matter to the load; the server's accept is not checked.
    let upgrade = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    ws.write_all(upgrade.as_bytes())
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(ws.read_u8().await.map_err(|e| format!("upgrade: {e}"))?);
        if head.len() > 16 * 1024 {
            return Err("upgrade: an answer head over 16 KiB".into());
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
        return Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(line)
        ));
    }
    // Clients mask every frame (RFC 6455, 5.3); one key per connection is enough here.
    let mask = (0x9e37_79b9u32.wrapping_mul(i + 1)).to_be_bytes();
    let mut frame = vec![0x81, 0x80 | MESSAGE.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(MESSAGE.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut echo = [0u8; 2 + MESSAGE.len()];
    while Instant::now() < end {
        let sent = Instant::now();
        ws.write_all(&frame)
            .await
            .map_err(|e| format!("send: {e}"))?;
        ws.read_exact(&mut echo)
            .await
            .map_err(|e| format!("echo: {e}"))?;
        if echo[..2] != [0x81, MESSAGE.len() as u8] || &echo[2..] != MESSAGE {
            return Err(format!("a wrong echo: {echo:?}"));
        }
        micros.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    // A close (1000), masked; the server's answer is not waited for.
    let close = [0x88, 0x82, mask[0], mask[1], 0x03 ^ mask[2], 0xe8 ^ mask[3]];
    let _ = ws.write_all(&close).await;
    Ok(())
}
