//! The four reference services wired together in one process, on one bus: the in-memory
//! bus by default, NATS JetStream when a URL is given. Their synchronous calls go through
//! a4co-http clients with service tokens, in process (no sockets), exactly as they would
//! over the network.

use a4co_events::service::StartError;
use a4co_events::service::{AnyBus, Records, Workers};
use a4co_http::Client;
use a4co_http::auth::{Issuer, Secret, Verifier};
use inventory_service::Inventory;
use notification_service::Notifications;
use order_service::{Clients, Orders};
use payment_service::{Gateway, Payments};

/// Every service of the marketplace, running.
#[derive(Debug)]
pub struct Marketplace {
    /// The bus they share.
    pub bus: AnyBus,
    /// inventory-service.
    pub inventory: Inventory<AnyBus>,
    /// payment-service.
    pub payments: Payments<AnyBus>,
    /// order-service.
    pub orders: Orders<AnyBus>,
    /// notification-service.
    pub notifications: Notifications<AnyBus>,
    /// The order API, as a customer's client calls it.
    pub api: Client,
    /// A client with every service permission (to seed stock, read notifications).
    pub admin: Admin,
    inventory_records: Records,
    settings: Settings,
    workers: Vec<(&'static str, Workers)>,
}

/// Clients for the services' protected APIs, with an operator's token.
#[derive(Clone, Debug)]
pub struct Admin {
    /// inventory-service.
    pub inventory: Client,
    /// notification-service.
    pub notifications: Client,
}

/// How the marketplace runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The shared secret of the service tokens.
    pub secret: Secret,
    /// The simulated payment gateway.
    pub gateway: Gateway,
    /// The fulfillment saga's timings.
    pub saga: order_service::fulfillment::Settings,
    /// inventory-service's settings.
    pub inventory: inventory_service::Settings,
}

impl Settings {
    /// The services' settings as their variables say (`PAYMENT_LATENCY_MS` and the other
    /// `PAYMENT_*`, the `ORDER_*_SECS` saga timings, `INVENTORY_*`), each service reading its
    /// own as it does when run alone, with `secret`.
    ///
    /// # Errors
    /// A bad value, naming the variable.
    pub fn from_env(secret: Secret, env: &a4co_events::service::Env) -> Result<Self, StartError> {
        Ok(Settings {
            secret,
            gateway: Gateway::from_env(env)?,
            saga: order_service::fulfillment::Settings::from_env(env)?,
            inventory: inventory_service::Settings::from_env(env)?,
        })
    }

    /// Defaults with `secret`: a 20 ms gateway that declines `pm-declined*` methods.
    pub fn new(secret: Secret) -> Self {
        Settings {
            secret,
            gateway: Gateway::default(),
            saga: order_service::fulfillment::Settings::default(),
            inventory: inventory_service::Settings::default(),
        }
    }
}

fn in_process(target: &str, router: axum::Router, issuer: &Issuer) -> Result<Client, StartError> {
    Client::builder(target, format!("http://{target}"))
        .in_process(router)
        .service_auth(issuer.clone())
        .build()
        .map_err(|e| StartError::invalid_config(format!("{target}: {e}")))
}

impl Marketplace {
    /// Starts every service on `bus`: their records in KV buckets on NATS, in memory
    /// otherwise.
    ///
    /// # Errors
    /// A bucket or subscription could not be opened, a bad saga setting.
    pub async fn start(bus: AnyBus, settings: Settings) -> Result<Self, StartError> {
        let open = |bucket: &'static str| {
            let bus = bus.clone();
            async move {
                Records::open(&bus, bucket).await.map_err(|e| {
                    StartError::unavailable(format!("the {bucket} records")).with_source(e)
                })
            }
        };
        let verifier = Verifier::new(&settings.secret);
        let inventory_records = open("inventory").await?;
        let inventory = Inventory::new(
            bus.clone(),
            inventory_records.clone(),
            settings.inventory.clone(),
        );
        let payments = Payments::new(
            bus.clone(),
            open("payments").await?,
            settings.gateway.clone(),
        );
        let notifications = Notifications::new(bus.clone(), open("notifications").await?);
        let order_issuer = Issuer::new(
            settings.secret.clone(),
            order_service::NAME,
            Clients::PERMISSIONS,
        );
        let clients = Clients {
            inventory: in_process(
                "inventory-service",
                inventory.router(&verifier),
                &order_issuer,
            )?,
            payment: in_process("payment-service", payments.router(&verifier), &order_issuer)?,
        };
        let orders = Orders::new(bus.clone(), open("orders").await?, clients);
        let operator = Issuer::new(
            settings.secret.clone(),
            "marketplace-demo",
            ["inventory:read", "inventory:write", "notification:read"],
        );
        let admin = Admin {
            inventory: in_process("inventory-service", inventory.router(&verifier), &operator)?,
            notifications: in_process(
                "notification-service",
                notifications.router(&verifier),
                &operator,
            )?,
        };
        let api = Client::builder("order-service", "http://order-service")
            .in_process(orders.router())
            .retry(a4co_http::retry::never())
            .build()
            .map_err(|e| StartError::invalid_config(format!("order-service: {e}")))?;
        let subscribing = |e: a4co_events::bus::SubscribeError| {
            StartError::invalid_config(format!("subscribing: {e}"))
        };
        let workers = vec![
            (
                "inventory-service",
                inventory.start().await.map_err(subscribing)?,
            ),
            (
                "payment-service",
                payments.start().await.map_err(subscribing)?,
            ),
            (
                "notification-service",
                notifications.start().await.map_err(subscribing)?,
            ),
            (
                "order-service",
                orders.start(&bus, settings.saga.clone()).await?,
            ),
        ];
        Ok(Marketplace {
            bus,
            inventory,
            payments,
            orders,
            notifications,
            api,
            admin,
            inventory_records,
            settings,
            workers,
        })
    }

    /// Stops inventory-service as a crash would (`crash`) or gracefully, and starts a new
    /// instance on the same records: messages in flight are redelivered to it.
    ///
    /// # Errors
    /// Subscribing again failed.
    pub async fn restart_inventory(&mut self, crash: bool) -> Result<(), StartError> {
        if let Some(at) = self
            .workers
            .iter()
            .position(|(name, _)| *name == "inventory-service")
        {
            let (_, old) = self.workers.remove(at);
            if crash {
                old.abort().await;
            } else {
                old.shutdown().await;
            }
        }
        self.inventory = Inventory::new(
            self.bus.clone(),
            self.inventory_records.clone(),
            self.settings.inventory.clone(),
        );
        let workers = self
            .inventory
            .start()
            .await
            .map_err(|e| StartError::invalid_config(format!("subscribing: {e}")))?;
        self.workers.push(("inventory-service", workers));
        Ok(())
    }

    /// Stops every service gracefully, letting work in flight finish.
    pub async fn stop(self) {
        for (_, workers) in self.workers {
            workers.shutdown().await;
        }
    }
}
