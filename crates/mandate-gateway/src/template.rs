//! Values that may reference brokered secrets as `${secret:NAME}`, and per-task dynamic
//! credentials as `${cred:NAME}`, resolved only at the moment they are sent upstream.

use serde::Deserialize;

use mandate_broker::Broker;
use mandate_crypto::SecretString;

/// A string with `${secret:NAME}` and `${cred:NAME}` references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Secret(String),
    Cred(String),
}

impl Template {
    /// Parses a template; a malformed or badly named reference is an error.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        loop {
            let secret = rest.find("${secret:");
            let cred = rest.find("${cred:");
            let (at, opener, is_cred) = match (secret, cred) {
                (Some(a), Some(b)) if b < a => (b, "${cred:", true),
                (Some(a), _) => (a, "${secret:", false),
                (None, Some(b)) => (b, "${cred:", true),
                (None, None) => break,
            };
            let (text, tail) = rest.split_at(at);
            if !text.is_empty() {
                parts.push(Part::Text(text.to_string()));
            }
            let tail = tail.get(opener.len()..).unwrap_or("");
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed `{opener}` in `{s}`"))?;
            let name = tail.get(..end).unwrap_or("");
            mandate_broker::check_secret_name(name).map_err(|e| e.to_string())?;
            parts.push(if is_cred {
                Part::Cred(name.to_string())
            } else {
                Part::Secret(name.to_string())
            });
            rest = tail.get(end + 1..).unwrap_or("");
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The secrets referenced.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(n) => Some(n.as_str()),
            Part::Text(_) | Part::Cred(_) => None,
        })
    }

    /// The dynamic credentials referenced.
    pub fn credentials(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Cred(n) => Some(n.as_str()),
            Part::Text(_) | Part::Secret(_) => None,
        })
    }

    /// The value with secrets filled in. A `${cred:…}` reference cannot be resolved without a
    /// task and is an error here (configuration checks refuse it where no task is known).
    pub async fn resolve(&self, broker: &Broker) -> Result<SecretString, String> {
        self.resolve_inner(broker, None, &mut Vec::new()).await
    }

    /// The value with secrets and the task's dynamic credentials filled in (each minted on first
    /// use); `scrub` receives every secret value used, to be removed from what comes back.
    pub async fn resolve_for_task(
        &self,
        broker: &Broker,
        task_id: &str,
        scrub: &mut Vec<SecretString>,
    ) -> Result<SecretString, String> {
        self.resolve_inner(broker, Some(task_id), scrub).await
    }

    async fn resolve_inner(
        &self,
        broker: &Broker,
        task_id: Option<&str>,
        scrub: &mut Vec<SecretString>,
    ) -> Result<SecretString, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Secret(n) => {
                    let v = broker.secret_value(n).await?;
                    out.push_str(v.expose());
                    scrub.push(v);
                }
                Part::Cred(n) => {
                    let task = task_id.ok_or_else(|| {
                        format!("`${{cred:{n}}}` needs a task, and this value is not sent per task")
                    })?;
                    let issued = broker
                        .task_credential(task, n)
                        .await
                        .map_err(|e| format!("credential `{n}`: {e}"))?;
                    let v = issued.primary().ok_or_else(|| {
                        format!(
                            "credential `{n}` is of kind {}, which has no value to send in a header",
                            issued.kind
                        )
                    })?;
                    out.push_str(v.expose());
                    scrub.extend(issued.secret_values());
                }
            }
        }
        Ok(SecretString::new(out))
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Replaces every occurrence of the given secret values in the strings of `v`, so an upstream
/// that echoes what it was given (an environment dump, a header in an error) cannot hand a
/// brokered secret to the agent.
pub fn redact(v: &mut serde_json::Value, secrets: &[SecretString]) -> usize {
    let mut n = 0;
    match v {
        serde_json::Value::String(s) => {
            for secret in secrets {
                let needle = secret.expose();
                if needle.len() >= 4 && s.contains(needle) {
                    *s = s.replace(needle, "[redacted by mandate]");
                    n += 1;
                }
            }
        }
        serde_json::Value::Array(items) => {
            for i in items {
                n += redact(i, secrets);
            }
        }
        serde_json::Value::Object(m) => {
            for (_, i) in m.iter_mut() {
                n += redact(i, secrets);
            }
        }
        _ => {}
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let t = Template::parse("Bearer ${secret:github_token}!").unwrap();
        assert_eq!(t.secrets().collect::<Vec<_>>(), vec!["github_token"]);
        assert!(Template::parse("${secret:bad name}").is_err());
        assert!(Template::parse("${secret:open").is_err());
        assert_eq!(Template::parse("plain").unwrap().secrets().count(), 0);
    }

    #[test]
    fn redacts_everywhere() {
        let mut v = serde_json::json!({"a": "key=s3cr3t-value", "b": ["s3cr3t-value"], "c": 1});
        let n = redact(&mut v, &[SecretString::new("s3cr3t-value".into())]);
        assert_eq!(n, 2);
        assert!(!v.to_string().contains("s3cr3t-value"));
    }
}
