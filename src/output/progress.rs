//! Progress on stderr: bars and spinners (drawn only on a terminal and without --quiet), the
//! fleet's message, and rates rounded for humans.

use super::Output;

impl Output {
    /// A progress bar on stderr, drawn only when stderr is a terminal and not --quiet.
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        if !self.stderr_tty || self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} {rate} eta {eta}",
        ) {
            // indicatif's {per_sec} prints rates like "51.3538/s": round them.
            let style = style.with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate(state.per_sec()));
                },
            );
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        pb
    }

    /// A spinner on stderr, drawn only when stderr is a terminal and not --quiet (waiting for
    /// something with no known length, such as an agent coming online).
    pub fn spinner(&self, what: &str) -> indicatif::ProgressBar {
        if !self.stderr_tty || self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        let pb =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            pb.set_style(style);
        }
        pb.set_message(what.to_string());
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    }
}

/// The progress bar's message over a fleet (backfill run and rollback): tenants finished
/// without an error, with one, and still running.
pub fn fleet_progress(done: usize, failed: usize, in_flight: usize) -> String {
    format!("done {done} · failed {failed} · in flight {in_flight}")
}

/// A progress rate for humans: "51/s", "3.2/s", "0.25/s".
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "-/s".to_string()
    } else if per_sec >= 10.0 {
        format!("{}/s", per_sec.round() as u64)
    } else if per_sec >= 1.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{per_sec:.2}/s")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn rates_are_rounded() {
        assert_eq!(super::rate(51.3538), "51/s");
        assert_eq!(super::rate(3.21), "3.2/s");
        assert_eq!(super::rate(0.254), "0.25/s");
        assert_eq!(super::rate(0.0), "-/s");
    }
}
