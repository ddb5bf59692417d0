//! Server-sent events, split out of a byte stream whose chunks do not align with events.

/// One complete event: its raw bytes (blank line included) and parsed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub raw: Vec<u8>,
    pub event: Option<String>,
    pub data: String,
}

/// Buffers bytes per request and yields events as their terminating blank line arrives.
#[derive(Debug, Default)]
pub struct SseBuffer {
    buf: Vec<u8>,
    /// Where to resume scanning for the blank line, so a slow event is not rescanned.
    scanned: usize,
}

impl SseBuffer {
    /// Appends `chunk` and moves every completed event into `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(chunk);
        // Every completed event is cut out where it lies; what is left moves to the front
        // once, not once per event.
        let (mut start, mut from) = (0, self.scanned);
        while let Some(end) = find_event_end(&self.buf[start..], from) {
            out.push(parse_event(self.buf[start..start + end].to_vec()));
            start += end;
            from = 0;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len().saturating_sub(3);
    }

    /// Bytes of an event that never completed.
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }

    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// End (exclusive) of the first event: the position after a blank line, which is two line
/// breaks in a row in any of the `\n`, `\r\n`, `\r` styles.
fn find_event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let b = buf[i];
        if b == b'\n' || b == b'\r' {
            let after_first = if b == b'\r' && buf.get(i + 1) == Some(&b'\n') {
                i + 2
            } else {
                i + 1
            };
            match buf.get(after_first) {
                Some(b'\n') => return Some(after_first + 1),
                Some(b'\r') => {
                    return Some(if buf.get(after_first + 1) == Some(&b'\n') {
                        after_first + 2
                    } else if after_first + 1 < buf.len() {
                        after_first + 1
                    } else {
                        // A lone `\r` at the end may be the start of `\r\n`: wait.
                        return None;
                    });
                }
                Some(_) => i = after_first,
                None => return None,
            }
        } else {
            i += 1;
        }
    }
    None
}

fn parse_event(raw: Vec<u8>) -> SseEvent {
    let text = String::from_utf8_lossy(&raw);
    let mut event = None;
    let mut data = String::new();
    let mut first_data = true;
    for line in text.split(['\n', '\r']) {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_string()),
            "data" => {
                if !first_data {
                    data.push('\n');
                }
                data.push_str(value);
                first_data = false;
            }
            _ => {}
        }
    }
    SseEvent { raw, event, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_any_chunking() {
        let stream = b"event: a\ndata: {\"x\":1}\n\n: comment\r\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut buf = SseBuffer::default();
            let mut out = Vec::new();
            buf.push(&stream[..split], &mut out);
            buf.push(&stream[split..], &mut out);
            assert_eq!(out.len(), 3, "split at {split}");
            assert_eq!(out[0].event.as_deref(), Some("a"));
            assert_eq!(out[0].data, "{\"x\":1}");
            assert_eq!(out[1].data, "two\nlines");
            assert_eq!(out[2].data, "[DONE]");
            let joined: Vec<u8> = out.iter().flat_map(|e| e.raw.clone()).collect();
            assert_eq!(joined, stream.to_vec());
            assert_eq!(buf.pending(), 0);
        }
    }

    #[test]
    fn keeps_an_unfinished_event() {
        let mut buf = SseBuffer::default();
        let mut out = Vec::new();
        buf.push(b"data: partial", &mut out);
        assert!(out.is_empty());
        assert_eq!(buf.take_rest(), b"data: partial");
    }
}
