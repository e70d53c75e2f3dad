//! The one process-wide TLS choice of every program: rustls with the aws-lc-rs provider.
//!
//! kube, tonic and the Spanner client all use rustls. With more than one crypto provider
//! compiled in (kube's aws-lc-rs and jbazel's ring, say), rustls cannot pick one by itself
//! and panics at the first handshake ("no process-level CryptoProvider available"), so each
//! program calls [`install_crypto_provider`] first thing.

/// Installs aws-lc-rs as the process default. Idempotent: a second call, or a provider
/// installed already, leaves the first in place.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn installs_once_and_stays() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
