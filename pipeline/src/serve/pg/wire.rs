//! One Postgres connection, from its first byte to its last: TLS negotiation,
//! frames no larger than the server takes, authentication within
//! `--auth-timeout`, then pgwire's handling of each message.
//!
//! pgwire's own `process_socket` waits 60 s for a login, reads frames of up to
//! 1 GiB into memory, and answers SSLRequests in a loop; a few hundred silent or
//! garbage-sending sockets would hold the server's memory and keep real clients
//! out. So the connection is driven here, with pgwire's public message handling.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, SinkExt, StreamExt};
use pgwire::api::{ClientInfo, DefaultClient, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use pgwire::tokio::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::{Framed, FramedParts};

/// The first frame (a startup or cancel request) is never larger; Postgres' own limit.
const MAX_STARTUP_FRAME: usize = 10_000;
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;
const TLS_HANDSHAKE: u8 = 0x16;

/// What bounds one connection.
#[derive(Debug, Clone, Copy)]
pub struct WireLimits {
    /// A connection that has not authenticated by then is closed.
    pub auth_timeout: Duration,
    /// The largest frame taken after startup (a statement, its parameters, a password).
    pub max_frame: usize,
    /// The longest one message may take to handle, answer sent included; past it
    /// the connection is closed (a client that stops reading its rows holds nothing).
    pub max_message_time: Duration,
}

/// The client's socket, so that a running statement can notice it closed.
#[derive(Debug, Clone, Copy)]
pub struct Peer(RawFd);

impl Peer {
    /// Whether the client has closed its end (or the connection broke). Cheap: one
    /// `poll` that does not wait. Valid while the connection is served, which is
    /// while its messages are handled.
    pub fn gone(&self) -> bool {
        let mut probe = libc::pollfd { fd: self.0, events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one valid pollfd, a timeout of zero; the fd belongs to the live connection.
        let ready = unsafe { libc::poll(&mut probe, 1, 0) };
        ready > 0 && probe.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

/// Serves one connection until the client leaves, errs, or overstays a limit.
/// `authenticated` is set by the startup handler once the password verified.
pub async fn serve<H: PgWireServerHandlers>(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    handlers: H,
    limits: WireLimits,
    authenticated: Arc<AtomicBool>,
) -> io::Result<()> {
    let login_by = Instant::now() + limits.auth_timeout;
    let peer = socket.peer_addr()?;
    socket.set_nodelay(true)?;
    let fd = Peer(socket.as_raw_fd());
    let negotiated = tokio::time::timeout_at(login_by, negotiate(socket, tls)).await;
    let (stream, first) = match negotiated {
        Ok(Ok(Some(negotiated))) => negotiated,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no startup message within the login time")),
    };
    let secure = matches!(stream, Stream::Tls(_));
    let mut frames = Frames::new(limits.max_frame);
    // The bytes negotiation read of the first frame are the guard's too.
    let refused = frames.follow(&first).err();
    let io = Bounded { inner: stream, frames };
    let mut client = DefaultClient::new(peer, secure);
    client.state = PgWireConnectionState::AwaitingStartup;
    client.session_extensions.insert(fd);
    let mut parts = FramedParts::new(io, PgWireMessageServerCodec::new(client));
    parts.read_buf = first;
    let mut socket = Framed::from_parts(parts);
    if let Some(e) = refused {
        let message = e.to_string();
        farewell(&mut socket, refusal_code(&message), &message).await;
        return Err(e);
    }

    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();
    loop {
        let logged_in = authenticated.load(Ordering::Acquire);
        // pgwire's decoders trust some counts they read (a Bind's parameters): a lie
        // panics there. That is a malformed message, which ends this connection only.
        let decoded = AssertUnwindSafe(socket.next()).catch_unwind();
        let next = if logged_in {
            decoded.await
        } else {
            match tokio::time::timeout_at(login_by, decoded).await {
                Ok(next) => next,
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "not authenticated within the login time")),
            }
        };
        let next = next.unwrap_or_else(|_| Some(Err(PgWireError::IoError(io::Error::new(io::ErrorKind::InvalidData, "a malformed message")))));
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                let message = e.to_string();
                farewell(&mut socket, refusal_code(&message), &message).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, message));
            }
            None => return Ok(()),
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let waits_for_sync = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let handled = process_message(message, &mut socket, startup.clone(), simple.clone(), extended.clone(), copy.clone(), cancel.clone());
        // The login time bounds the client (reads, above), not the server's own
        // work on a message: checking a token and opening a session on a busy
        // server may take longer than a short login time.
        match tokio::time::timeout_at(Instant::now() + limits.max_message_time, handled).await {
            Ok(Ok(())) => {}
            Ok(Err(mut e)) => {
                errors.on_error(&socket, &mut e);
                let info = ErrorInfo::from(e);
                // Any error before the login ends the connection, as in Postgres.
                let last = info.is_fatal() || !authenticated.load(Ordering::Acquire);
                process_error(&mut socket, PgWireError::UserError(Box::new(info)), waits_for_sync).await?;
                if last {
                    return Ok(());
                }
            }
            Err(_) => {
                let message = "a message took longer than the server allows (a client not reading its answer?)";
                farewell(&mut socket, "08006", message).await; // connection_failure
                return Err(io::Error::new(io::ErrorKind::TimedOut, message));
            }
        }
        if !authenticated.load(Ordering::Acquire) && matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
            // Authentication ended without the handler's word: never serve such a connection.
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "ready for queries without authentication"));
        }
    }
}

