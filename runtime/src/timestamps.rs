//! `google.protobuf.Timestamp` ↔ `chrono` instants, for every service's API layer.

use chrono::{DateTime, Utc};
use kopilka_proto::wkt::Timestamp;

/// An instant as a proto timestamp.
pub fn to_proto(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A proto timestamp as an instant; `None` when it is out of range or its nanos are not
/// 0 to 999 999 999.
pub fn from_proto(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    DateTime::from_timestamp(t.seconds, nanos)
}

/// Like [`from_proto`], truncated to microseconds: what both databases keep, so an instant read
/// from a request compares equal to the same instant read back from storage.
pub fn from_proto_micros(t: &Timestamp) -> Option<DateTime<Utc>> {
    from_proto(t).map(|d| DateTime::from_timestamp_micros(d.timestamp_micros()).unwrap_or(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_nanos() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(from_proto(&to_proto(t)), Some(t));
        assert_eq!(
            from_proto(&Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
        assert_eq!(
            from_proto(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            }),
            None
        );
    }
}
