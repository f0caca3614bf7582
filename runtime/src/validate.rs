//! Checking a request's fields, the one way every service does it: each problem is a field
//! violation naming the caller's field path, and the whole request is refused with all of them
//! (INVALID_ARGUMENT, `BadRequest` + `ErrorInfo`) before anything changes.
//!
//! The `ErrorInfo.reason` is VALIDATION_FAILED unless a violation has a reason of its own that
//! errors.proto documents (LIMIT_EXCEEDED with `field` and `limit`, TIMESTAMP_IN_FUTURE with
//! `field`, PAGE_TOKEN_INVALID …); the first such violation names the reason.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kopilka_proto::wkt::Timestamp;
use rust_decimal::Decimal;
use tonic::Status;

use crate::decimal::{self, Sign};

/// How far in the future a request's timestamp may be (register and server clocks drift): the
/// one skew of every service's TIMESTAMP_IN_FUTURE.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The reason of a request with violations and none more specific.
pub const VALIDATION_FAILED: &str = "VALIDATION_FAILED";

/// Field violations collected over one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    fields: Vec<(String, String)>,
    /// The first specific reason and its metadata.
    reason: Option<(&'static str, Vec<(&'static str, String)>)>,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// A request refused for one field.
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Self::new();
        v.add(field, description);
        v
    }

    /// One violation under VALIDATION_FAILED.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.fields.push((field.into(), description.into()));
    }

    /// One violation with a reason of its own and its metadata (the first reason wins).
    pub fn add_with_reason(
        &mut self,
        field: impl Into<String>,
        description: impl Into<String>,
        reason: &'static str,
        metadata: Vec<(&'static str, String)>,
    ) {
        self.add(field, description);
        self.reason.get_or_insert((reason, metadata));
    }

    /// LIMIT_EXCEEDED: `field` holds more than `limit` (`what`: "lines", "characters" …).
    pub fn limit(&mut self, field: &str, limit: impl Display, what: &str) {
        let limit = limit.to_string();
        self.add_with_reason(
            field,
            format!("at most {limit} {what}"),
            "LIMIT_EXCEEDED",
            vec![("field", field.to_owned()), ("limit", limit)],
        );
    }

    /// At most `max` entries in a repeated field.
    pub fn count(&mut self, field: &str, len: usize, max: usize) {
        if len > max {
            self.limit(field, max, "entries");
        }
    }

    /// An id of 1 to `max` printable ASCII characters (`required`), or empty.
    pub fn id(&mut self, field: &str, value: &str, max: usize, required: bool) {
        if value.is_empty() {
            if required {
                self.add(field, format!("required: 1 to {max} characters"));
            }
        } else if value.len() > max {
            self.limit(field, max, "characters");
        } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
            self.add(field, "must be printable ASCII characters without spaces");
        }
    }

    /// Text of at most `max` characters without control characters; non-blank when `required`.
    pub fn text(&mut self, field: &str, value: &str, max: usize, required: bool) {
        if required && value.trim().is_empty() {
            self.add(field, format!("required: 1 to {max} characters"));
        } else if value.chars().count() > max {
            self.limit(field, max, "characters");
        } else if value.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
        }
    }

    /// A known value of a proto enum (unknown numbers are refused, not ignored).
    pub fn enumeration<E: TryFrom<i32>>(&mut self, field: &str, value: i32) {
        if E::try_from(value).is_err() {
            self.add(field, format!("unknown enum value {value}"));
        }
    }

    /// A valid timestamp at most `skew` ahead of `now` (TIMESTAMP_IN_FUTURE beyond it); the
    /// instant it names.
    pub fn not_future(
        &mut self,
        field: &str,
        value: Option<&Timestamp>,
        now: DateTime<Utc>,
        skew: Duration,
    ) -> Option<DateTime<Utc>> {
        let at = self.timestamp(field, value?)?;
        if at > now + skew {
            self.add_with_reason(
                field,
                format!(
                    "more than {} minutes in the future (check the clock)",
                    skew.as_secs() / 60
                ),
                "TIMESTAMP_IN_FUTURE",
                vec![("field", field.to_owned())],
            );
        }
        Some(at)
    }

    /// A valid timestamp.
    pub fn timestamp(&mut self, field: &str, value: &Timestamp) -> Option<DateTime<Utc>> {
        let at = crate::timestamps::from_proto(value);
        if at.is_none() {
            self.add(field, "not a valid timestamp");
        }
        at
    }

    /// A decimal string of at most `scale` decimals with `sign`; empty is `None` (a violation
    /// when `required`).
    pub fn decimal(
        &mut self,
        field: &str,
        value: &str,
        scale: u32,
        sign: Sign,
        required: bool,
    ) -> Option<Decimal> {
        if value.is_empty() {
            if required {
                self.add(field, "required: a decimal string such as 12.5");
            }
            return None;
        }
        match decimal::parse(value, scale, sign) {
            Ok(d) => Some(d),
            Err(why) => {
                self.add(field, why);
                None
            }
        }
    }

    /// A page size: 0 asks for `default`, above `max` is LIMIT_EXCEEDED; the size to use.
    pub fn page_size(&mut self, field: &str, value: i32, default: u32, max: u32) -> u32 {
        match u32::try_from(value) {
            Err(_) => {
                self.add(
                    field,
                    format!("must be 0 (the default, {default}) to {max}"),
                );
                default
            }
            Ok(0) => default,
            Ok(n) if n > max => {
                self.limit(field, max, "entries per page");
                max
            }
            Ok(n) => n,
        }
    }

    /// PAGE_TOKEN_INVALID: the token is not one this call returned.
    pub fn page_token_invalid(&mut self, field: &str) {
        self.add_with_reason(
            field,
            "not a token returned by this call",
            "PAGE_TOKEN_INVALID",
            Vec::new(),
        );
    }

    /// Takes over another check's violations (a shared sub-check).
    pub fn extend(&mut self, other: Violations) {
        self.fields.extend(other.fields);
        if let Some(reason) = other.reason {
            self.reason.get_or_insert(reason);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The `(field path, description)` pairs.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// The `ErrorInfo.reason` these violations are reported under.
    pub fn reason(&self) -> &'static str {
        self.reason.as_ref().map_or(VALIDATION_FAILED, |(r, _)| r)
    }

    /// `Ok` without violations, else the violations as an error.
    pub fn check(self) -> Result<(), Violations> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl From<Vec<(String, String)>> for Violations {
    fn from(fields: Vec<(String, String)>) -> Self {
        Violations {
            fields,
            reason: None,
        }
    }
}

impl Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (field, description)) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{field}: {description}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

