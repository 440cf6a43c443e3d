//! Arbitrary bytes arriving in arbitrary pieces on a framed byte stream,
//! read by the host's and the client's ends of a link
//! (`transport::framed::{host_link, client_link}`).
//!
//! Whatever the bytes, nothing panics; each end yields the same envelopes
//! whether the bytes arrive in the given pieces or all at once, and ends
//! with an error in one case exactly when it does in the other (which
//! error may differ: another protocol is recognised from the bytes seen so
//! far); it yields no more envelopes than the bytes hold frames; and every
//! envelope the client's end yields is a `HostMessage` its in-place decoder
//! reads.
#![no_main]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use cosystem_worker::transport::HostInput;
use cosystem_worker::transport::framed::{FramedConfig, client_link, host_link};
use cosystem_worker::wire::view::HostView;
use futures::StreamExt;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

#[derive(Debug, Arbitrary)]
struct Input {
    /// The frame limit, small so that limits are reached.
    limit: u16,
    /// The bytes, in the pieces they arrive in.
    pieces: Vec<Vec<u8>>,
    /// Whether the stream ends with a reset rather than its end.
    reset: bool,
}

/// A reader handing out its pieces one read at a time, then the end of the
/// stream or a reset.
struct Pieces {
    pieces: VecDeque<Vec<u8>>,
    reset: bool,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while let Some(mut piece) = self.pieces.pop_front() {
            if piece.is_empty() {
                continue;
            }
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.pieces.push_front(piece.split_off(n));
            }
            return Poll::Ready(Ok(()));
        }
        if self.reset {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

/// What an end of a link read: its envelopes, re-encoded, and whether an
/// error ended it.
type Read = (Vec<Vec<u8>>, bool);

fn host_end(pieces: Vec<Vec<u8>>, reset: bool, config: FramedConfig) -> Read {
    let reader = Pieces {
        pieces: pieces.into(),
        reset,
    };
    let link = host_link(reader, tokio::io::sink(), "fuzz", config);
    let mut read = (Vec::new(), false);
    futures::executor::block_on(link.stream.for_each(|item| {
        match item {
            Ok(message) => read.0.push(prost::Message::encode_to_vec(&message)),
            Err(_) => read.1 = true,
        }
        futures::future::ready(())
    }));
    read
}

fn client_end(pieces: Vec<Vec<u8>>, reset: bool, config: FramedConfig) -> Read {
    let reader = Pieces {
        pieces: pieces.into(),
        reset,
    };
    let link = client_link(reader, tokio::io::sink(), config);
    let mut read = (Vec::new(), false);
    futures::executor::block_on(link.stream.for_each(|item| {
        match item {
            Ok(HostInput::Encoded(bytes)) => {
                assert!(!bytes.is_empty(), "an empty frame was yielded (FB2)");
                assert!(HostView::decode(&bytes).is_ok(), "an undecodable envelope");
                read.0.push(bytes.to_vec());
            }
            Ok(other) => panic!("a framed link yields encoded envelopes, not {other:?}"),
            Err(_) => read.1 = true,
        }
        futures::future::ready(())
    }));
    read
}

fuzz_target!(|input: Input| {
    let config = FramedConfig {
        max_frame_bytes: usize::from(input.limit).max(1),
    };
    let whole: Vec<u8> = input.pieces.concat();
    let frames_at_most = whole.len() / 4 + 1;
    for end in [host_end, client_end] {
        let pieced = end(input.pieces.clone(), input.reset, config);
        let at_once = end(vec![whole.clone()], input.reset, config);
        assert_eq!(pieced.0, at_once.0, "the pieces changed the envelopes");
        assert_eq!(pieced.1, at_once.1, "the pieces changed whether it failed");
        assert!(pieced.0.len() <= frames_at_most);
    }
});
