//! Certificate revocation lists: a signed X.509 CRL of revoked serials, for brokers that read
//! one (Mosquitto's `crlfile`). The embedded broker uses [`crate::RevocationList`] directly.

use std::time::{Duration, SystemTime};

use rcgen::{
    Certificate, CertificateRevocationListParams, KeyIdMethod, KeyPair, RevokedCertParams,
};

use crate::clock::{to_offset, unix_secs};
use crate::error::{CertError, Result};
use crate::serial::serial_to_bytes;

/// Signs a CRL listing `serials` with the CA, valid from now until now + `next_update`.
pub(crate) fn crl_pem(
    issuer: &Certificate,
    key: &KeyPair,
    serials: &[String],
    next_update: Duration,
) -> Result<String> {
    if next_update.is_zero() {
        return Err(CertError::InvalidInput {
            what: "CRL next update",
            detail: "must be longer than zero".into(),
        });
    }
    let now = SystemTime::now();
    let next = now
        .checked_add(next_update)
        .ok_or_else(|| CertError::InvalidInput {
            what: "CRL next update",
            detail: format!("{next_update:?} is too long"),
        })?;
    let this_update = to_offset(now);
    let revoked_certs = serials
        .iter()
        .map(|s| {
            Ok(RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial_to_bytes(s)?),
                revocation_time: this_update,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Increases with time, as RFC 5280 asks of the CRL number.
    let crl_number = rcgen::SerialNumber::from(u64::try_from(unix_secs(now)).unwrap_or(0));
    let params = CertificateRevocationListParams {
        this_update,
        next_update: to_offset(next),
        crl_number,
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer, key)?.pem()?)
}
