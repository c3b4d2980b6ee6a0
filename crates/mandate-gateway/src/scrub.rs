//! Scrubbing brokered secrets out of a response that arrives in pieces: a secret split across
//! two chunks is still found, because the end of a chunk that could be the start of a secret is
//! held back until the next one arrives.

use mandate_crypto::SecretString;

/// What replaces a secret in a response.
pub const REDACTED: &[u8] = b"[redacted by mandate]";

/// Shortest secret value looked for (shorter ones would redact ordinary text).
const MIN_SECRET: usize = 4;

/// Scrubs a byte stream.
pub struct Scrubber {
    secrets: Vec<Vec<u8>>,
    carry: Vec<u8>,
    /// How many occurrences were replaced so far.
    pub replaced: usize,
}

impl Scrubber {
    /// A scrubber for these secret values.
    pub fn new(secrets: &[SecretString]) -> Self {
        Scrubber {
            secrets: secrets
                .iter()
                .map(|s| s.expose().as_bytes().to_vec())
                .filter(|s| s.len() >= MIN_SECRET)
                .collect(),
            carry: Vec::new(),
            replaced: 0,
        }
    }

    /// Takes the next chunk; returns what may be released now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut buf = self.replace(buf);
        let hold = self.held_back(&buf);
        self.carry = buf.split_off(buf.len() - hold);
        buf
    }

    /// Releases what is still held at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        self.replace(rest)
    }

    fn replace(&mut self, mut buf: Vec<u8>) -> Vec<u8> {
        for secret in &self.secrets {
            let finder = memchr::memmem::Finder::new(secret);
            if finder.find(&buf).is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(buf.len());
            let mut at = 0;
            for hit in finder.find_iter(&buf) {
                if hit < at {
                    continue;
                }
                out.extend_from_slice(buf.get(at..hit).unwrap_or_default());
                out.extend_from_slice(REDACTED);
                at = hit + secret.len();
                self.replaced += 1;
            }
            out.extend_from_slice(buf.get(at..).unwrap_or_default());
            buf = out;
        }
        buf
    }

    /// The length of the longest end of `buf` that is the start of some secret.
    fn held_back(&self, buf: &[u8]) -> usize {
        let longest = self.secrets.iter().map(Vec::len).max().unwrap_or(0);
        (1..longest.min(buf.len() + 1))
            .rev()
            .find(|&n| {
                let tail = buf.get(buf.len() - n..).unwrap_or_default();
                self.secrets
                    .iter()
                    .any(|s| s.len() > n && s.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secret: &str, chunks: &[&str]) -> (String, usize) {
        let mut s = Scrubber::new(&[SecretString::new(secret.into())]);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c.as_bytes()));
        }
        out.extend(s.finish());
        (String::from_utf8(out).unwrap(), s.replaced)
    }

    #[test]
    fn finds_secrets_across_chunks() {
        let want = "key=[redacted by mandate]; again [redacted by mandate].";
        for chunks in [
            &["key=s3cr3t-value; again s3cr3t-value."][..],
            &["key=s3cr", "3t-value; again s", "3cr3t-value."],
            &[
                "k",
                "e",
                "y",
                "=",
                "s",
                "3",
                "c",
                "r",
                "3",
                "t",
                "-value; again s3cr3t-valu",
                "e",
                ".",
            ],
        ] {
            assert_eq!(
                run("s3cr3t-value", chunks),
                (want.to_string(), 2),
                "{chunks:?}"
            );
        }
        // A false start is released at the end.
        assert_eq!(run("s3cr3t-value", &["ends with s3cr"]).0, "ends with s3cr");
    }

    #[test]
    fn holds_back_only_what_could_be_a_secret() {
        let mut s = Scrubber::new(&[SecretString::new("abcdef".into())]);
        assert_eq!(s.push(b"xyz"), b"xyz");
        assert_eq!(s.push(b"xyab"), b"xy");
        assert_eq!(s.push(b"cdefz"), b"[redacted by mandate]z");
    }
}
