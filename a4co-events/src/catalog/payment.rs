#![doc = include_str!("docs/payment.md")]

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::example_time;
use crate::message::message;
use crate::money::Money;

/// How a customer pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentMethod {
    /// Credit or debit card.
    Card,
    /// Bank transfer.
    Transfer,
    /// PayPal.
    Paypal,
    /// Bizum (Spanish mobile payments).
    Bizum,
    /// Cash on delivery or pickup.
    Cash,
}

/// `payment.initiated`: a charge for an order was sent to a gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentInitiated {
    /// The order being paid.
    pub order_id: String,
    /// The customer paying.
    pub customer_id: String,
    /// The amount charged.
    pub amount: Money,
    /// How.
    pub payment_method: PaymentMethod,
    /// The gateway used (`redsys`, `stripe`, ...).
    pub payment_gateway: String,
    /// Our reference at the gateway.
    pub merchant_reference: String,
    /// When the charge was sent.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub initiated_at: DateTime<Utc>,
}

message!(PaymentInitiated {
    type_name: "payment.initiated",
    version: 1,
    kind: Event,
    context: Payment,
    aggregate: "payment",
    publishers: ["payment-service"],
    subscribers: &["order-service", "analytics-service", "fraud-service"],
    example: PaymentInitiated {
        order_id: "ord-1001".into(),
        customer_id: "user-4711".into(),
        amount: Money::eur(5900),
        payment_method: PaymentMethod::Card,
        payment_gateway: "redsys".into(),
        merchant_reference: "a4co-ord-1001".into(),
        initiated_at: example_time(60),
    },
});

/// `payment.succeeded`: the charge went through. Also stands for `PaymentCompleted` (DDD
/// document) and `PaymentProcessed` (integration and executive summaries).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSucceeded {
    /// The order paid.
    pub order_id: String,
    /// Our transaction id.
    pub transaction_id: String,
    /// The gateway's transaction id.
    pub gateway_transaction_id: String,
    /// The amount charged.
    pub amount: Money,
    /// When the gateway processed it.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub processed_at: DateTime<Utc>,
    /// The gateway used.
    pub payment_gateway: String,
    /// What the gateway kept.
    pub gateway_fee: Money,
    /// What the marketplace keeps.
    pub marketplace_fee: Money,
    /// What the artisans receive: the amount after both fees.
    pub artisan_amount: Money,
}

message!(PaymentSucceeded {
    type_name: "payment.succeeded",
    version: 1,
    kind: Event,
    context: Payment,
    aggregate: "payment",
    publishers: ["payment-service"],
    subscribers: &[
        "order-service",
        "inventory-service",
        "loyalty-service",
        "notification-service",
        "accounting-service"
    ],
    example: PaymentSucceeded {
        order_id: "ord-1001".into(),
        transaction_id: "txn-20260115-0001".into(),
        gateway_transaction_id: "rds-88231".into(),
        amount: Money::eur(5900),
        processed_at: example_time(75),
        payment_gateway: "redsys".into(),
        gateway_fee: Money::eur(18),
        marketplace_fee: Money::eur(590),
        artisan_amount: Money::eur(5292),
    },
});

/// `payment.failed`: the charge did not go through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    /// The order that was not paid.
    pub order_id: String,
    /// Our error code (`card-declined`, `insufficient-funds`, ...).
    pub error_code: String,
    /// The error in words (the DDD document's `reason`).
    pub error_message: String,
    /// The gateway's own code, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_error_code: Option<String>,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// When it failed.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub failed_at: DateTime<Utc>,
    /// Which attempt this was, from 1.
    #[schemars(range(min = 1))]
    pub attempt_number: u32,
    /// How many attempts are allowed.
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
}

message!(PaymentFailed {
    type_name: "payment.failed",
    version: 1,
    kind: Event,
    context: Payment,
    aggregate: "payment",
    publishers: ["payment-service"],
    subscribers: &[
        "order-service",
        "inventory-service",
        "notification-service",
        "analytics-service"
    ],
    example: PaymentFailed {
        order_id: "ord-1003".into(),
        error_code: "card-declined".into(),
        error_message: "The issuing bank declined the card".into(),
        gateway_error_code: Some("0190".into()),
        retryable: false,
        failed_at: example_time(75),
        attempt_number: 1,
        max_attempts: 3,
    },
});

