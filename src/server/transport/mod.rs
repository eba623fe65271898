//! The byte streams a client connection is served over: plain TCP, or TCP with
//! TLS and/or WebSocket layers in between. The layers are sans-io (rustls and
//! tungstenite hold no socket): the connection's reader feeds them what TCP
//! delivered and takes the MQTT bytes out; its writer hands them MQTT bytes
//! and writes what they produce. Plain TCP keeps its zero-copy path.

mod layered;
mod tls;
pub mod ws;

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

use bytes::BytesMut;
use futures::FutureExt as _;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{
    AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

pub use layered::{Layered, LayeredParts, Layers, Refused};
pub use tls::{client_identity, load_server_config, TlsAcceptor};
pub use ws::WsSettings;

/// What reads MQTT bytes from a client.
pub trait ReadHalf: 'static {
    /// Whether an idle reader of this stream may give up its task and wait
    /// for the socket to become readable (`server::parking`): only when the
    /// stream keeps no input of its own, which a TLS or WebSocket layer may.
    const PARKABLE: bool = false;

    /// Whether the stream ends with a close handshake of its own after the
    /// MQTT bytes (a TLS close_notify, a WebSocket Close frame), which the
    /// broker reads before it closes the socket even after a DISCONNECT.
    const CLOSE_HANDSHAKE: bool = true;

    /// Appends at least one byte to `buf` (whose spare capacity the caller
    /// reserved), or returns `Ok(0)` at the end of the stream.
    fn read(
        &mut self,
        buf: BytesMut,
        cancel: CancelHandle,
    ) -> impl Future<Output = (io::Result<usize>, BytesMut)>;

    /// Sets what to call when reading produced protocol output to send (a
    /// pong, a TLS alert) while no MQTT bytes came: the connection's writer
    /// is woken to send it. `make` builds it only for a stream that has such
    /// output: plain TCP never does, so it allocates nothing.
    fn set_write_prompt(&mut self, _make: &dyn Fn() -> WritePrompt) {}
}

/// Wakes a connection's writer from its reader.
pub type WritePrompt = std::rc::Rc<dyn Fn()>;

/// What writes MQTT bytes to a client.
pub trait WriteHalf: 'static {
    /// Writes all of `buf` (and any pending protocol output before it).
    fn write_all(&mut self, buf: BytesMut) -> impl Future<Output = (io::Result<()>, BytesMut)>;

    /// Protocol output waiting to go out even when the session has none.
    fn has_pending(&self) -> bool {
        false
    }

    /// Ends the stream in order (a WebSocket close frame, a TLS close_notify)
    /// and shuts the TCP write side.
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>>;
}

/// A client's byte stream, before and after it is split into a reader and a
/// writer.
pub trait Transport: Sized + 'static {
    type Reader: ReadHalf;
    type Writer: WriteHalf;

    /// As [`ReadHalf::read`], before the split (the CONNECT).
    fn read(
        &mut self,
        buf: BytesMut,
        cancel: CancelHandle,
    ) -> impl Future<Output = (io::Result<usize>, BytesMut)>;

    /// As [`WriteHalf::write_all`], before the split (a refusing CONNACK).
    fn write_all(&mut self, buf: BytesMut) -> impl Future<Output = (io::Result<()>, BytesMut)>;

    /// The TCP socket underneath, for an abortive close.
    fn raw_fd(&self) -> RawFd;

    fn into_halves(self) -> (Self::Reader, Self::Writer);

    /// The stream as sendable parts, to hand it to another core.
    fn into_portable(self) -> Portable;

    /// Folds the halves of an idle connection (its reader parked, nothing
    /// being written, no I/O in flight on either) back into the bare
    /// socket, so that it does not hold the runtime's stream objects; `Err`
    /// gives them back for a stream that cannot (one with layers, whose
    /// state lives in the halves).
    fn fold(
        rd: Self::Reader,
        wr: Self::Writer,
    ) -> Result<BareSocket, (Self::Reader, Self::Writer)> {
        Err((rd, wr))
    }

    /// The halves of a folded socket again, registered with this core's
    /// runtime. On an error the socket is closed.
    fn unfold(_socket: BareSocket) -> io::Result<(Self::Reader, Self::Writer)> {
        Err(io::Error::other("this stream is never folded"))
    }
}

/// An idle plain-TCP connection's socket, folded out of monoio's stream
/// (see [`Transport::fold`]): a descriptor, where the stream's two
/// allocations take 160 B.
pub type BareSocket = std::net::TcpStream;

/// A connection on its way to another core: its socket (no I/O in flight on
/// it) and any protocol state, re-registered with the receiving core's
/// runtime by [`Portable::serve_with`].
#[derive(Debug)]
pub enum Portable {
    Tcp(std::net::TcpStream),
    Layered(LayeredParts),
}