impl From<Violations> for Status {
    fn from(v: Violations) -> Self {
        let (reason, metadata) = v.reason.unwrap_or((VALIDATION_FAILED, Vec::new()));
        let metadata: HashMap<String, String> = metadata
            .into_iter()
            .map(|(k, val)| (k.to_owned(), val))
            .collect();
        crate::status::bad_request(v.fields, reason, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;
    use tonic_types::StatusExt;

    fn info(status: &Status) -> (String, HashMap<String, String>) {
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.domain, crate::status::ERROR_DOMAIN);
        (info.reason, info.metadata)
    }

    #[test]
    fn plain_violations_are_validation_failed() {
        let mut v = Violations::new();
        v.add("lines[0].quantity", "must be positive");
        v.id("request_id", "", 128, true);
        let status: Status = v.into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            info(&status),
            ("VALIDATION_FAILED".to_owned(), HashMap::new())
        );
        assert_eq!(
            crate::status::field_violations_of(&status),
            vec![
                (
                    "lines[0].quantity".to_owned(),
                    "must be positive".to_owned()
                ),
                (
                    "request_id".to_owned(),
                    "required: 1 to 128 characters".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn the_first_specific_reason_names_the_error() {
        let mut v = Violations::new();
        v.add("buyer", "bad");
        v.count("lines", 501, 500);
        v.text("lines[0].name", &"x".repeat(300), 256, false);
        let status: Status = v.into();
        assert_eq!(
            info(&status),
            (
                "LIMIT_EXCEEDED".to_owned(),
                HashMap::from([
                    ("field".to_owned(), "lines".to_owned()),
                    ("limit".to_owned(), "500".to_owned())
                ])
            )
        );
        assert_eq!(crate::status::field_violations_of(&status).len(), 3);
    }

    #[test]
    fn a_future_timestamp_names_its_field() {
        let now = Utc::now();
        let mut v = Violations::new();
        let ahead = crate::timestamps::to_proto(now + chrono::Duration::minutes(6));
        v.not_future("occurred_at", Some(&ahead), now, Duration::from_secs(300));
        let status: Status = v.into();
        assert_eq!(
            info(&status),
            (
                "TIMESTAMP_IN_FUTURE".to_owned(),
                HashMap::from([("field".to_owned(), "occurred_at".to_owned())])
            )
        );
        let mut ok = Violations::new();
        let soon = crate::timestamps::to_proto(now + chrono::Duration::minutes(4));
        ok.not_future("occurred_at", Some(&soon), now, Duration::from_secs(300));
        assert!(ok.check().is_ok());
    }

    #[test]
    fn page_sizes() {
        let mut v = Violations::new();
        assert_eq!(v.page_size("page_size", 0, 50, 100), 50);
        assert_eq!(v.page_size("page_size", 7, 50, 100), 7);
        assert!(v.is_empty());
        assert_eq!(v.page_size("page_size", 101, 50, 100), 100);
        assert_eq!(v.reason(), "LIMIT_EXCEEDED");
        v.page_size("page_size", -1, 50, 100);
        assert_eq!(v.fields().len(), 2);
    }

    #[test]
    fn ids_and_text() {
        let mut v = Violations::new();
        v.id("a", "ok-1", 8, true);
        v.id("b", "", 8, false);
        v.text("c", "fine", 8, true);
        assert!(v.is_empty());
        v.id("d", "has space", 16, true);
        v.id("e", "123456789", 8, true);
        v.text("f", "  ", 8, true);
        v.text("g", "a\u{7}b", 8, false);
        let fields: Vec<&str> = v.fields().iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["d", "e", "f", "g"]);
        assert_eq!(v.reason(), "LIMIT_EXCEEDED");
    }
}
