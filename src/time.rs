//! Timestamps as the API shows them: RFC 3339, UTC, with milliseconds.
//!
//! Every time lockd reports comes from Redis's clock as Unix milliseconds (invariant 6);
//! this module only formats them. The Lua prelude formats event times with the same
//! algorithm, and the integration tests check that the two agree.

use serde::{Serialize, Serializer};

/// A point in time as Unix milliseconds on Redis's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// Formats as `2026-11-26T13:40:00.123Z`.
    #[must_use]
    pub fn to_rfc3339(self) -> String {
        let ms = self.0;
        let secs = ms.div_euclid(1000);
        let milli = ms.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        )
    }
}

impl Serialize for UnixMillis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

/// Proleptic Gregorian date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::UnixMillis;

    #[test]
    fn formats_known_instants() {
        assert_eq!(UnixMillis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            UnixMillis(1_764_164_400_123).to_rfc3339(),
            "2025-11-26T13:40:00.123Z"
        );
        // Leap day, end of a leap year, and the turn of a century that is not a leap year.
        assert_eq!(
            UnixMillis(1_709_164_800_000).to_rfc3339(),
            "2024-02-29T00:00:00.000Z"
        );
        assert_eq!(
            UnixMillis(1_735_689_599_999).to_rfc3339(),
            "2024-12-31T23:59:59.999Z"
        );
        assert_eq!(
            UnixMillis(4_107_542_400_000).to_rfc3339(),
            "2100-03-01T00:00:00.000Z"
        );
    }
}
