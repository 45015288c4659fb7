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
        hex(&Sha256::digest(self.0.as_bytes()))
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

/// Which agent ids an API key may act as: a glob where `*` matches any run of
/// characters (`ci-*`, `*`, `agent-7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPattern {
    glob: String,
}

impl AgentPattern {
    /// Any agent.
    #[must_use]
    pub fn any() -> Self {
        Self { glob: "*".into() }
    }

    /// Parses a glob.
    ///
    /// # Errors
    /// A message when the glob is empty, too long or holds control characters.
    pub fn parse(glob: &str) -> Result<Self, String> {
        check_name("agent pattern", glob, MAX_AGENT_ID_BYTES)?;
        Ok(Self { glob: glob.into() })
    }

    /// Whether every agent matches.
    #[must_use]
    pub fn is_any(&self) -> bool {
        self.glob.chars().all(|c| c == '*')
    }

    /// Whether `agent` matches.
    #[must_use]
    pub fn matches(&self, agent: &str) -> bool {
        glob_match(self.glob.as_bytes(), agent.as_bytes())
    }

    /// The same test as a Lua pattern, anchored, for the scripts (`""` for any agent).
    #[must_use]
    pub fn to_lua(&self) -> String {
        if self.is_any() {
            return String::new();
        }
        let mut pattern = String::from("^");
        for c in self.glob.chars() {
            match c {
                '*' => pattern.push_str(".*"),
                '^' | '$' | '(' | ')' | '%' | '.' | '[' | ']' | '+' | '-' | '?' => {
                    pattern.push('%');
                    pattern.push(c);
                }
                _ => pattern.push(c),
            }
        }
        pattern.push('$');
        pattern
    }
}

impl fmt::Display for AgentPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.glob)
    }
}

/// Glob match with `*` only, iterative with one backtrack point: linear in practice.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some((g, t));
            g += 1;
        } else if g < glob.len() && glob[g] == text[t] {
            g += 1;
            t += 1;
        } else if let Some((star_g, star_t)) = star {
            g = star_g + 1;
            t = star_t + 1;
            star = Some((star_g, star_t + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&b| b == b'*')
}

/// The `Idempotency-Key` of an acquire: 1 to 255 visible ASCII characters.
///
/// Redis stores a digest of it (bound to the agent) to recognise a retry, and the lock
/// token sealed with it, so that the retry can be answered with the same token while
/// Redis never holds the token in a usable form.
#[derive(Clone)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value.
    ///
    /// # Errors
    /// A message when the value is empty, too long or not visible ASCII.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 255 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is ideal)"
                    .to_owned(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    /// Binds the key to the API key that sent it, so that a caller who learns or guesses
    /// someone else's Idempotency-Key still cannot replay their grant and get the token.
    #[must_use]
    pub fn for_caller(self, caller: &str) -> Self {
        Self(format!("{caller}\u{0}{}", self.0))
    }

    /// The digest Redis compares: binds the key to the agent and the resource.
    #[must_use]
    pub fn digest(&self, resource: &ResourceId, agent: &AgentId) -> String {
        hex(&self.derive(b"lockd-idempotency", resource, agent))
    }

    /// Seals `token` (XOR with a key derived from this key, the resource and the agent).
    #[must_use]
    pub fn seal(&self, token: &LockToken, resource: &ResourceId, agent: &AgentId) -> String {
        let pad = self.derive(b"lockd-seal", resource, agent);
        let sealed: Vec<u8> = token
            .0
            .as_bytes()
            .iter()
            .zip(pad.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        hex(&sealed)
    }

    /// Recovers the token sealed by [`IdempotencyKey::seal`].
    ///
    /// # Errors
    /// A message when `sealed` is not what `seal` produces.
    pub fn unseal(
        &self,
        sealed: &str,
        resource: &ResourceId,
        agent: &AgentId,
    ) -> Result<LockToken, String> {
        let pad = self.derive(b"lockd-seal", resource, agent);
        if sealed.len() != 32 {
            return Err("a sealed token has 32 hex digits".into());
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = sealed.get(2 * i..2 * i + 2).ok_or("not hex")?;
            *byte = u8::from_str_radix(pair, 16).map_err(|e| e.to_string())? ^ pad[i];
        }
        Ok(LockToken(Uuid::from_bytes(bytes)))
    }

    fn derive(&self, purpose: &[u8], resource: &ResourceId, agent: &AgentId) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [
            purpose,
            self.0.as_bytes(),
            resource.0.as_bytes(),
            agent.0.as_bytes(),
        ] {
            // Length-prefixed, so no two different inputs run together alike.
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdempotencyKey(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        use fmt::Write;
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_their_lua_patterns_say() {
        let cases = [
            ("*", "anything", true),
            ("ci-*", "ci-7", true),
            ("ci-*", "ci-", true),
            ("ci-*", "dev-ci-7", false),
            ("*-bot", "release-bot", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("agent.7", "agent.7", true),
            ("agent.7", "agentX7", false),
            ("100%", "100%", true),
        ];
        for (glob, agent, expected) in cases {
            let pattern = AgentPattern::parse(glob).unwrap();
            assert_eq!(pattern.matches(agent), expected, "{glob} vs {agent}");
        }
        assert_eq!(AgentPattern::parse("ci-*").unwrap().to_lua(), "^ci%-.*$");
        assert_eq!(
            AgentPattern::parse("agent.7").unwrap().to_lua(),
            "^agent%.7$"
        );
        assert_eq!(AgentPattern::any().to_lua(), "");
    }

    #[test]
    fn idempotency_seals_and_unseals_the_token_for_the_same_request_only() {
        let key = IdempotencyKey::parse("retry-me-42").unwrap();
        let resource = ResourceId::parse("file:a".into()).unwrap();
        let agent = AgentId::parse("agent-a".into()).unwrap();
        let other_agent = AgentId::parse("agent-b".into()).unwrap();
        let token = LockToken::generate();

        let sealed = key.seal(&token, &resource, &agent);
        assert!(!sealed.contains(&token.to_string().replace('-', "")));
        assert_eq!(key.unseal(&sealed, &resource, &agent).unwrap(), token);
        assert_ne!(key.unseal(&sealed, &resource, &other_agent).unwrap(), token);
        assert_ne!(
            key.digest(&resource, &agent),
            key.digest(&resource, &other_agent)
        );
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }

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
