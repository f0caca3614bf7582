//! An exact decimal amount (points or money) stored the best way each engine allows: `NUMERIC`
//! in PostgreSQL, integer ten-thousandths in SQLite (which has no decimal type; integers keep
//! `SUM` and arithmetic in SQL exact). Amounts with more than [`Amount::MAX_SCALE`] decimals
//! cannot be stored.

use rust_decimal::Decimal;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

/// A decimal amount as a database value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(pub Decimal);

impl Amount {
    /// The most decimal places an amount may have.
    pub const MAX_SCALE: u32 = 4;
    const UNITS: i64 = 10_000;

    /// The SQLite representation: the amount in ten-thousandths.
    pub fn to_units(self) -> Result<i64, BoxDynError> {
        let scaled = self.0 * Decimal::from(Self::UNITS);
        if scaled.fract() != Decimal::ZERO {
            return Err(format!("{} has more than {} decimals", self.0, Self::MAX_SCALE).into());
        }
        i64::try_from(scaled).map_err(|_| format!("{} is out of range", self.0).into())
    }

    /// From ten-thousandths.
    pub fn from_units(units: i64) -> Self {
        Amount(Decimal::new(units, Self::MAX_SCALE).normalize())
    }
}

impl From<Decimal> for Amount {
    fn from(d: Decimal) -> Self {
        Amount(d)
    }
}

impl From<Amount> for Decimal {
    fn from(a: Amount) -> Self {
        a.0
    }
}

impl Type<Postgres> for Amount {
    fn type_info() -> PgTypeInfo {
        <Decimal as Type<Postgres>>::type_info()
    }
}

impl<'q> Encode<'q, Postgres> for Amount {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Decimal as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Amount {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Amount(
            <Decimal as Decode<'r, Postgres>>::decode(value)?.normalize(),
        ))
    }
}

impl Type<Sqlite> for Amount {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Amount {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<'q, Sqlite>>::encode(self.to_units()?, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Amount {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Amount::from_units(<i64 as Decode<'r, Sqlite>>::decode(
            value,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn units_round_trip_exactly() {
        for s in ["0", "1", "0.0001", "123.45", "-7.5", "92233720368.5477"] {
            let a = Amount(Decimal::from_str(s).unwrap());
            assert_eq!(
                Amount::from_units(a.to_units().unwrap()),
                Amount(a.0.normalize()),
                "{s}"
            );
        }
    }

    #[test]
    fn too_many_decimals_are_refused() {
        assert!(Amount(Decimal::from_str("0.00001").unwrap())
            .to_units()
            .is_err());
    }
}
