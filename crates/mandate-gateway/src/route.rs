//! Routes of the HTTP reverse proxy, matched on the raw request target, and the upstream URL
//! built from what was matched, so the proxy forwards exactly what it decided.
//!
//! A request path is split on `/` as sent. Each segment must be made of RFC 3986 `pchar`s
//! (unreserved characters, sub-delimiters but `;`, `:`, `@`, and `%HH` escapes); after
//! percent-decoding it must be valid UTF-8 and must not be empty, `.` or `..`, nor contain `/`,
//! `\`, `?`, `#`, `;`, `%` (a double encoding), a control character, or a character that some
//! servers fold into one of those (fullwidth and other look-alike slashes and dots, invisible
//! format characters). Literal segments of a route match the raw segment byte for byte; a
//! `{param}` segment takes the decoded value. The query is split into `key=value` pairs, decoded
//! (`+` is a space), and refused when a key repeats.
//!
//! The upstream URL is the API's base URL with each decoded segment and each query pair
//! percent-encoded anew (everything but `A-Z a-z 0-9 - . _ ~`), so no character of the request
//! can change how the upstream splits the path or the query.

use url::Url;

/// Longest raw path accepted below the API's prefix.
pub const MAX_PATH: usize = 2048;
/// Longest raw query accepted.
pub const MAX_QUERY: usize = 4096;
/// Most query parameters.
pub const MAX_QUERY_PARAMS: usize = 64;
/// Most path segments.
pub const MAX_SEGMENTS: usize = 32;

/// Why a request target was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The target is malformed or hostile: refused with 400 before any route is looked at.
    #[error("{0}")]
    Malformed(String),
    /// Well-formed, but no route of the API matches: refused with 403.
    #[error("no route matches")]
    NoRoute,
}

fn malformed(msg: impl Into<String>) -> Refusal {
    Refusal::Malformed(msg.into())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

/// A route's path pattern, e.g. `/repos/{owner}/{repo}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
    trailing_slash: bool,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

impl Pattern {
    /// Parses a pattern: `/` alone, or `/`-separated segments, each a literal of unreserved
    /// characters (`A-Z a-z 0-9 - . _ ~`, not `.` or `..`) or a `{name}` parameter; a trailing `/`
    /// is part of the pattern.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let rest = pattern
            .strip_prefix('/')
            .ok_or_else(|| format!("route path `{pattern}` must start with `/`"))?;
        if rest.is_empty() {
            return Ok(Pattern {
                parts: Vec::new(),
                trailing_slash: false,
            });
        }
        let (rest, trailing_slash) = match rest.strip_suffix('/') {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let mut parts = Vec::new();
        for seg in rest.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok {
                    return Err(format!(
                        "route path `{pattern}`: parameter `{name}` must be lowercase letters, digits or `_`"
                    ));
                }
                if parts.iter().any(|p| p == &Part::Param(name.to_string())) {
                    return Err(format!(
                        "route path `{pattern}`: parameter `{name}` appears twice"
                    ));
                }
                parts.push(Part::Param(name.to_string()));
            } else {
                if seg.is_empty() || seg == "." || seg == ".." || !seg.bytes().all(unreserved) {
                    return Err(format!(
                        "route path `{pattern}`: segment `{seg}` must be made of letters, digits, `-`, `.`, `_` or `~` (and not be empty, `.` or `..`)"
                    ));
                }
                parts.push(Part::Literal(seg.to_string()));
            }
            if parts.len() > MAX_SEGMENTS {
                return Err(format!(
                    "route path `{pattern}` has more than {MAX_SEGMENTS} segments"
                ));
            }
        }
        Ok(Pattern {
            parts,
            trailing_slash,
        })
    }

    /// The names of its parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Matches a parsed path: the parameters' decoded values, in order, or `None`.
    pub fn matches(&self, path: &Path) -> Option<Vec<(String, String)>> {
        if path.segments.len() != self.parts.len() || path.trailing_slash != self.trailing_slash {
            return None;
        }
        let mut params = Vec::new();
        for (part, seg) in self.parts.iter().zip(&path.segments) {
            match part {
                Part::Literal(l) => {
                    if &seg.raw != l {
                        return None;
                    }
                }
                Part::Param(name) => params.push((name.clone(), seg.decoded.clone())),
            }
        }
        Some(params)
    }
}

/// One segment of a request path: as sent, and decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// As sent.
    pub raw: String,
    /// Percent-decoded.
    pub decoded: String,
}

/// A request path, checked and split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// Its segments.
    pub segments: Vec<Segment>,
    /// Whether it ends with `/` (after at least one segment).
    pub trailing_slash: bool,
}

