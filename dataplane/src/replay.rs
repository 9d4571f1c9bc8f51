//! Request bodies kept for a retry. The first try streams the body through as it
//! arrives (nothing waits for the whole of it) and keeps a copy of up to
//! [`REPLAY_LIMIT`] bytes; a retry sends the copy. A body larger than the limit, or
//! not yet complete when the try failed (a long upload still streaming), cannot be
//! sent again, and the request is not retried.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};

use crate::http::{Body, BoxError, boxed};

/// The most of a request body kept for a retry: 64 KiB, as Linkerd's.
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;

#[derive(Default)]
struct Copy {
    frames: Vec<Frame<Bytes>>,
    len: usize,
    /// The original ended, and every frame of it is in `frames`.
    complete: bool,
    /// It was more than [`REPLAY_LIMIT`]: the copy was dropped.
    too_long: bool,
}

/// A request body and the copy a retry would send.
pub(crate) struct Replay {
    copy: Arc<Mutex<Copy>>,
}

impl Replay {
    /// Wraps `body` for its first try: the body to send, and what can replay it.
    pub(crate) fn new(body: Body) -> (Body, Replay) {
        let too_long = body
            .size_hint()
            .lower()
            .try_into()
            .map_or(true, |n: usize| n > REPLAY_LIMIT);
        let copy = Arc::new(Mutex::new(Copy {
            complete: body.is_end_stream(),
            too_long,
            ..Copy::default()
        }));
        if too_long || body.is_end_stream() {
            return (body, Replay { copy });
        }
        let tee = Tee {
            inner: body,
            copy: copy.clone(),
        };
        (boxed(tee), Replay { copy })
    }

    /// The body again, when all of it was read and kept.
    pub(crate) fn again(&self) -> Option<Body> {
        let c = self.copy.lock().expect("replay lock");
        if !c.complete || c.too_long {
            return None;
        }
        Some(boxed(Frames(c.frames.iter().map(clone_frame).collect())))
    }
}

fn clone_frame(f: &Frame<Bytes>) -> Frame<Bytes> {
    if let Some(data) = f.data_ref() {
        Frame::data(data.clone())
    } else if let Some(trailers) = f.trailers_ref() {
        Frame::trailers(trailers.clone())
    } else {
        unreachable!("a frame is data or trailers")
    }
}

/// The first try's body: passes the original's frames on, keeping a copy.
struct Tee {
    inner: Body,
    copy: Arc<Mutex<Copy>>,
}

impl hyper::body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut c = self.copy.lock().expect("replay lock");
        match &polled {
            Poll::Ready(Some(Ok(frame))) if !c.too_long => {
                c.len += frame.data_ref().map_or(0, Bytes::len);
                if c.len > REPLAY_LIMIT {
                    c.too_long = true;
                    c.frames = Vec::new();
                } else {
                    c.frames.push(clone_frame(frame));
                }
            }
            Poll::Ready(None) => c.complete = true,
            _ => {}
        }
        // hyper stops polling once the body says it has ended.
        if self.inner.is_end_stream() {
            c.complete = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A kept body, sent again.
struct Frames(VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.0.iter().any(|f| f.is_trailers()) {
            return SizeHint::default();
        }
        let n: usize = self
            .0
            .iter()
            .filter_map(|f| f.data_ref())
            .map(Bytes::len)
            .sum();
        SizeHint::with_exact(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt as _, Full, StreamBody};

    use super::*;

    async fn read(b: Body) -> (Vec<u8>, Option<http::HeaderMap>) {
        let collected = b.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    fn chunks(parts: Vec<Frame<Bytes>>) -> Body {
        boxed(StreamBody::new(futures::stream::iter(
            parts.into_iter().map(Ok::<_, BoxError>),
        )))
    }

    #[tokio::test]
    async fn a_streamed_body_is_sent_as_it_comes_and_again_with_its_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", "7".parse().unwrap());
        let (first, replay) = Replay::new(chunks(vec![
            Frame::data(Bytes::from_static(b"hello ")),
            Frame::data(Bytes::from_static(b"world")),
            Frame::trailers(trailers.clone()),
        ]));
        assert!(replay.again().is_none(), "not read yet");
        assert_eq!(
            read(first).await,
            (b"hello world".to_vec(), Some(trailers.clone()))
        );
        for _ in 0..2 {
            let again = replay.again().expect("complete and small");
            assert_eq!(
                read(again).await,
                (b"hello world".to_vec(), Some(trailers.clone()))
            );
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_kept() {
        let big = vec![b'x'; REPLAY_LIMIT / 2 + 1];
        let (first, replay) = Replay::new(chunks(vec![
            Frame::data(Bytes::from(big.clone())),
            Frame::data(Bytes::from(big.clone())),
        ]));
        assert_eq!(read(first).await.0.len(), big.len() * 2);
        assert!(replay.again().is_none());
        // Known too long from its length: not even wrapped.
        let (_, replay) = Replay::new(boxed(Full::new(Bytes::from(vec![0u8; REPLAY_LIMIT + 1]))));
        assert!(replay.again().is_none());
    }

    #[tokio::test]
    async fn an_empty_or_whole_body_replays_at_once() {
        let (_, replay) = Replay::new(boxed(http_body_util::Empty::<Bytes>::new()));
        assert_eq!(read(replay.again().unwrap()).await.0, b"");
        // A whole body hyper reads in one frame and never polls past (it says it ended).
        let (mut first, replay) = Replay::new(boxed(Full::new(Bytes::from_static(b"abc"))));
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap(), &Bytes::from_static(b"abc"));
        assert!(first.is_end_stream());
        assert_eq!(read(replay.again().unwrap()).await.0, b"abc");
    }
}
