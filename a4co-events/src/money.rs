//! Money: integer minor units with an ISO 4217 currency, never a float.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code: three upper-case ASCII letters (`EUR`).
///
/// Deserializing anything else fails, so a payload with `"eur"` or `"€"` is rejected at the
/// boundary instead of being summed with euros later.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl JsonSchema for Currency {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Currency".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "ISO 4217 currency code: three upper-case letters.",
            "pattern": "^[A-Z]{3}$",
            "examples": ["EUR"]
        })
    }
}

impl Currency {
    /// Euro, the marketplace's home currency.
    pub const EUR: Currency = Currency(*b"EUR");

    /// Parses a code, checking its shape (three upper-case ASCII letters).
    ///
    /// # Errors
    /// A message naming the rule when `code` has another shape.
    pub fn new(code: &str) -> Result<Self, InvalidCurrency> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(InvalidCurrency(code.chars().take(16).collect())),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // The constructor only admits ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// How many digits the minor unit has: 2 for EUR (cents), 0 for JPY, 3 for KWD.
    pub fn minor_digits(&self) -> u32 {
        match &self.0 {
            b"BIF" | b"CLP" | b"DJF" | b"GNF" | b"ISK" | b"JPY" | b"KMF" | b"KRW" | b"PYG"
            | b"RWF" | b"UGX" | b"VND" | b"VUV" | b"XAF" | b"XOF" | b"XPF" => 0,
            b"BHD" | b"IQD" | b"JOD" | b"KWD" | b"LYD" | b"OMR" | b"TND" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidCurrency;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::new(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

/// A currency code of the wrong shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid currency code {0:?}: expected three upper-case letters (ISO 4217), e.g. \"EUR\"")]
pub struct InvalidCurrency(String);

/// An amount of money in integer minor units (cents for EUR) with its currency.
///
/// On the wire: `{"amountMinor": 12999, "currency": "EUR"}` for 129.99 EUR. Amounts are
/// never negative; the event says which way money moves (a refund carries a positive amount).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Money {
    /// The amount in the currency's minor unit (cents for EUR, yen for JPY).
    #[schemars(range(min = 0))]
    pub amount_minor: i64,
    /// The ISO 4217 currency code.
    pub currency: Currency,
}

impl Money {
    /// An amount in minor units.
    pub const fn new(amount_minor: i64, currency: Currency) -> Self {
        Money {
            amount_minor,
            currency,
        }
    }

    /// An amount of euro cents.
    pub const fn eur(cents: i64) -> Self {
        Money::new(cents, Currency::EUR)
    }

    /// Adds two amounts of the same currency; `None` on a currency mismatch or overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        (self.currency == other.currency)
            .then(|| self.amount_minor.checked_add(other.amount_minor))
            .flatten()
            .map(|amount| Money::new(amount, self.currency))
    }

    /// Multiplies by a quantity; `None` on overflow.
    pub fn checked_mul(self, quantity: u32) -> Option<Money> {
        self.amount_minor
            .checked_mul(i64::from(quantity))
            .map(|amount| Money::new(amount, self.currency))
    }
}

impl fmt::Display for Money {
    /// `129.99 EUR`, `1500 JPY`, `1.250 KWD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.currency.minor_digits();
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let abs = self.amount_minor.unsigned_abs();
        if digits == 0 {
            return write!(f, "{sign}{abs} {}", self.currency);
        }
        let scale = 10u64.pow(digits);
        let width = digits as usize;
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / scale,
            abs % scale,
            self.currency
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_rejects_codes_of_the_wrong_shape() {
        for bad in ["eur", "EU", "EURO", "€", "", "E1R"] {
            assert!(Currency::new(bad).is_err(), "{bad:?} accepted");
            let json = format!("{{\"amountMinor\":1,\"currency\":{bad:?}}}");
            assert!(
                serde_json::from_str::<Money>(&json).is_err(),
                "{json} accepted"
            );
        }
        assert_eq!(
            Currency::new("USD").map(|c| c.to_string()),
            Ok("USD".to_owned())
        );
    }

    #[test]
    fn money_displays_in_the_currency_minor_unit() {
        assert_eq!(Money::eur(12999).to_string(), "129.99 EUR");
        assert_eq!(Money::eur(5).to_string(), "0.05 EUR");
        assert_eq!(
            Money::new(1500, Currency::new("JPY").unwrap()).to_string(),
            "1500 JPY"
        );
        assert_eq!(
            Money::new(1250, Currency::new("KWD").unwrap()).to_string(),
            "1.250 KWD"
        );
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_overflow() {
        let usd = Money::new(100, Currency::new("USD").unwrap());
        assert_eq!(Money::eur(100).checked_add(usd), None);
        assert_eq!(
            Money::eur(100).checked_add(Money::eur(23)),
            Some(Money::eur(123))
        );
        assert_eq!(Money::eur(i64::MAX).checked_add(Money::eur(1)), None);
        assert_eq!(Money::eur(250).checked_mul(3), Some(Money::eur(750)));
    }

    #[test]
    fn money_is_integer_minor_units_on_the_wire() {
        let json = serde_json::to_string(&Money::eur(12999)).unwrap();
        assert_eq!(json, r#"{"amountMinor":12999,"currency":"EUR"}"#);
        assert!(
            serde_json::from_str::<Money>(r#"{"amountMinor":129.99,"currency":"EUR"}"#).is_err()
        );
    }
}
