//! The reference services' one secret: the service-to-service JWT secret.

use a4co_events::service::{Env, StartError};
use a4co_http::auth::{self, Secret};

/// The service-to-service JWT secret from `SERVICE_JWT_SECRET`. There is no default:
/// every service of a deployment must share one secret of at least 32 bytes.
///
/// # Errors
/// Missing or too short, with how to make one.
pub fn jwt_secret(env: &Env) -> Result<Secret, StartError> {
    let value = env.optional(auth::SECRET_ENV).ok_or_else(|| {
        StartError::invalid_config(format!(
            "{} is not set: every service needs the same secret of at least {} bytes to sign and check service tokens (e.g. `export {}=$(openssl rand -hex 32)`)",
            auth::SECRET_ENV,
            auth::MIN_SECRET_BYTES,
            auth::SECRET_ENV
        ))
    })?;
    Secret::new(value).map_err(|e| StartError::invalid_config(format!("{}: {e}", auth::SECRET_ENV)))
}

#[cfg(test)]
mod tests {
    use a4co_events::service::Env;

    use super::jwt_secret;

    #[test]
    fn the_jwt_secret_has_no_fallback() {
        let missing = jwt_secret(&Env::default()).unwrap_err().to_string();
        assert!(
            missing.contains("SERVICE_JWT_SECRET is not set"),
            "{missing}"
        );
        let short = jwt_secret(&Env::from_pairs([("SERVICE_JWT_SECRET", "short")]))
            .unwrap_err()
            .to_string();
        assert!(short.contains("32"), "{short}");
        assert!(jwt_secret(&Env::from_pairs([("SERVICE_JWT_SECRET", "k".repeat(32))])).is_ok());
    }
}
