//! Playing a reply back over the wire: SSE framing, pacing, injected resets, and the
//! completed/cancelled accounting of streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::Value;

use super::Counters;

/// One SSE event, already framed.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    bytes: Bytes,
    /// Carries generated content; `reset-after=K` counts only these.
    content: bool,
}

impl Event {
    /// `data: {json}` — OpenAI chat and legacy completions.
    pub fn data(json: &Value) -> Self {
        Self::framed(format!("data: {json}\n\n"))
    }

    /// `event: name` + `data: {json}` — Anthropic and the Responses API.
    pub fn named(name: &str, json: &Value) -> Self {
        Self::framed(format!("event: {name}\ndata: {json}\n\n"))
    }

    /// OpenAI's end-of-stream sentinel.
    pub fn done() -> Self {
        Self::framed("data: [DONE]\n\n".to_owned())
    }

    fn framed(text: String) -> Self {
        Event {
            bytes: Bytes::from(text),
            content: false,
        }
    }

    /// Marks this event as carrying generated content.
    pub fn content(mut self) -> Self {
        self.content = true;
        self
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Before the first body chunk.
    pub first: Duration,
    /// Before every later chunk.
    pub interval: Duration,
}

pub(crate) async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

enum Frame {
    Data(Bytes),
    /// Fail the body: hyper then drops the connection without finishing the response.
    Reset,
}

/// Counts a stream as completed when its last event is handed over, or as cancelled when the
/// body is dropped before that (the client went away). Injected resets count as neither.
pub(crate) struct StreamGuard {
    counters: Arc<Counters>,
    settled: bool,
}

impl StreamGuard {
    pub fn new(counters: Arc<Counters>) -> Self {
        StreamGuard {
            counters,
            settled: false,
        }
    }

    fn complete(&mut self) {
        if !self.settled {
            self.settled = true;
            self.counters
                .streams_completed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn abort(&mut self) {
        self.settled = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.counters
                .streams_cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A streaming body playing `events` with `timing`; with `reset_after = Some(k)` it stops
/// after the k-th content event (or the last one, if there are fewer) and fails the body.
pub(crate) fn playback(
    events: Vec<Event>,
    reset_after: Option<usize>,
    timing: Timing,
    guard: StreamGuard,
) -> Body {
    let frames = match reset_after {
        None => events.into_iter().map(|e| Frame::Data(e.bytes)).collect(),
        Some(k) => {
            let content: Vec<usize> = (0..events.len()).filter(|&i| events[i].content).collect();
            let cut = match content.get(k) {
                Some(&next) => next,
                None => content.last().map_or(events.len(), |&last| last + 1),
            };
            let mut frames: Vec<Frame> = events
                .into_iter()
                .take(cut)
                .map(|e| Frame::Data(e.bytes))
                .collect();
            frames.push(Frame::Reset);
            frames
        }
    };
    body(frames, timing, Some(guard))
}

/// A non-streamed body that breaks off halfway, for `reset-after` on a JSON reply.
pub(crate) fn cut_short(bytes: Bytes, timing: Timing) -> Body {
    let half = bytes.slice(..bytes.len() / 2);
    body(vec![Frame::Data(half), Frame::Reset], timing, None)
}

fn body(frames: Vec<Frame>, timing: Timing, guard: Option<StreamGuard>) -> Body {
    struct State {
        frames: std::vec::IntoIter<Frame>,
        started: bool,
        timing: Timing,
        guard: Option<StreamGuard>,
    }

    let state = State {
        frames: frames.into_iter(),
        started: false,
        timing,
        guard,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let Some(frame) = st.frames.next() else {
            if let Some(g) = st.guard.as_mut() {
                g.complete();
            }
            return None;
        };
        pause(if st.started {
            st.timing.interval
        } else {
            st.timing.first
        })
        .await;
        st.started = true;
        let item = match frame {
            Frame::Data(bytes) => {
                if st.frames.len() == 0 {
                    // Settle before the client can see the last event, so a test that has
                    // read the whole stream always observes the updated counter.
                    if let Some(g) = st.guard.as_mut() {
                        g.complete();
                    }
                }
                Ok(bytes)
            }
            Frame::Reset => {
                if let Some(g) = st.guard.as_mut() {
                    g.abort();
                }
                // Returning Pending once lets hyper flush what was already sent, so the
                // client sees a response that breaks off rather than no response at all.
                tokio::task::yield_now().await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                ))
            }
        };
        Some((item, st))
    });
    Body::from_stream(stream)
}
