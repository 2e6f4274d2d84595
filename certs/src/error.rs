//! The one error type of this crate, [`CertError`], with messages that say what to do.

use std::path::PathBuf;

/// Everything that can go wrong while creating, issuing, reading or checking certificates.
///
/// Each message names the thing that was wrong and, where it helps, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM text held no certificate.
    #[error(
        "no certificate found in {what}: expected a PEM block \"-----BEGIN CERTIFICATE-----\""
    )]
    NoCertificate {
        /// Which input was searched.
        what: &'static str,
    },
    /// A PEM text held no private key.
    #[error("no private key found in {what}: expected a PEM block \"-----BEGIN PRIVATE KEY-----\" (PKCS#8), EC or RSA key")]
    NoPrivateKey {
        /// Which input was searched.
        what: &'static str,
    },
    /// PEM text could not be decoded.
    #[error("invalid PEM in {what}: {detail}")]
    Pem {
        /// Which input was read.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A certificate could not be parsed as X.509.
    #[error("cannot parse {what} as an X.509 certificate: {detail}")]
    Parse {
        /// Which certificate.
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The certificate given as CA is not a CA certificate.
    #[error("the CA certificate is not a CA (it lacks basicConstraints CA:TRUE); use the fleet CA's ca.pem")]
    NotACa,
    /// The CA's private key does not match its certificate.
    #[error("the CA key {key_path} does not belong to the CA certificate {cert_path}; restore the matching pair")]
    CaKeyMismatch {
        /// Path of the certificate.
        cert_path: PathBuf,
        /// Path of the key.
        key_path: PathBuf,
    },
    /// The leaf was not signed by our CA.
    #[error(
        "certificate was not issued by this fleet CA (issuer \"{issuer}\", CA \"{ca}\"): {detail}"
    )]
    NotIssuedByCa {
        /// Issuer name found in the certificate.
        issuer: String,
        /// Subject of our CA.
        ca: String,
        /// Why the check failed.
        detail: String,
    },
    /// The certificate's validity window ended.
    #[error("certificate {serial} expired at {not_after} (unix seconds); issue a new one")]
    Expired {
        /// Serial of the certificate.
        serial: String,
        /// End of validity, unix seconds.
        not_after: i64,
    },
    /// The certificate's validity window has not begun.
    #[error("certificate {serial} is not valid before {not_before} (unix seconds); check the clock of this machine")]
    NotYetValid {
        /// Serial of the certificate.
        serial: String,
        /// Start of validity, unix seconds.
        not_before: i64,
    },
    /// A required subject field is missing or repeated.
    #[error("certificate subject must have exactly one {field} field: {detail}")]
    SubjectField {
        /// The field, e.g. "CN (principal id)".
        field: &'static str,
        /// What was found.
        detail: String,
    },
    /// The OU field is not a known role.
    #[error("certificate role (OU) \"{0}\" is not one of \"device\" or \"service\"")]
    UnknownRole(String),
    /// An id (device, owner or service) is malformed.
    #[error("invalid {what} \"{value}\": {rule}")]
    InvalidId {
        /// Which id.
        what: &'static str,
        /// The offending value (truncated).
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A service certificate carries an owner.
    #[error("a service certificate must not carry an owner (O field), found \"{0}\"")]
    UnexpectedOwner(String),
    /// A leaf that claims to be a CA.
    #[error("certificate {0} is a CA certificate (basicConstraints CA:TRUE); only end-entity certificates identify clients")]
    LeafIsCa(String),
    /// The leaf lacks the TLS client authentication purpose.
    #[error("certificate {0} is not allowed for TLS client authentication (extendedKeyUsage lacks clientAuth)")]
    NotClientAuth(String),
    /// A CSR could not be parsed or its signature is wrong.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// A CSR's key is not an ECDSA P-256 key, the only kind device certificates carry.
    #[error("the CSR's key is {found}; Hammer device keys are ECDSA P-256 (hammer-manager makes one: run `hammer-manager enroll` on the device)")]
    CsrKeyType {
        /// What the CSR holds, e.g. "RSA-2048", "ECDSA P-384", "Ed25519".
        found: String,
    },
    /// A name given for the CA or a server certificate is not acceptable.
    #[error("invalid {what}: {detail}")]
    InvalidInput {
        /// What was wrong.
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// A serial number is not hexadecimal.
    #[error("invalid certificate serial \"{0}\": expected hexadecimal digits (colons allowed), e.g. 4f1a09c2")]
    InvalidSerial(String),
    /// The revocation list file is not valid JSON.
    #[error(
        "revocation list {path} is corrupt ({detail}); it must be a JSON array of hex serials"
    )]
    RevocationFile {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        detail: String,
    },
    /// Certificate generation or signing failed in rcgen.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = CertError> = std::result::Result<T, E>;

impl CertError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        CertError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Cuts untrusted text to a length fit for an error message.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}
