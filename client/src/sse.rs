//! An incremental Server-Sent Events parser for `GET /api/v1/events`.

/// Feed it bytes as they arrive; it returns the `data` of every complete event.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
}

/// A stream with one enormous unterminated line is not an event stream: past this, the
/// buffered bytes are dropped.
const MAX_LINE: usize = 4 * 1024 * 1024;

impl SseParser {
    /// Adds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                self.data
                    .push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
            }
            // Comments (":"), "event:", "id:" and "retry:" lines carry nothing we use.
        }
        if self.buf.len() > MAX_LINE {
            self.buf.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::Event;

    #[test]
    fn sse_parser_splits_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nda").is_empty());
        assert!(p.push(b"ta: {\"a\":1}\r\n").is_empty());
        assert_eq!(
            p.push(b"\r\ndata:x\ndata: y\n\n"),
            vec!["{\"a\":1}", "x\ny"]
        );
        assert!(p.push(b"event: foo\nid: 3\n\n").is_empty());
    }

    #[test]
    fn parses_api_events() {
        let mut p = SseParser::default();
        let data = p.push(
            b"data: {\"kind\":\"presence\",\"device\":\"d1\",\"online\":true,\"time\":5}\n\ndata: {\"kind\":\"new_thing\",\"x\":1}\n\n",
        );
        let evs: Vec<Event> = data
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(
            evs[0],
            Event::Presence {
                device: "d1".into(),
                online: true,
                time: 5
            }
        );
        assert_eq!(evs[1], Event::Unknown);
    }

    #[test]
    fn an_endless_line_is_dropped() {
        let mut p = SseParser::default();
        assert!(p.push(&vec![b'x'; MAX_LINE + 1]).is_empty());
        assert_eq!(p.push(b"data: ok\n\n"), vec!["ok"]);
    }
}