/// The SQLSTATE of a frame the server will not read: too large (the frame
/// guard's message, whichever layer it surfaced through), or no message at all.
fn refusal_code(message: &str) -> &'static str {
    if message.contains("this server takes at most") {
        "54000" // program_limit_exceeded
    } else {
        "08P01" // protocol_violation
    }
}

/// Says why the connection ends (a frame too large, bytes that are no message, a
/// message past its time), if the client is still there to hear it within a second.
async fn farewell<C: futures::Sink<PgWireBackendMessage> + Unpin>(socket: &mut C, code: &str, message: &str) {
    let refusal = ErrorInfo::new("FATAL".into(), code.into(), message.chars().take(200).collect());
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(PgWireBackendMessage::ErrorResponse(refusal.into()))).await;
}

/// TLS negotiation: at most one SSLRequest and one GSSENCRequest, each answered
/// once, or a direct TLS handshake. Returns the stream and the bytes of the first
/// real frame read so far, or `None` when the client left, or asked for direct
/// TLS from a server without it.
async fn negotiate(mut socket: TcpStream, tls: Option<TlsAcceptor>) -> io::Result<Option<(Stream, bytes::BytesMut)>> {
    let mut first = [0u8; 1];
    if socket.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    if first[0] == TLS_HANDSHAKE {
        // A direct TLS connection (Postgres 17's sslnegotiation=direct).
        let Some(acceptor) = tls else { return Ok(None) };
        let stream = acceptor.accept(socket).await?;
        let alpn_ok = stream.get_ref().1.alpn_protocol() == Some(b"postgresql".as_slice());
        if !alpn_ok {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "direct TLS without the postgresql ALPN protocol"));
        }
        return Ok(Some((Stream::Tls(Box::new(stream)), bytes::BytesMut::new())));
    }
    let (mut ssl_asked, mut gss_asked) = (false, false);
    loop {
        let mut header = [0u8; 8];
        socket.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let code = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        match (length, code) {
            (8, SSL_REQUEST) if !ssl_asked => {
                ssl_asked = true;
                match &tls {
                    Some(acceptor) => {
                        socket.write_all(b"S").await?;
                        let stream = acceptor.accept(socket).await?;
                        return Ok(Some((Stream::Tls(Box::new(stream)), bytes::BytesMut::new())));
                    }
                    None => socket.write_all(b"N").await?,
                }
            }
            (8, GSS_REQUEST) if !gss_asked => {
                gss_asked = true;
                socket.write_all(b"N").await?;
            }
            (8, SSL_REQUEST | GSS_REQUEST) => return Err(io::Error::new(io::ErrorKind::InvalidData, "the same encryption request twice")),
            _ => return Ok(Some((Stream::Plain(socket), bytes::BytesMut::from(&header[..])))),
        }
    }
}

/// The connection's byte stream, in clear or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A stream whose incoming frames are checked as they arrive: one longer than
/// the limit ends the connection before its body is buffered.
pub struct Bounded {
    inner: Stream,
    frames: Frames,
}

/// Where the reader is in the frame sequence: a startup frame (length only),
/// then typed frames (a type byte, then the length).
struct Frames {
    max: usize,
    started: bool,
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
}

impl Frames {
    fn new(max: usize) -> Self {
        Frames { max, started: false, header: [0; 5], header_len: 0, body_left: 0 }
    }

    /// Follows `bytes`, the next bytes of the stream; an error names a frame too large.
    fn follow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let taken = self.body_left.min(bytes.len());
                self.body_left -= taken;
                bytes = &bytes[taken..];
                continue;
            }
            let header_size = if self.started { 5 } else { 4 };
            let taken = (header_size - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&bytes[..taken]);
            self.header_len += taken;
            bytes = &bytes[taken..];
            if self.header_len < header_size {
                continue;
            }
            let at = header_size - 4;
            let length = u32::from_be_bytes([self.header[at], self.header[at + 1], self.header[at + 2], self.header[at + 3]]) as usize;
            let max = if self.started { self.max } else { MAX_STARTUP_FRAME };
            if !(4..=max).contains(&length) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a message of {length} bytes: this server takes at most {max}")));
            }
            self.body_left = length - 4;
            self.header_len = 0;
            self.started = true;
        }
        Ok(())
    }
}

impl AsyncRead for Bounded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.inner {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = polled {
            this.frames.follow(&buf.filled()[before..])?;
        }
        polled
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, body: usize) -> Vec<u8> {
        let mut frame = vec![kind];
        frame.extend_from_slice(&((body + 4) as u32).to_be_bytes());
        frame.extend(std::iter::repeat_n(b'x', body));
        frame
    }

    #[test]
    fn frames_are_followed_across_reads_and_an_oversized_one_is_refused_by_its_header() {
        let mut startup = 16u32.to_be_bytes().to_vec();
        startup.extend_from_slice(&[0, 3, 0, 0, b'u', 0, b'x', 0, 0, 0, 0, 0]);
        let mut stream = startup;
        stream.extend(typed(b'Q', 100));
        stream.extend(typed(b'Q', 1000));
        let mut frames = Frames::new(1004);
        for chunk in stream.chunks(7) {
            frames.follow(chunk).unwrap();
        }
        let refused = frames.follow(&typed(b'Q', 1001)[..5]).unwrap_err();
        assert!(refused.to_string().contains("a message of 1005 bytes: this server takes at most 1004"), "{refused}");
        let mut first = Frames::new(1 << 20);
        assert!(first.follow(&20_000u32.to_be_bytes()).is_err(), "a startup frame is at most 10,000 bytes");
        let mut short = Frames::new(1 << 20);
        assert!(short.follow(&[0, 0, 0, 2]).is_err(), "a length below its own four bytes");
    }
}
