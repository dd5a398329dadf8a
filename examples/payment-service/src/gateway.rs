//! A simulated card gateway whose answers are deterministic: the same order always gets
//! the same answer for the same settings, so demos and tests are repeatable.
//!
//! An order is declined when its payment method id starts with `pm-declined`, when its
//! amount is over `decline_over_minor`, or when a hash of (`seed`, order id) falls under
//! `decline_rate`. Each answer takes `latency`. Charges are idempotent by key, as a real
//! gateway's are: charging a key again returns the first answer and charges nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the simulated gateway decides.
#[derive(Clone, Debug, PartialEq)]
pub struct Gateway {
    /// The share of orders declined at random (0 to 1; default 0).
    pub decline_rate: f64,
    /// The seed of that draw (default 7).
    pub seed: u64,
    /// Amounts above this many minor units are declined (default: no limit).
    pub decline_over_minor: Option<i64>,
    /// How long each answer takes (default 20 ms).
    pub latency: Duration,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            decline_rate: 0.0,
            seed: 7,
            decline_over_minor: None,
            latency: Duration::from_millis(20),
        }
    }
}

/// The gateway's answer to a charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Charge {
    /// The money was taken.
    Approved {
        /// The gateway's transaction id.
        gateway_transaction_id: String,
    },
    /// It was not.
    Declined {
        /// Why, as a code (`card-declined`, `amount-over-limit`, `insufficient-funds`).
        code: String,
        /// Why, in words.
        message: String,
    },
}

impl Gateway {
    /// The answer for `order_id` (before the latency): deterministic.
    pub fn decide(&self, order_id: &str, amount_minor: i64, method_id: Option<&str>) -> Charge {
        let decline = |code: &str, message: &str| Charge::Declined {
            code: code.to_owned(),
            message: message.to_owned(),
        };
        if method_id.is_some_and(|m| m.starts_with("pm-declined")) {
            return decline("card-declined", "the issuing bank declined the card");
        }
        if self
            .decline_over_minor
            .is_some_and(|limit| amount_minor > limit)
        {
            return decline("amount-over-limit", "the amount is over the card's limit");
        }
        if draw(self.seed, order_id) < self.decline_rate {
            return decline("insufficient-funds", "the card has insufficient funds");
        }
        Charge::Approved {
            gateway_transaction_id: format!("sim-{:016x}", fnv1a(self.seed, order_id.as_bytes())),
        }
    }
}

/// A number in [0, 1) from (seed, key), the same in every process.
fn draw(seed: u64, key: &str) -> f64 {
    (fnv1a(seed, key.as_bytes()) >> 11) as f64 / (1_u64 << 53) as f64
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix, so close keys spread over the whole range.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::{Charge, Gateway};

    #[test]
    fn answers_are_deterministic_and_the_rate_holds() {
        let gateway = Gateway {
            decline_rate: 0.25,
            ..Gateway::default()
        };
        let declined = (0..4000)
            .filter(|i| {
                matches!(
                    gateway.decide(&format!("ord-{i}"), 100, None),
                    Charge::Declined { .. }
                )
            })
            .count();
        assert!(
            (800..1200).contains(&declined),
            "{declined} of 4000 at 25 %"
        );
        assert_eq!(
            gateway.decide("ord-1", 100, None),
            gateway.decide("ord-1", 100, None)
        );
    }

    #[test]
    fn method_and_amount_rules_decline() {
        let gateway = Gateway {
            decline_over_minor: Some(10_000),
            ..Gateway::default()
        };
        assert!(
            matches!(gateway.decide("o", 100, Some("pm-declined-1")), Charge::Declined { code, .. } if code == "card-declined")
        );
        assert!(
            matches!(gateway.decide("o", 10_001, None), Charge::Declined { code, .. } if code == "amount-over-limit")
        );
        assert!(matches!(
            gateway.decide("o", 10_000, Some("pm-card-1")),
            Charge::Approved { .. }
        ));
    }
}
