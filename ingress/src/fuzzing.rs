//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the ingress reads
//! the SNI of a ClientHello from whoever connects, before any authentication.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes that arrive in pieces of `piece` bytes, as a slow or hostile peer sends them.
struct Pieces<'a> {
    rest: &'a [u8],
    piece: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.piece.min(self.rest.len()).min(buf.remaining());
        let (now, later) = self.rest.split_at(n);
        buf.put_slice(now);
        self.rest = later;
        Poll::Ready(Ok(()))
    }
}

/// The SNI the ingress would route `bytes` by (its first byte sets the size of the
/// pieces they arrive in), or `None` when it would close the connection.
pub fn sni(bytes: &[u8]) -> Option<String> {
    let (&piece, hello) = bytes.split_first()?;
    let mut peer = Pieces {
        rest: hello,
        piece: usize::from(piece).max(1),
    };
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
    }
    let (name, seen) = RT
        .with(|rt| rt.block_on(crate::sni::read_client_hello(&mut peer)))
        .ok()?;
    // Every byte read is kept, to be passed on untouched.
    assert!(
        hello.starts_with(&seen),
        "the bytes kept are the bytes read"
    );
    Some(name)
}
