//! Domain types parsed at the edge: once a handler holds one of these, it is valid.
//!
//! Each constructor enforces the rules of `api.md`; the error says what was wrong in
//! words a client can act on, and the caller decides the status code.

use sha2::{Digest, Sha256};
use std::fmt;
use uuid::Uuid;

/// Longest resource id, in bytes of UTF-8.
pub const MAX_RESOURCE_ID_BYTES: usize = 512;
/// Longest agent id, in bytes of UTF-8.
pub const MAX_AGENT_ID_BYTES: usize = 128;

/// The name of a lockable resource: 1 to 512 bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    /// Checks a percent-decoded resource id.
    ///
    /// # Errors
    /// A message naming the broken rule when the id is empty, too long or holds a control
    /// character.
    pub fn parse(raw: String) -> Result<Self, String> {
        check_name("resource id", &raw, MAX_RESOURCE_ID_BYTES)?;
        Ok(Self(raw))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds or asks for a lock: 1 to 128 bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentId(String);

impl AgentId {
    /// Checks an agent id.
    ///
    /// # Errors
    /// A message naming the broken rule when the id is empty, too long or holds a control
    /// character.
    pub fn parse(raw: String) -> Result<Self, String> {
        check_name("agent_id", &raw, MAX_AGENT_ID_BYTES)?;
        Ok(Self(raw))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_name(what: &str, raw: &str, max_bytes: usize) -> Result<(), String> {
    if raw.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if raw.len() > max_bytes {
        return Err(format!(
            "{what} is {} bytes long; at most {max_bytes} bytes of UTF-8 are allowed",
            raw.len()
        ));
    }
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what} must not contain control characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(())
}

/// The secret that proves a client holds a lock: a random UUID v4.
///
/// Redis only ever sees its SHA-256 ([`LockToken::digest`]), so a copy of Redis's data
/// (a dump, a replica, `MONITOR`) cannot be used to release or refresh someone's lock.
#[derive(Clone, PartialEq, Eq)]
pub struct LockToken(Uuid);

impl LockToken {
    /// A new unguessable token (122 random bits from the operating system's generator).
    #[must_use]
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// Parses a token from a `Lock-Token` header value.
    ///
    /// # Errors
    /// A message when the value is not a UUID in its usual hyphenated form.
    pub fn parse(raw: &str) -> Result<Self, String> {
        // Only the form lockd hands out, so a token has exactly one spelling.
        if raw.len() != 36 {
            return Err("Lock-Token must be the token returned by acquire (a UUID)".to_owned());
        }
        Uuid::try_parse(raw)
            .map(Self)
            .map_err(|_| "Lock-Token must be the token returned by acquire (a UUID)".to_owned())
    }

    /// The hex SHA-256 that Redis stores and compares instead of the token.
    #[must_use]
    pub fn digest(&self) -> String {
        let hash = Sha256::digest(self.0.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in hash {
            use fmt::Write;
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }
}

impl fmt::Display for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

impl fmt::Debug for LockToken {
    // Tokens are secrets: keep them out of logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_id_accepts_paths_and_unicode() {
        assert!(ResourceId::parse("file:src/main.py".into()).is_ok());
        assert!(ResourceId::parse("ünïcödé/ファイル".into()).is_ok());
        assert!(ResourceId::parse("x".repeat(512)).is_ok());
    }

    #[test]
    fn resource_id_rejects_empty_long_and_control_characters() {
        assert!(ResourceId::parse(String::new()).is_err());
        assert!(ResourceId::parse("x".repeat(513)).is_err());
        assert!(ResourceId::parse("a\nb".into()).is_err());
        assert!(ResourceId::parse("a\u{7f}b".into()).is_err());
    }

    #[test]
    fn agent_id_limits() {
        assert!(AgentId::parse("agent-7".into()).is_ok());
        assert!(AgentId::parse("a".repeat(128)).is_ok());
        assert!(AgentId::parse("a".repeat(129)).is_err());
        assert!(AgentId::parse(String::new()).is_err());
        assert!(AgentId::parse("tab\there".into()).is_err());
    }

    #[test]
    fn token_round_trips_and_hides_itself() {
        let token = LockToken::generate();
        let text = token.to_string();
        assert_eq!(LockToken::parse(&text).unwrap(), token);
        assert_eq!(format!("{token:?}"), "LockToken(..)");
        assert_eq!(token.digest().len(), 64);
        assert!(!token.digest().contains(&text));
    }

    #[test]
    fn token_parse_is_case_insensitive_but_shape_strict() {
        let token = LockToken::generate();
        let upper = token.to_string().to_uppercase();
        assert_eq!(LockToken::parse(&upper).unwrap().digest(), token.digest());
        assert!(LockToken::parse("not-a-token").is_err());
        assert!(LockToken::parse(&token.to_string().replace('-', "")).is_err());
        assert!(LockToken::parse(&format!("{{{token}}}")).is_err());
    }
}
