//! Event ids: Redis stream entry ids (`<ms>-<seq>`), ordered as Redis orders them.

use std::fmt;
use std::str::FromStr;

/// The id of an event: its entry id in the Redis stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// The smallest id, before every event.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let malformed =
            || format!("{text:?} is not an event id (expected <ms>-<seq>, like 1764164400123-0)");
        let (ms, seq) = text.split_once('-').ok_or_else(malformed)?;
        let digits = |part: &str| {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            part.parse::<u64>().map_err(|_| malformed())
        };
        Ok(Self {
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::EventId;

    #[test]
    fn parses_and_orders_like_redis() {
        let a: EventId = "1764164400123-0".parse().unwrap();
        let b: EventId = "1764164400123-1".parse().unwrap();
        let c: EventId = "1764164400124-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1764164400123-0");
        assert!(EventId::ZERO < a);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            " 1-2",
            "1-2 ",
            "+1-2",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }
}
