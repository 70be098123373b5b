//! Durations as every message prints them: whole milliseconds under a second ("850ms"), whole
//! seconds as such ("5s"), else seconds with one decimal ("1.5s").

use std::time::Duration;

/// A duration as messages and tables print it.
pub fn human(d: Duration) -> String {
    human_ms(millis(d))
}

/// [`human`] of a count of milliseconds (as JSON documents carry durations).
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// Whole milliseconds, saturating (JSON's `duration_ms`).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_format() {
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(5000), "5s");
        assert_eq!(human_ms(1500), "1.5s");
        assert_eq!(human(Duration::from_millis(61_250)), "61.2s");
    }
}
