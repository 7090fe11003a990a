//! OpenAI's answers end before their stop sequence. Streamed text is held back while it could
//! still be the start of one, so streamed and whole answers are the same text.

pub struct StopTrimmer {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    /// A stop sequence was found: nothing more is handed out.
    stopped: bool,
}

impl StopTrimmer {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds `piece`; returns the text that can be shown now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(piece);
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|stop| self.text.find(stop.as_str()))
            .min()
        {
            self.stopped = true;
            return self.take_until(cut.max(self.sent));
        }
        // Hold back a tail that is a prefix of some stop sequence.
        let held = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|&n| stop.is_char_boundary(n) && self.text.ends_with(&stop[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        self.take_until(self.text.len() - held)
    }

    /// The rest once generation ended (a held-back tail that never became a stop sequence).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        self.take_until(self.text.len())
    }

    fn take_until(&mut self, end: usize) -> String {
        let end = end.max(self.sent);
        let out = self.text[self.sent..end].to_owned();
        self.sent = end;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::StopTrimmer;

    fn streamed(stops: &[&str], pieces: &[&str]) -> String {
        let mut trimmer = StopTrimmer::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: String = pieces.iter().map(|p| trimmer.push(p)).collect();
        out.push_str(&trimmer.finish());
        out
    }

    #[test]
    fn text_ends_before_the_stop_sequence() {
        assert_eq!(streamed(&["END"], &["a b", " E", "N", "D more"]), "a b ");
        assert_eq!(streamed(&["END"], &["a b", " E", "N"]), "a b EN");
        assert_eq!(streamed(&["x", "b"], &["ab"]), "a");
        assert_eq!(streamed(&[], &["red", " circle"]), "red circle");
        // Held back while it may start a stop sequence, released when it does not.
        let mut trimmer = StopTrimmer::new(vec!["ab".into()]);
        assert_eq!(trimmer.push("xa"), "x");
        assert_eq!(trimmer.push("c"), "ac");
    }
}