/// How money goes back to a customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RefundMethod {
    /// To the original payment method.
    Original,
    /// As marketplace credit.
    StoreCredit,
    /// By hand, outside the gateway.
    Manual,
}

/// `payment.refund_processed`: money went back to a customer. Also stands for
/// `PaymentRefunded` (DDD document) and `RefundIssued` (executive summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundProcessed {
    /// The payment refunded.
    pub original_payment_id: String,
    /// Its order.
    pub order_id: String,
    /// How much went back.
    pub refund_amount: Money,
    /// Why, in words.
    pub refund_reason: String,
    /// When the gateway processed it.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub processed_at: DateTime<Utc>,
    /// The gateway's refund id.
    pub gateway_refund_id: String,
    /// How.
    pub refund_method: RefundMethod,
    /// Business days until the customer sees the money.
    pub processing_time: u32,
}

message!(RefundProcessed {
    type_name: "payment.refund_processed",
    version: 1,
    kind: Event,
    context: Payment,
    aggregate: "refund",
    publishers: ["payment-service"],
    subscribers: &[
        "order-service",
        "notification-service",
        "analytics-service",
        "accounting-service"
    ],
    example: RefundProcessed {
        original_payment_id: "pay-9f2c".into(),
        order_id: "ord-1001".into(),
        refund_amount: Money::eur(5900),
        refund_reason: "order cancelled by customer".into(),
        processed_at: example_time(86_400),
        gateway_refund_id: "rds-rf-1204".into(),
        refund_method: RefundMethod::Original,
        processing_time: 3,
    },
});

/// `payment.cmd.process`: the fulfillment saga asks for an order to be charged. Answered by
/// `payment.succeeded` or `payment.failed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessPayment {
    /// The order to charge.
    pub order_id: String,
    /// The customer to charge.
    pub customer_id: String,
    /// How much.
    pub amount: Money,
    /// How.
    pub payment_method: PaymentMethod,
    /// The customer's stored payment method (an id of the user service), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method_id: Option<String>,
    /// After this instant the charge must not be attempted: the payment service answers
    /// `payment.failed` (`payment-expired`) instead. The saga stops waiting then, so a
    /// command delivered late never charges an order already given up on. Absent: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(
        serialize_with = "crate::time::opt_utc",
        deserialize_with = "crate::time::de_opt_utc"
    )]
    pub expires_at: Option<DateTime<Utc>>,
}

message!(ProcessPayment {
    type_name: "payment.cmd.process",
    version: 1,
    kind: Command,
    context: Payment,
    aggregate: "payment",
    publishers: ["order-service"],
    subscribers: &["payment-service"],
    example: ProcessPayment {
        order_id: "ord-1001".into(),
        customer_id: "user-4711".into(),
        amount: Money::eur(5900),
        payment_method: PaymentMethod::Card,
        payment_method_id: Some("pm-card-0042".into()),
        expires_at: Some(example_time(360)),
    },
});

/// `payment.cmd.refund`: the fulfillment saga asks for a payment to be refunded (its
/// compensation for `process`). Answered by `payment.refund_processed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundPayment {
    /// The payment to refund.
    pub payment_id: String,
    /// Its order.
    pub order_id: String,
    /// How much.
    pub amount: Money,
    /// Why, in words.
    pub reason: String,
}

message!(RefundPayment {
    type_name: "payment.cmd.refund",
    version: 1,
    kind: Command,
    context: Payment,
    aggregate: "payment",
    publishers: ["order-service"],
    subscribers: &["payment-service"],
    example: RefundPayment {
        payment_id: "pay-9f2c".into(),
        order_id: "ord-1001".into(),
        amount: Money::eur(5900),
        reason: "order cancelled after payment".into(),
    },
});
