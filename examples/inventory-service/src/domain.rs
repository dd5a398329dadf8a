//! A product's stock: units on hand, reservations held for orders, and the rules that keep
//! stock from going negative or being reserved twice. Pure code: the handlers load a
//! [`Product`], call one of these, and save it with compare-and-swap.
//!
//! What an order did with each product is kept apart, in its [`OrderHolds`]: a product's
//! record stays the size of its open reservations, however many orders it served.

use std::collections::BTreeMap;

use a4co_events::Money;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Units held for one order until it is confirmed, released, or the hold lapses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// Its id (`res-<order>-<product>`: one per order and product).
    pub reservation_id: String,
    /// Units held.
    pub quantity: u32,
    /// When the hold lapses, unless it is pinned.
    pub expires_at: DateTime<Utc>,
    /// The order is paid: the hold no longer lapses; it ends by the order's confirmation
    /// (commit) or cancellation (release).
    #[serde(default)]
    pub pinned: bool,
}

impl Reservation {
    /// Whether the hold has lapsed at `now`.
    pub fn lapsed(&self, now: DateTime<Utc>) -> bool {
        !self.pinned && self.expires_at <= now
    }
}

/// A product's stock record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// The product.
    pub product_id: String,
    /// Its name.
    pub name: String,
    /// The artisan who makes it.
    pub artisan_id: String,
    /// Its category.
    pub category: String,
    /// The price of one unit.
    pub unit_price: Money,
    /// Units in the workshop, reserved or not.
    pub on_hand: u32,
    /// Holds by order id.
    pub reservations: BTreeMap<String, Reservation>,
    /// Under this many available units, a `LowStockWarning` goes out.
    pub low_stock_threshold: u32,
    /// When stock was last replenished.
    pub last_restock: Option<DateTime<Utc>>,
    /// Units sold (reservations committed) since `tracking_since`.
    pub sold: u32,
    /// Since when sales are counted.
    pub tracking_since: DateTime<Utc>,
}

/// The products an order asked to hold, and those whose hold is over (released or
/// committed): a late redelivery of a reserve command for those must not hold again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderHolds {
    /// Products asked for.
    pub products: Vec<String>,
    /// Products whose hold is over.
    pub closed: Vec<String>,
    /// Holds that lapsed (released by the sweep), by product: a confirmation that finds
    /// them announces the lapse again, so the saga can give the order up.
    #[serde(default)]
    pub lapsed: BTreeMap<String, Reservation>,
}

impl OrderHolds {
    /// Whether the hold on `product` is over.
    pub fn is_closed(&self, product: &str) -> bool {
        self.closed.iter().any(|p| p == product)
    }
}

/// What a reserve command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Units are now held.
    New(Reservation),
    /// The order holds them already (a redelivered command).
    Again(Reservation),
    /// Not enough units available.
    Insufficient {
        /// Units available.
        available: u32,
    },
}

/// A removal larger than the units not reserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insufficient {
    /// Units that could be removed.
    pub removable: u32,
}

impl Product {
    /// A product with no stock and no description yet (name, artisan and category empty:
    /// the service fills them in from the details it is given).
    pub fn new(product_id: impl Into<String>, unit_price: Money, now: DateTime<Utc>) -> Self {
        Product {
            product_id: product_id.into(),
            name: String::new(),
            artisan_id: String::new(),
            category: String::new(),
            unit_price,
            on_hand: 0,
            reservations: BTreeMap::new(),
            low_stock_threshold: 5,
            last_restock: None,
            sold: 0,
            tracking_since: now,
        }
    }

    /// Units held by reservations.
    pub fn reserved(&self) -> u32 {
        self.reservations.values().map(|r| r.quantity).sum()
    }

    /// Units others can still reserve.
    pub fn available(&self) -> u32 {
        self.on_hand.saturating_sub(self.reserved())
    }

    /// Holds `quantity` units for `order_id` until `expires_at`; once per order.
    pub fn reserve(
        &mut self,
        order_id: &str,
        quantity: u32,
        expires_at: DateTime<Utc>,
    ) -> Reserved {
        if let Some(held) = self.reservations.get(order_id) {
            return Reserved::Again(held.clone());
        }
        let available = self.available();
        if quantity == 0 || quantity > available {
            return Reserved::Insufficient { available };
        }
        let reservation = Reservation {
            reservation_id: format!("res-{order_id}-{}", self.product_id),
            quantity,
            expires_at,
            pinned: false,
        };
        self.reservations
            .insert(order_id.to_owned(), reservation.clone());
        Reserved::New(reservation)
    }

