//! Hammer IoT fleet CA.
//!
//! - [`Ca`] creates, saves and loads the CA and issues server, service and device
//!   certificates; devices send a CSR ([`new_device_key_and_csr`]) and
//!   [`Ca::sign_device_csr`] uses only its public key.
//! - [`CaCert`] is the public half: [`CaCert::identity`] verifies a client certificate and
//!   returns its [`Identity`] (role from OU, id from CN, owner from O).
//! - [`RevocationList`] holds revoked serials; [`Ca::crl_pem`] signs them as an X.509 CRL.
//! - [`tls`] builds rustls configurations on the ring provider; [`files`] writes files
//!   atomically with fixed permissions.

mod ca;
mod cacert;
mod clock;
mod crl;
mod csr;
mod error;
pub mod files;
mod identity;
mod pemfile;
mod revocation;
mod serial;
pub mod statement;
pub mod tls;

pub use ca::{Ca, Issued, CA_CERT_FILE, CA_KEY_FILE, CA_VALIDITY, CLOCK_SKEW};
pub use cacert::{cert_matches_csr, CaCert};
pub use csr::{csr_public_key, new_device_key_and_csr, MAX_CSR_PEM};
pub use error::{CertError, Result};
pub use identity::{validate_device_id, validate_owner_id, validate_service_id, Identity, Role};
pub use revocation::RevocationList;
pub use serial::{normalize_serial, serial_from_bytes};