/// Characters some servers fold into `/`, `\` or `.`, and invisible format characters.
fn look_alike(c: char) -> bool {
    matches!(
        c,
        '\u{2215}' // division slash
            | '\u{2044}' // fraction slash
            | '\u{FF0F}' // fullwidth solidus
            | '\u{29F8}' // big solidus
            | '\u{FF3C}' // fullwidth reverse solidus
            | '\u{29F5}' // reverse solidus operator
            | '\u{FE68}' // small reverse solidus
            | '\u{2216}' // set minus
            | '\u{FF0E}' // fullwidth full stop
            | '\u{2024}' // one dot leader
            | '\u{FE52}' // small full stop
            | '\u{3002}' // ideographic full stop
            | '\u{FF1F}' // fullwidth question mark
            | '\u{FF03}' // fullwidth number sign
            | '\u{FF1B}' // fullwidth semicolon
            | '\u{FF05}' // fullwidth percent sign
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `raw`, with `+` as a space when `plus` is set; malformed escapes are refused.
fn decode(raw: &str, plus: bool) -> Result<String, Refusal> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let v = bytes
                    .get(i + 1)
                    .copied()
                    .and_then(hex)
                    .zip(bytes.get(i + 2).copied().and_then(hex))
                    .ok_or_else(|| malformed("a `%` escape must be followed by two hex digits"))?;
                out.push(v.0 * 16 + v.1);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| malformed("a decoded value is not valid UTF-8 (overlong or broken sequence)"))
}

/// Whether a raw path byte may appear unescaped: RFC 3986 `pchar` without `;`.
fn path_byte(b: u8) -> bool {
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'%'
        )
}

