//! The Prometheus endpoint: `GET /metrics` on `metrics_port`, served by one
//! plain thread (blocking std sockets) away from the cores. A scrape reads
//! what every core published at its last tick, so it takes no lock and
//! costs the message path nothing.
//!
//! A small HTTP/1.1 subset, bounded: a request head of at most 8 KiB read
//! within 5 s, one request per connection, at most four connections served
//! at once (more are closed at once).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::exposition::{
    CoreScrape, LatencyScrape, ListenerScrape, ProcessScrape, Scrape, CONTENT_TYPE,
};
use super::Shared;
use crate::metrics;
use ringmq_proto::latency::BOUNDS_US;

const MAX_HEAD: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONCURRENT: usize = 4;

/// The endpoint while it runs; dropping it does not stop it, [`Exporter::stop`] does.
pub struct Exporter {
    addr: SocketAddr,
    thread: std::thread::JoinHandle<()>,
}

impl Exporter {
    /// Binds `addr` now (so a taken port fails the start) and serves on a thread.
    pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<Exporter> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("metrics_port: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let thread = std::thread::Builder::new()
            .name("ringmq-metrics".into())
            .spawn(move || accept_loop(listener, shared))
            .context("spawning the metrics thread")?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        Ok(Exporter { addr, thread })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends the accept loop (the broker's shutdown flag is already set) by
    /// waking it with a connection of its own, and waits for it.
    pub fn stop(self) {
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        let _ = self.thread.join();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            continue;
        };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
            busy.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let (shared, done) = (shared.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("ringmq-scrape".into())
            .spawn(move || {
                serve(stream, &shared);
                done.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let response = match read_head(&mut stream) {
        Ok(head) => respond(&head, shared),
        Err(status) => plain(status, ""),
    };
    let _ = stream.write_all(&response);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    drain(&mut stream);
}

/// Reads what the client still sends (a refused, oversized head) until it
/// closes, bounded: closing with unread input would reset the connection and
/// could discard the answer before the client reads it.
fn drain(stream: &mut TcpStream) {
    const DRAIN_BYTES: usize = 64 * 1024;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut chunk = [0u8; 4096];
    let mut left = DRAIN_BYTES;
    while left > 0 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The request line and headers, up to the blank line; an HTTP status when
/// they are too long or do not come in time.
fn read_head(stream: &mut TcpStream) -> Result<String, &'static str> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            return Err("431 Request Header Fields Too Large");
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(_) => return Err("408 Request Timeout"),
        }
    }
    String::from_utf8(head).map_err(|_| "400 Bad Request")
}

/// The response to a request head.
fn respond(head: &str, shared: &Shared) -> Vec<u8> {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = scrape(shared).encode();
            response("200 OK", CONTENT_TYPE, &body)
        }
        (_, "/metrics") => plain("405 Method Not Allowed", "only GET /metrics\n"),
        ("", _) => plain("400 Bad Request", ""),
        _ => plain("404 Not Found", "metrics are at /metrics\n"),
    }
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let allow = match status.starts_with("405") {
        true => "Allow: GET\r\n",
        false => "",
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What the cores last published, and the process's own figures.
fn scrape(shared: &Shared) -> Scrape {
    let cores = shared.counters.iter().zip(&shared.drivers);
    let cores = cores.map(|(counters, driver)| CoreScrape {
        driver: driver.get().copied().unwrap_or("starting"),
        counters: counters.snapshot(),
    });
    let listeners = shared.listeners.iter().map(|l| ListenerScrape {
        name: l.label(),
        accepted: l.stats.accepted.load(Ordering::Relaxed),
        refused: l.stats.refused.load(Ordering::Relaxed),
        open: l.stats.open.load(Ordering::Relaxed),
    });
    Scrape {
        totals: metrics::total(&shared.counters),
        cores: cores.collect(),
        listeners: listeners.collect(),
        connections_open: shared.connections.load(Ordering::Relaxed) as u64,
        uptime_seconds: shared.started.elapsed().as_secs_f64(),
        process: process(),
        latency: Some(latency(&metrics::total_latency(&shared.latency))),
        bridges: shared.bridges.iter().map(|b| b.scrape()).collect(),
        cluster: shared.cluster.as_ref().map(|c| c.stats.scrape()),
    }
}

/// The histogram with bounds in seconds (the encoder makes the counts
/// cumulative).
fn latency(l: &metrics::Latency) -> LatencyScrape {
    let bounds = BOUNDS_US.iter().map(|us| *us as f64 / 1e6);
    let bounds = bounds.chain([f64::INFINITY]);
    LatencyScrape {
        buckets: bounds.zip(l.counts).collect(),
        count: l.count(),
        sum_seconds: l.sum_us as f64 / 1e6,
    }
}

/// CPU time, memory and descriptors from `/proc/self`.
fn process() -> Option<ProcessScrape> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (ticks, page) = (ticks.max(1) as f64, page.max(1) as u64);
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after ')'.
    let cpu = (number(11)? + number(12)?) as f64 / ticks;
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let max_fds = super::fd_table::open_file_limit();
    Some(ProcessScrape {
        cpu_seconds: cpu,
        // vsize (field 23) is in bytes, rss (24) in pages.
        virtual_bytes: number(20)?,
        resident_bytes: number(21)? * page,
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_read() {
        let p = process().expect("/proc/self is readable");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes);
        assert!(p.open_fds > 0 && p.max_fds >= p.open_fds);
    }

    #[test]
    fn responses_say_their_length() {
        let r = String::from_utf8(plain("404 Not Found", "abc")).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 3\r\n") && r.ends_with("\r\n\r\nabc"));
        assert!(String::from_utf8(plain("405 Method Not Allowed", ""))
            .unwrap()
            .contains("Allow: GET\r\n"));
    }
}
