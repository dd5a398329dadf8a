//! What the service would send for each event: the recipient, the channel, the subject and
//! the text (Spanish, as the marketplace's customers read it). Pure code.

use a4co_events::catalog::notification::Channel;
use a4co_events::catalog::order::CancellationReason;
use a4co_events::{AnyMessage, Envelope, Money};

/// Who an event's message is for, before the customer is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A known address or id, as is.
    Direct(String),
    /// The customer who placed this order (looked up from `order.created`).
    CustomerOf(String),
}

/// A message to send, before the recipient is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// Who.
    pub recipient: Recipient,
    /// The template (`order-confirmed`, ...), also `NotificationSent.type`.
    pub template: &'static str,
    /// How.
    pub channel: Channel,
    /// The subject line.
    pub subject: String,
    /// The text.
    pub body: String,
    /// The order it is about, if any.
    pub order_id: Option<String>,
}

fn amount(money: Money) -> String {
    let minor = money.amount_minor;
    format!(
        "{},{:02} {}",
        minor / 100,
        minor % 100,
        money.currency.as_str()
    )
}

fn reason(reason: CancellationReason) -> &'static str {
    match reason {
        CancellationReason::CustomerRequest => "lo pediste tú",
        CancellationReason::PaymentFailed => "el pago no se pudo completar",
        CancellationReason::InventoryUnavailable => "no queda stock de algún producto",
        CancellationReason::ArtisanUnavailable => "el artesano no puede atenderlo",
        CancellationReason::PaymentTimeout => "el pago no llegó a tiempo",
    }
}

/// The message for `event`, or `None` for events that tell a person nothing (a stock
/// reservation, a status change already told by its own event).
pub fn draft(event: &Envelope<AnyMessage>) -> Option<Draft> {
    let order = event.aggregate_id.clone();
    let to_customer = |template, channel, subject: String, body: String| {
        Some(Draft {
            recipient: Recipient::CustomerOf(order.clone()),
            template,
            channel,
            subject,
            body,
            order_id: Some(order.clone()),
        })
    };
    match &event.data {
        AnyMessage::OrderCreated(m) => Some(Draft {
            recipient: Recipient::Direct(m.customer_id.clone()),
            template: "order-received",
            channel: Channel::Email,
            subject: format!("Hemos recibido tu pedido {order}"),
            body: format!(
                "{} artículo(s), total {}. Te avisaremos cuando esté confirmado.",
                m.items.iter().map(|i| i.quantity).sum::<u32>(),
                amount(m.total_amount)
            ),
            order_id: Some(order),
        }),
        AnyMessage::OrderConfirmed(m) => to_customer(
            "order-confirmed",
            Channel::Email,
            format!("Tu pedido {order} está confirmado"),
            format!(
                "Pago {}. Entrega estimada: {}.",
                m.payment_reference,
                m.estimated_delivery_date.format("%d/%m/%Y")
            ),
        ),
        AnyMessage::OrderCancelled(m) => to_customer(
            "order-cancelled",
            Channel::Email,
            format!("Tu pedido {order} se ha cancelado"),
            format!(
                "Motivo: {}.{}",
                reason(m.reason),
                m.refund_amount
                    .map(|r| format!(" Te devolvemos {}.", amount(r)))
                    .unwrap_or_default()
            ),
        ),
        AnyMessage::OrderShipped(m) => to_customer(
            "order-shipped",
            Channel::Sms,
            format!("Tu pedido {order} va de camino"),
            format!("{} lo lleva; seguimiento {}.", m.carrier, m.tracking_number),
        ),
        AnyMessage::OrderDelivered(m) => to_customer(
            "order-delivered",
            Channel::Email,
            format!("Tu pedido {order} se ha entregado"),
            format!(
                "Lo recibió {}. ¡Gracias por comprar a los artesanos de Jaén!",
                m.recipient_name
            ),
        ),
        AnyMessage::PaymentSucceeded(m) => Some(Draft {
            recipient: Recipient::CustomerOf(m.order_id.clone()),
            template: "payment-received",
            channel: Channel::Email,
            subject: format!("Pago recibido para el pedido {}", m.order_id),
            body: format!(
                "Hemos cobrado {} (referencia {}).",
                amount(m.amount),
                m.transaction_id
            ),
            order_id: Some(m.order_id.clone()),
        }),
        AnyMessage::PaymentFailed(m) => Some(Draft {
            recipient: Recipient::CustomerOf(m.order_id.clone()),
            template: "payment-failed",
            channel: Channel::Sms,
            subject: format!("No pudimos cobrar el pedido {}", m.order_id),
            body: format!(
                "{} ({}). Revisa tu método de pago.",
                m.error_message, m.error_code
            ),
            order_id: Some(m.order_id.clone()),
        }),
        AnyMessage::RefundProcessed(m) => Some(Draft {
            recipient: Recipient::CustomerOf(m.order_id.clone()),
            template: "refund-processed",
            channel: Channel::Email,
            subject: format!("Reembolso del pedido {}", m.order_id),
            body: format!(
                "Te devolvemos {}; lo verás en {} días hábiles.",
                amount(m.refund_amount),
                m.processing_time
            ),
            order_id: Some(m.order_id.clone()),
        }),
        AnyMessage::UserRegistered(m) => Some(Draft {
            recipient: Recipient::Direct(m.email.clone()),
            template: "welcome",
            channel: Channel::Email,
            subject: format!("Bienvenido/a, {}", m.first_name),
            body: "Ya puedes comprar a los artesanos de Jaén.".to_owned(),
            order_id: None,
        }),
        AnyMessage::LowStockWarning(m) => Some(Draft {
            recipient: Recipient::Direct(m.artisan_id.clone()),
            template: "low-stock",
            channel: Channel::Email,
            subject: format!("Quedan {} unidades de {}", m.current_stock, m.product_name),
            body: format!(
                "Por debajo del aviso ({}). Al ritmo actual se agotará el {}.",
                m.warning_threshold,
                m.estimated_stockout_date.format("%d/%m/%Y")
            ),
            order_id: None,
        }),
        AnyMessage::CartAbandoned(m) => Some(Draft {
            recipient: Recipient::Direct(m.customer_id.clone()),
            template: "cart-reminder",
            channel: Channel::Push,
            subject: "Tu carrito te espera".to_owned(),
            body: format!("{} producto(s), {}.", m.items.len(), amount(m.cart_total)),
            order_id: None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use a4co_events::catalog::inventory::StockReserved;
    use a4co_events::catalog::order::{OrderCancelled, OrderCreated};
    use a4co_events::{Envelope, Message, Money};

    use super::{Recipient, draft};

    #[test]
    fn orders_are_told_to_their_customer() {
        let created = Envelope::new("order-service", "ord-1", OrderCreated::example()).into_any();
        let d = draft(&created).unwrap_or_else(|| panic!("no draft"));
        assert_eq!(d.recipient, Recipient::Direct("user-4711".into()));
        assert!(d.body.contains("59,00 EUR"), "{}", d.body);
        let mut cancelled = OrderCancelled::example();
        cancelled.refund_amount = Some(Money::eur(1250));
        let d = draft(&Envelope::new("order-service", "ord-1", cancelled).into_any())
            .unwrap_or_else(|| panic!("no draft"));
        assert_eq!(d.recipient, Recipient::CustomerOf("ord-1".into()));
        assert!(
            d.body.contains("el pago no se pudo completar") && d.body.contains("12,50 EUR"),
            "{}",
            d.body
        );
        assert!(
            draft(&Envelope::new("inventory-service", "p", StockReserved::example()).into_any())
                .is_none()
        );
    }
}
