//! UTC timestamps without a date crate: default snapshot names and display of creation times.

use std::time::{SystemTime, UNIX_EPOCH};

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Utc {
    /// Breaks down seconds since the Unix epoch.
    pub fn from_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        Utc {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// Seconds since the Unix epoch.
    pub fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// `20261126T034350Z` (ISO 8601 basic format): the default snapshot name.
    pub fn compact(self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `2026-11-26 03:43:50Z`: for listings.
    pub fn display(self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Parses `2026-11-26 03:43:50 +0000` (the format of btrfs-progs' `Creation time:`) into
/// seconds since the Unix epoch.
pub fn parse_btrfs_time(text: &str) -> Option<i64> {
    let mut parts = text.split_whitespace();
    let date = parts.next()?;
    let time = parts.next()?;
    let zone = parts.next().unwrap_or("+0000");
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let mut t = time.split(':');
    let hour: u32 = t.next()?.parse().ok()?;
    let minute: u32 = t.next()?.parse().ok()?;
    let second: u32 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let offset =
        sign * (digits[..2].parse::<i64>().ok()? * 3600 + digits[2..].parse::<i64>().ok()? * 60);
    let local = Utc {
        year,
        month,
        day,
        hour,
        minute,
        second,
    }
    .to_unix();
    Some(local - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_unix_when_known_instants_then_matches_calendar() {
        assert_eq!(Utc::from_unix(0).display(), "1970-01-01 00:00:00Z");
        // 1596950323 is the first creation time in the captured zfs output (zfs_parse tests);
        // its snapshot is named zfs-auto-snap_weekly-2020-08-09-0518 (UTC).
        assert_eq!(
            Utc::from_unix(1_596_950_323).display(),
            "2020-08-09 05:18:43Z"
        );
        assert_eq!(Utc::from_unix(951_782_400).compact(), "20000229T000000Z");
    }

    #[test]
    fn to_unix_when_roundtripped_then_identity() {
        for secs in [0, 1, 86_399, 951_782_400, 1_798_256_630, 4_102_444_800] {
            assert_eq!(Utc::from_unix(secs).to_unix(), secs);
        }
    }

    #[test]
    fn parse_btrfs_time_when_offset_then_converted_to_utc() {
        // Line seen from `btrfs subvolume show` (btrfs-progs v6.2) on this machine.
        assert_eq!(
            parse_btrfs_time("2026-11-26 03:43:50 +0000").map(|s| Utc::from_unix(s).display()),
            Some("2026-11-26 03:43:50Z".to_string())
        );
        assert_eq!(
            parse_btrfs_time("2026-11-26 05:43:50 +0200"),
            parse_btrfs_time("2026-11-26 03:43:50 +0000")
        );
    }

    #[test]
    fn parse_btrfs_time_when_garbage_then_none() {
        for s in [
            "",
            "-",
            "2026-13-01 00:00:00 +0000",
            "2026-11-26 03:43",
            "2026-11-26 03:43:50 UTC",
        ] {
            assert_eq!(parse_btrfs_time(s), None, "{s:?}");
        }
    }
}
