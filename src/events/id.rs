//! Event ids: Redis stream entry ids (`<ms>-<seq>`), ordered as Redis orders them, and
//! cursors: where a client stands in every partition's stream.

use std::fmt;
use std::str::FromStr;

/// The id of an event: its entry id in the Redis stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// Where a client stands in the event history: per partition, the id of the last event it
/// has been given (or that came before it connected). It is what an SSE `id:` carries
/// and what `Last-Event-ID` sends back.
///
/// With one partition it reads as the event id itself (`1764164400123-0`); with several,
/// as each partition's id in partition order, joined by `.`, with `0` for a partition
/// whose stream it has not reached (`0.1764164400123-0.1764164400125-3`). `0-0` (and,
/// with several partitions, `0`) is the start of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Box<[EventId]>);

impl Cursor {
    /// Before every event of `partitions` partitions.
    #[must_use]
    pub fn start(partitions: usize) -> Self {
        Self(vec![EventId::ZERO; partitions.max(1)].into_boxed_slice())
    }

    /// Parses a cursor of `partitions` partitions.
    ///
    /// # Errors
    /// A message for the client when the text is not such a cursor.
    pub fn parse(text: &str, partitions: usize) -> Result<Self, String> {
        if partitions <= 1 {
            return Ok(Self(Box::new([text.parse()?])));
        }
        // The start of the history, however many partitions there are.
        if text == "0" || text == "0-0" {
            return Ok(Self::start(partitions));
        }
        let ids = text
            .split('.')
            .map(|part| match part {
                "0" => Ok(EventId::ZERO),
                id => id.parse(),
            })
            .collect::<Result<Box<[EventId]>, String>>()?;
        if ids.len() != partitions {
            return Err(format!(
                "{text:?} is not an event id of this deployment: it has {} partitions, \
                 and an id names a position in each, joined by '.'",
                partitions
            ));
        }
        Ok(Self(ids))
    }

    /// The position in `partition`.
    #[must_use]
    pub fn get(&self, partition: usize) -> EventId {
        self.0[partition]
    }

    /// Moves the position in `partition`.
    pub fn set(&mut self, partition: usize, id: EventId) {
        self.0[partition] = id;
    }

    /// Whether this cursor is at or past `other` in every partition.
    #[must_use]
    pub fn covers(&self, other: &Self) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a >= b)
    }

    /// Takes, in each partition, the later of this position and `other`'s.
    pub fn advance_to(&mut self, other: &Self) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine = (*mine).max(*theirs);
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [id] = &self.0[..] {
            return write!(f, "{id}");
        }
        for (index, id) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(".")?;
            }
            if *id == EventId::ZERO {
                f.write_str("0")?;
            } else {
                write!(f, "{id}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Cursor, EventId};

    #[test]
    fn a_single_partition_cursor_is_the_event_id() {
        let cursor = Cursor::parse("1764164400123-4", 1).unwrap();
        assert_eq!(cursor.to_string(), "1764164400123-4");
        assert_eq!(cursor.get(0), "1764164400123-4".parse().unwrap());
        assert!(Cursor::parse("0", 1).is_err());
    }

    #[test]
    fn cursors_round_trip_and_advance_per_partition() {
        let mut a = Cursor::parse("0.5-1.7-0", 3).unwrap();
        assert_eq!(a.to_string(), "0.5-1.7-0");
        assert_eq!(a.get(0), EventId::ZERO);
        let b = Cursor::parse("2-0.5-0.8-0", 3).unwrap();
        assert!(!a.covers(&b) && !b.covers(&a));
        a.advance_to(&b);
        assert_eq!(a.to_string(), "2-0.5-1.8-0");
        assert!(a.covers(&b));
        a.set(1, "9-9".parse().unwrap());
        assert_eq!(a.to_string(), "2-0.9-9.8-0");
        assert_eq!(Cursor::start(3).to_string(), "0.0.0");
    }

    #[test]
    fn cursors_of_another_shape_are_refused() {
        assert_eq!(Cursor::parse("0", 3).unwrap(), Cursor::start(3));
        assert_eq!(Cursor::parse("0-0", 3).unwrap(), Cursor::start(3));
        for bad in ["", "5-1", "0.0", "0.0.0.0", "0..0", "0.x.0", "0.5-1.7-0."] {
            assert!(Cursor::parse(bad, 3).is_err(), "{bad:?}");
        }
    }

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