    /// Gives the order's held units back; `None` when it holds none.
    pub fn release(&mut self, order_id: &str) -> Option<Reservation> {
        self.reservations.remove(order_id)
    }

    /// The order is confirmed: its held units leave the stock for good.
    pub fn commit(&mut self, order_id: &str) -> Option<Reservation> {
        let committed = self.reservations.remove(order_id)?;
        self.on_hand = self.on_hand.saturating_sub(committed.quantity);
        self.sold = self.sold.saturating_add(committed.quantity);
        Some(committed)
    }

    /// Orders whose hold lapsed at `now` (pinned holds never do).
    pub fn expired(&self, now: DateTime<Utc>) -> Vec<String> {
        self.reservations
            .iter()
            .filter(|(_, r)| r.lapsed(now))
            .map(|(order, _)| order.clone())
            .collect()
    }

    /// Pins the order's hold (the order is paid); `false` when there is none to pin or it
    /// is pinned already.
    pub fn pin(&mut self, order_id: &str) -> bool {
        match self.reservations.get_mut(order_id) {
            Some(held) if !held.pinned => {
                held.pinned = true;
                true
            }
            _ => false,
        }
    }

    /// Adds (or, negative, removes) units on hand. Reserved units cannot be removed.
    ///
    /// # Errors
    /// [`Insufficient`] when removing more than the units not reserved.
    pub fn adjust(&mut self, delta: i64, now: DateTime<Utc>) -> Result<u32, Insufficient> {
        let removable = self.available();
        let next = i64::from(self.on_hand) + delta;
        if delta < 0 && delta.unsigned_abs() > u64::from(removable) {
            return Err(Insufficient { removable });
        }
        let previous = self.on_hand;
        self.on_hand = u32::try_from(next).unwrap_or(u32::MAX);
        if delta > 0 {
            self.last_restock = Some(now);
        }
        Ok(previous)
    }

    /// Units sold per day since tracking began (at least one day counted).
    pub fn daily_sales(&self, now: DateTime<Utc>) -> f64 {
        let days = (now - self.tracking_since).num_seconds().max(86_400) as f64 / 86_400.0;
        f64::from(self.sold) / days
    }
}

#[cfg(test)]
mod tests {
    use a4co_events::Money;
    use chrono::{Duration, Utc};

    use super::{Product, Reserved};

    fn bowl(on_hand: u32) -> Product {
        let mut p = Product::new("bowl", Money::eur(3400), Utc::now());
        p.on_hand = on_hand;
        p
    }

    #[test]
    fn a_reservation_is_made_once_per_order() {
        let later = Utc::now() + Duration::minutes(30);
        let mut p = bowl(3);
        assert!(matches!(p.reserve("o1", 2, later), Reserved::New(_)));
        assert!(matches!(p.reserve("o1", 2, later), Reserved::Again(_)));
        assert_eq!(p.available(), 1);
        assert_eq!(
            p.reserve("o2", 2, later),
            Reserved::Insufficient { available: 1 }
        );
        assert!(p.release("o1").is_some());
        assert_eq!(p.release("o1"), None);
        assert_eq!(p.available(), 3);
    }

    #[test]
    fn committing_takes_units_out_for_good() {
        let mut p = bowl(3);
        p.reserve("o1", 2, Utc::now());
        assert_eq!(p.commit("o1").map(|r| r.quantity), Some(2));
        assert_eq!((p.on_hand, p.available(), p.sold), (1, 1, 2));
        assert_eq!(p.commit("o1"), None);
    }

    #[test]
    fn reserved_units_cannot_be_adjusted_away() {
        let mut p = bowl(3);
        p.reserve("o1", 2, Utc::now());
        assert_eq!(p.adjust(-2, Utc::now()).map_err(|e| e.removable), Err(1));
        assert_eq!(p.adjust(-1, Utc::now()), Ok(3));
        assert_eq!(p.adjust(10, Utc::now()), Ok(2));
        assert_eq!(p.on_hand, 12);
    }

    #[test]
    fn lapsed_holds_are_listed_and_pinned_ones_never_lapse() {
        let now = Utc::now();
        let mut p = bowl(3);
        p.reserve("old", 1, now - Duration::seconds(1));
        p.reserve("new", 1, now + Duration::minutes(5));
        assert_eq!(p.expired(now), vec!["old".to_owned()]);
        assert!(p.pin("old"));
        assert!(!p.pin("old"), "pinned once");
        assert!(!p.pin("none"), "nothing to pin");
        assert!(p.expired(now + Duration::days(30)) == vec!["new".to_owned()]);
    }
}
