//! The certs crate's tests, in one test binary: issuing and reading identities, CSR key
//! types (real RSA from `openssl req`), files on disk and the CRL, real TLS handshakes on
//! loopback.

mod common;

mod csr_key_types;
mod identity;
mod storage;
mod tls;
