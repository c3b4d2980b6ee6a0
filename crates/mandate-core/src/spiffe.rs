//! SPIFFE IDs (the SPIFFE-ID standard): `spiffe://<trust domain>/<path>`, as an X.509-SVID
//! carries in its one URI SAN.

/// Longest SPIFFE ID, in bytes.
pub const MAX_SPIFFE_ID: usize = 2048;

/// A checked SPIFFE ID of a workload (a non-root path, as a leaf SVID must have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    uri: String,
    domain_end: usize,
}

impl SpiffeId {
    /// Checks `uri`: scheme `spiffe`, a trust domain of lowercase letters, digits, `.`, `-`,
    /// `_`, and a path of non-empty segments of letters, digits, `.`, `-`, `_` (not `.` or `..`);
    /// no port, user, query or fragment.
    pub fn parse(uri: &str) -> Result<Self, String> {
        if uri.len() > MAX_SPIFFE_ID {
            return Err(format!("a SPIFFE ID is at most {MAX_SPIFFE_ID} bytes"));
        }
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or("a SPIFFE ID starts with `spiffe://`")?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or("a workload's SPIFFE ID has a path after its trust domain")?;
        let domain_ok = !domain.is_empty()
            && domain.len() <= 255
            && domain
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'));
        if !domain_ok {
            return Err(format!(
                "trust domain `{}` must be lowercase letters, digits, `.`, `-` or `_`",
                domain.chars().take(80).collect::<String>()
            ));
        }
        for seg in path.split('/') {
            let ok = !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !ok {
                return Err(
                    "each path segment of a SPIFFE ID is letters, digits, `.`, `-` or `_` (not empty, `.` or `..`)"
                        .into(),
                );
            }
        }
        Ok(SpiffeId {
            uri: uri.to_string(),
            domain_end: "spiffe://".len() + domain.len(),
        })
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// Its trust domain.
    pub fn trust_domain(&self) -> &str {
        self.uri
            .get("spiffe://".len()..self.domain_end)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::SpiffeId;

    #[test]
    fn ids_are_checked() {
        let id = SpiffeId::parse("spiffe://example.org/agent/x").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.as_str(), "spiffe://example.org/agent/x");
        for bad in [
            "",
            "https://example.org/agent",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://Example.org/a",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "spiffe:///a",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        assert!(SpiffeId::parse(&format!("spiffe://e.org/{}", "a".repeat(2100))).is_err());
    }
}
