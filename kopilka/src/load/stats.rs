//! Latency histograms (HdrHistogram, microseconds) and error counts per call.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Status;

use crate::cli::code_name;

/// The calls measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Calculate,
    Confirm,
    /// Calculate and Confirm together, from the intended start.
    Checkout,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Calculate => "calculate",
            Call::Confirm => "confirm",
            Call::Checkout => "checkout",
        }
    }
}

/// One call's latencies and errors.
pub struct CallStats {
    pub latency: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Default for CallStats {
    fn default() -> Self {
        CallStats {
            // 1 µs to 10 min, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            errors: BTreeMap::new(),
        }
    }
}

impl CallStats {
    pub fn ok(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros.max(1));
    }

    pub fn error(&mut self, key: String) {
        *self.errors.entry(key).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The quantile in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn summary(&self, call: Call, seconds: f64) -> CallSummary {
        let count = self.latency.len();
        CallSummary {
            call: call.name(),
            count,
            throughput: if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            },
            p50_ms: self.quantile_ms(0.50),
            p95_ms: self.quantile_ms(0.95),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: if count == 0 {
                0.0
            } else {
                self.latency.max() as f64 / 1000.0
            },
            mean_ms: if count == 0 {
                0.0
            } else {
                self.latency.mean() / 1000.0
            },
            errors: self.error_count(),
            errors_by_reason: self.errors.clone(),
        }
    }
}

/// What `--json` prints for one call.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    pub call: &'static str,
    /// Successful calls.
    pub count: u64,
    /// Successful calls per second of the measured period.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub errors: u64,
    /// `"CODE REASON"` → count.
    pub errors_by_reason: BTreeMap<String, u64>,
}

/// Everything measured.
#[derive(Default)]
pub struct Stats {
    pub calculate: CallStats,
    pub confirm: CallStats,
    pub checkout: CallStats,
}

impl Stats {
    pub fn get(&mut self, call: Call) -> &mut CallStats {
        match call {
            Call::Calculate => &mut self.calculate,
            Call::Confirm => &mut self.confirm,
            Call::Checkout => &mut self.checkout,
        }
    }
}

/// `"UNAVAILABLE DEPENDENCY_UNAVAILABLE"`, or the code alone without an ErrorInfo.
pub fn error_key(status: &Status) -> String {
    // tonic reports the client's own deadline as CANCELLED "Timeout expired".
    if status.code() == tonic::Code::Cancelled && status.message().contains("Timeout expired") {
        return "DEADLINE_EXCEEDED (client deadline)".to_owned();
    }
    let code = code_name(status.code());
    match kopilka_runtime::status::reason_of(status) {
        Some(reason) => format!("{code} {reason}"),
        None => code.to_owned(),
    }
}

/// The human table of the summaries.
pub fn render(summaries: &[CallSummary]) -> String {
    let mut table = crate::cli::table::Table::new([
        "call", "ok", "per s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
    ]);
    for s in summaries {
        table.row([
            s.call.to_owned(),
            s.count.to_string(),
            format!("{:.1}", s.throughput),
            format!("{:.2}", s.p50_ms),
            format!("{:.2}", s.p95_ms),
            format!("{:.2}", s.p99_ms),
            format!("{:.2}", s.p999_ms),
            format!("{:.2}", s.max_ms),
            s.errors.to_string(),
        ]);
    }
    let mut out = table.render(0);
    let with_errors: Vec<_> = summaries.iter().filter(|s| s.errors > 0).collect();
    if !with_errors.is_empty() {
        out.push_str("errors:\n");
        for s in with_errors {
            for (reason, n) in &s.errors_by_reason {
                out.push_str(&format!("  {:<10} {reason}: {n}\n", s.call));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_in_ms() {
        let mut s = CallStats::default();
        for ms in 1..=100u64 {
            s.ok(Duration::from_millis(ms));
        }
        s.error("UNAVAILABLE DEPENDENCY_UNAVAILABLE".into());
        let summary = s.summary(Call::Calculate, 10.0);
        assert_eq!(summary.count, 100);
        assert!((summary.throughput - 10.0).abs() < 1e-9);
        assert!((summary.p50_ms - 50.0).abs() < 0.1);
        assert!((summary.p99_ms - 99.0).abs() < 0.1);
        assert!((summary.max_ms - 100.0).abs() < 0.1);
        assert_eq!(summary.errors, 1);
        let text = render(&[summary]);
        assert!(text.contains("calculate"));
        assert!(text.contains("UNAVAILABLE DEPENDENCY_UNAVAILABLE: 1"));
    }
}
