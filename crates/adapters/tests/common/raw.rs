//! Raw HTTP/1.1 on loopback sockets, byte for byte: a client that reads answers as a
//! client does (by length, chunks or close), and head reading for scripted versions.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw client waits for bytes before it fails its test.
pub const BOUND: Duration = Duration::from_secs(20);

/// A version on `host` answering every request head with `answer`, keeping its
/// connections for the next request.
pub async fn answering(host: &str, answer: Vec<u8>) -> SocketAddr {
    answering_telling(host, answer).await.0
}

/// As [`answering`], telling each request head it read (as long as the receiver is
/// kept).
pub async fn answering_telling(
    host: &str,
    answer: Vec<u8>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    let (told, heads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            let told = told.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while let Some(head) = read_head(&mut stream, &mut pending).await {
                    let _ = told.send(head);
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// Reads a head (to its empty line) from `stream`, keeping what follows in `pending`;
/// `None` when the connection ends first.
pub async fn read_head(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            pending.drain(..end + 4);
            return Some(head);
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// The values of the fields `name` in `head`, in order.
pub fn fields<'h>(head: &'h str, name: &str) -> Vec<&'h str> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// The value of the first field `name` in `head`.
pub fn field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    fields(head, name).into_iter().next()
}

/// A client connection reading answers as a client does.
pub struct Client {
    pub conn: TcpStream,
    buf: Vec<u8>,
}

/// One answer: its head, and its body as it came (a chunked one with its framing).
pub struct Answer {
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn into_pair(self) -> (String, Vec<u8>) {
        (self.head, self.body)
    }

    /// Its status line.
    pub fn status(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
}

impl Client {
    pub async fn to(addr: SocketAddr) -> Client {
        Client {
            conn: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.conn.write_all(bytes).await.unwrap();
    }

    /// More bytes, or `false` at the connection's end.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(BOUND, self.conn.read(&mut chunk))
            .await
            .expect("no answer in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Takes `n` bytes, reading as needed.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.more().await, "closed mid-answer: {:?}", self.buf);
        }
        self.buf.drain(..n).collect()
    }

    /// Takes a line, with its CRLF.
    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return self.buf.drain(..at + 2).collect();
            }
            assert!(self.more().await, "closed mid-line: {:?}", self.buf);
        }
    }

    /// An answer's head, or `None` when the connection closed first.
    pub async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap());
            }
            if !self.more().await {
                return None;
            }
        }
    }

    /// Reads one answer, to a HEAD request when `head_request`.
    pub async fn answer(&mut self, head_request: bool) -> Answer {
        let head = self.head().await.expect("closed before an answer");
        let chunked = field(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let body = if head_request {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let size_line = self.line().await;
                body.extend_from_slice(&size_line);
                let text = String::from_utf8_lossy(&size_line);
                let size =
                    usize::from_str_radix(text.trim().split(';').next().unwrap(), 16).unwrap();
                if size == 0 {
                    loop {
                        let trailer = self.line().await;
                        body.extend_from_slice(&trailer);
                        if trailer == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let data = self.take(size + 2).await;
                body.extend_from_slice(&data);
            }
            body
        } else if let Some(n) = field(&head, "content-length").and_then(|v| v.parse().ok()) {
            self.take(n).await
        } else {
            while self.more().await {}
            std::mem::take(&mut self.buf)
        };
        Answer { head, body }
    }

    /// Whether the proxy closed the connection (nothing more comes).
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.more().await
    }
}