/// Checks and splits a raw path (below the API's prefix, starting with `/`).
pub fn parse_path(raw: &str) -> Result<Path, Refusal> {
    if raw.len() > MAX_PATH {
        return Err(malformed(format!(
            "the path is longer than {MAX_PATH} bytes"
        )));
    }
    let rest = raw
        .strip_prefix('/')
        .ok_or_else(|| malformed("the path must start with `/`"))?;
    if rest.is_empty() {
        return Ok(Path {
            segments: Vec::new(),
            trailing_slash: false,
        });
    }
    let (rest, trailing_slash) = match rest.strip_suffix('/') {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let mut segments = Vec::new();
    for raw_seg in rest.split('/') {
        if segments.len() >= MAX_SEGMENTS {
            return Err(malformed(format!(
                "the path has more than {MAX_SEGMENTS} segments"
            )));
        }
        if raw_seg.is_empty() {
            return Err(malformed("the path has an empty segment (`//`)"));
        }
        if let Some(b) = raw_seg.bytes().find(|b| !path_byte(*b)) {
            return Err(malformed(if b == b';' {
                "`;` (a matrix parameter) is refused in paths".to_string()
            } else if b == b'\\' {
                "`\\` is refused in paths".to_string()
            } else {
                format!("the byte 0x{b:02x} must be percent-encoded in a path")
            }));
        }
        let decoded = decode(raw_seg, false)?;
        if decoded == "." || decoded == ".." {
            return Err(malformed("dot segments (`.`, `..`, `%2e`) are refused"));
        }
        if let Some(c) = decoded.chars().find(|c| {
            matches!(c, '/' | '\\' | '?' | '#' | ';' | '%') || c.is_control() || look_alike(*c)
        }) {
            return Err(malformed(format!(
                "a path segment decodes to a refused character (U+{:04X}): encoded `/`, `\\`, `?`, `#`, `;`, `%`, control and look-alike characters are refused",
                u32::from(c)
            )));
        }
        segments.push(Segment {
            raw: raw_seg.to_string(),
            decoded,
        });
    }
    Ok(Path {
        segments,
        trailing_slash,
    })
}

/// Checks and splits a raw query into decoded `(key, value)` pairs; a repeated key is refused
/// (servers disagree on which copy counts).
pub fn parse_query(raw: &str) -> Result<Vec<(String, String)>, Refusal> {
    if raw.len() > MAX_QUERY {
        return Err(malformed(format!(
            "the query is longer than {MAX_QUERY} bytes"
        )));
    }
    if let Some(b) = raw.bytes().find(|b| !(b.is_ascii_graphic() && *b != b'#')) {
        return Err(malformed(format!(
            "the byte 0x{b:02x} must be percent-encoded in a query"
        )));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        if out.len() >= MAX_QUERY_PARAMS {
            return Err(malformed(format!(
                "the query has more than {MAX_QUERY_PARAMS} parameters"
            )));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k, true)?, decode(v, true)?);
        if k.is_empty() {
            return Err(malformed("a query parameter has no name"));
        }
        if k.chars().chain(v.chars()).any(|c| c.is_control()) {
            return Err(malformed(
                "a query parameter decodes to a control character",
            ));
        }
        if out.iter().any(|(seen, _)| seen == &k) {
            let shown: String = k.chars().take(64).collect();
            return Err(malformed(format!(
                "the query parameter `{shown}` is repeated"
            )));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a routed request goes: the URL, and its path and query as the upstream receives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The full URL.
    pub url: Url,
    /// Its path, exactly as sent.
    pub path: String,
    /// Its query, exactly as sent (`None`: no query).
    pub query: Option<String>,
}

/// Checks an API's base URL: http(s), no query, no fragment, no credentials.
pub fn parse_base(base: &str) -> Result<Url, String> {
    let url = Url::parse(base).map_err(|e| format!("`{base}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!("`{base}` must be an http(s) URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{base}` must have no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{base}` must not carry credentials: give them as headers with secrets"
        ));
    }
    Ok(url)
}

/// The upstream URL for `path` and `query` below `base`: the base path, then each decoded
/// segment encoded anew, then the pairs encoded anew. Refused if the URL library would read
/// the result as anything else.
pub fn upstream_url(
    base: &Url,
    path: &Path,
    query: &[(String, String)],
) -> Result<Upstream, Refusal> {
    let mut p = base.path().trim_end_matches('/').to_string();
    for seg in &path.segments {
        p.push('/');
        p.push_str(&encode(&seg.decoded));
    }
    if path.trailing_slash || path.segments.is_empty() {
        p.push('/');
    }
    let q = (!query.is_empty()).then(|| {
        query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let mut url = base.clone();
    url.set_path(&p);
    url.set_query(q.as_deref());
    if url.path() != p || url.query() != q.as_deref() {
        return Err(malformed("the upstream URL could not be built exactly"));
    }
    Ok(Upstream {
        url,
        path: p,
        query: q,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(pattern: &str, raw: &str) -> Result<Option<Vec<(String, String)>>, Refusal> {
        Ok(Pattern::parse(pattern).unwrap().matches(&parse_path(raw)?))
    }

    #[test]
    fn patterns() {
        let p = routed("/repos/{owner}/{repo}", "/repos/acme/web")
            .unwrap()
            .unwrap();
        assert_eq!(
            p,
            vec![
                ("owner".to_string(), "acme".to_string()),
                ("repo".to_string(), "web".to_string())
            ]
        );
        assert_eq!(
            routed("/repos/{owner}/{repo}", "/repos/acme").unwrap(),
            None
        );
        assert_eq!(routed("/repos/{owner}", "/users/acme").unwrap(), None);
        assert_eq!(routed("/items/", "/items").unwrap(), None);
        assert!(routed("/items/", "/items/").unwrap().is_some());
        assert!(routed("/", "/").unwrap().is_some());
        // Literals match the raw segment: an encoded literal is another path.
        assert_eq!(routed("/tickets/{id}", "/%74ickets/1").unwrap(), None);
        for bad in ["repos", "/a//b", "/{Owner}", "/{a}/{a}", "/a/../b", "/a b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "/tickets/..%5C..%5Cadmin%5Csecret",
            "/tickets/..\\..\\admin",
            "/tickets/..",
            "/tickets/%2e%2e",
            "/tickets/%2E",
            "/tickets/1%3Fadmin=true%26x=1",
            "/tickets/%00",
            "/tickets/1%2Fadmin",
            "/tickets/1%23x",
            "/tickets/1;admin",
            "/tickets/..;",
            "/tickets//1",
            "/tickets/%252e%252e",
            "/tickets/%c0%ae%c0%ae",
            "/tickets/%ef%bc%8fadmin",
            "/tickets/1%0d%0aHost:%20evil",
            "/tickets/%zz",
            "/tickets/1 2",
            "/tickets/\u{e9}",
        ] {
            assert!(
                matches!(parse_path(bad), Err(Refusal::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query("a=1&b=x+y&c=%2B&d").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "+".into()),
                ("d".into(), "".into())
            ]
        );
        assert!(parse_query("a=1&a=2").is_err());
        assert!(parse_query("a=%00").is_err());
        assert!(parse_query("=1").is_err());
        assert!(parse_query("a=1#x").is_err());
    }

    #[test]
    fn urls_are_built_from_encoded_segments() {
        let base = parse_base("http://127.0.0.1:9/base").unwrap();
        let path = parse_path("/tickets/a%20b~c").unwrap();
        let up = upstream_url(&base, &path, &[("q".into(), "x&y=z".into())]).unwrap();
        assert_eq!(up.path, "/base/tickets/a%20b~c");
        assert_eq!(up.query.as_deref(), Some("q=x%26y%3Dz"));
        assert_eq!(
            up.url.as_str(),
            "http://127.0.0.1:9/base/tickets/a%20b~c?q=x%26y%3Dz"
        );
        let up = upstream_url(
            &parse_base("http://h/").unwrap(),
            &parse_path("/").unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(up.path, "/");
        assert!(parse_base("http://u:p@h/").is_err());
        assert!(parse_base("http://h/?x=1").is_err());
        assert!(parse_base("ftp://h/").is_err());
    }
}