/// Takes a monoio socket out of its runtime as a std socket.
fn release(tcp: TcpStream) -> std::net::TcpStream {
    let fd = tcp.into_raw_fd();
    // SAFETY: `into_raw_fd` released monoio's ownership of this open socket,
    // and callers only release a stream with no I/O in flight (between
    // reads), so the std socket is its only owner.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}

impl Transport for TcpStream {
    type Reader = OwnedReadHalf<TcpStream>;
    type Writer = OwnedWriteHalf<TcpStream>;

    async fn read(&mut self, buf: BytesMut, cancel: CancelHandle) -> (io::Result<usize>, BytesMut) {
        read_tcp(self, buf, cancel).await
    }

    async fn write_all(&mut self, buf: BytesMut) -> (io::Result<()>, BytesMut) {
        let (res, buf) = AsyncWriteRentExt::write_all(self, buf).await;
        (res.map(drop), buf)
    }

    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }

    fn into_portable(self) -> Portable {
        Portable::Tcp(release(self))
    }

    fn fold(
        rd: Self::Reader,
        wr: Self::Writer,
    ) -> Result<BareSocket, (Self::Reader, Self::Writer)> {
        match rd.reunite(wr) {
            Ok(tcp) => Ok(release(tcp)),
            Err(halves) => Err((halves.0, halves.1)),
        }
    }

    fn unfold(socket: BareSocket) -> io::Result<(Self::Reader, Self::Writer)> {
        // No system call on io_uring; on epoll one `epoll_ctl` registers it.
        TcpStream::from_std(socket).map(Splitable::into_split)
    }
}

impl ReadHalf for OwnedReadHalf<TcpStream> {
    const PARKABLE: bool = true;
    const CLOSE_HANDSHAKE: bool = false;

    fn read(
        &mut self,
        buf: BytesMut,
        cancel: CancelHandle,
    ) -> impl Future<Output = (io::Result<usize>, BytesMut)> {
        // A plain map, not an async block: every idle connection holds this
        // future, so no layer of state is added around monoio's read.
        self.cancelable_read(spare_of(buf), cancel)
            .map(|(res, b)| (res, b.into_inner()))
    }
}

impl WriteHalf for OwnedWriteHalf<TcpStream> {
    async fn write_all(&mut self, buf: BytesMut) -> (io::Result<()>, BytesMut) {
        let (res, buf) = AsyncWriteRentExt::write_all(self, buf).await;
        (res.map(drop), buf)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        AsyncWriteRent::shutdown(self).await
    }
}

/// One read from TCP into the spare capacity of `buf`.
async fn read_tcp<R: CancelableAsyncReadRent>(
    rd: &mut R,
    buf: BytesMut,
    cancel: CancelHandle,
) -> (io::Result<usize>, BytesMut) {
    let (res, b) = rd.cancelable_read(spare_of(buf), cancel).await;
    (res, b.into_inner())
}

/// The unfilled part of `buf`: monoio reads into a buffer from its start, so a
/// read that must append after a partial frame goes through this view.
pub fn spare_of(buf: BytesMut) -> SliceMut<BytesMut> {
    let (len, cap) = (buf.len(), buf.capacity());
    buf.slice_mut(len..cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// A folded socket unfolds into halves that read what the peer sent
    /// meanwhile and write to it, on either driver, through several cycles.
    async fn folding_keeps_the_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        peer.set_read_timeout(Some(LIMIT)).unwrap();
        let accepted = listener.accept().unwrap().0;
        let (mut rd, mut wr) = TcpStream::from_std(accepted).unwrap().into_split();
        let cancel = monoio::io::Canceller::new();
        for round in 0..3u8 {
            let Ok(socket) = <TcpStream as Transport>::fold(rd, wr) else {
                panic!("plain TCP folds");
            };
            peer.write_all(&[round]).unwrap();
            (rd, wr) = <TcpStream as Transport>::unfold(socket).unwrap();
            let read = ReadHalf::read(&mut rd, BytesMut::with_capacity(8), cancel.handle());
            let (res, buf) = monoio::time::timeout(LIMIT, read)
                .await
                .expect("read in time");
            assert_eq!((res.unwrap(), &buf[..]), (1, &[round][..]));
            let write = WriteHalf::write_all(&mut wr, BytesMut::from(&[round + 10][..]));
            let (res, _) = monoio::time::timeout(LIMIT, write)
                .await
                .expect("write in time");
            res.unwrap();
            let mut answer = [0u8];
            peer.read_exact(&mut answer).unwrap();
            assert_eq!(answer[0], round + 10);
        }
    }

    #[test]
    fn a_folded_socket_unfolds_on_epoll() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(folding_keeps_the_connection());
    }

    #[test]
    fn a_folded_socket_unfolds_on_io_uring() {
        // Where the kernel refuses io_uring the epoll test above stands alone.
        let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build();
        let Ok(mut rt) = built else {
            return;
        };
        rt.block_on(folding_keeps_the_connection());
    }
}
