//! Who a certificate names: [`Role`] (OU), principal id (CN) and owner (O), read from a leaf
//! certificate and checked against the fleet's naming rules.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Name;

use crate::error::{truncate, CertError, Result};

/// The role a certificate grants, carried in the subject's OU field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A device manager (OU = "device").
    Device,
    /// The cloud service (OU = "service").
    Service,
}

impl Role {
    /// The OU value of this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "device" => Ok(Role::Device),
            "service" => Ok(Role::Service),
            other => Err(CertError::UnknownRole(truncate(other))),
        }
    }
}

/// The identity a verified client certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Device or service.
    pub role: Role,
    /// The principal id (CN): device id or service id.
    pub id: String,
    /// For a device, the id of the owning user (O); `None` for the service.
    pub owner: Option<String>,
    /// Certificate serial: lowercase hex, no colons, no leading zeros.
    pub serial: String,
    /// End of the certificate's validity.
    pub not_after: SystemTime,
}

/// Checks a device id (CN of a device certificate).
pub fn validate_device_id(id: &str) -> Result<()> {
    hammer_protocol::validate_device_id(id).map_err(|_| CertError::InvalidId {
        what: "device id",
        value: truncate(id),
        rule: "1 to 64 characters, lowercase letters and digits only",
    })
}

/// Checks a user id (O of a device certificate): same rule as device ids.
pub fn validate_owner_id(id: &str) -> Result<()> {
    hammer_protocol::validate_device_id(id).map_err(|_| CertError::InvalidId {
        what: "owner (user) id",
        value: truncate(id),
        rule: "1 to 64 characters, lowercase letters and digits only",
    })
}

/// Checks a service id (CN of a service certificate): 1 to 64 characters of lowercase
/// letters, digits and '-', starting with a letter or digit. Every device id is also valid.
pub fn validate_service_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= hammer_protocol::names::MAX_DEVICE_ID
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidId {
            what: "service id",
            value: truncate(id),
            rule: "1 to 64 characters, lowercase letters, digits and '-', not starting with '-'",
        })
    }
}

/// Reads role, id and owner from a subject and checks them. Signature, validity and
/// extensions are checked by the caller ([`crate::CaCert::identity`]).
pub(crate) fn subject_identity(
    cert: &X509Certificate<'_>,
    serial: String,
    not_after: SystemTime,
) -> Result<Identity> {
    let subject = cert.subject();
    let cn = single(
        subject,
        subject.iter_common_name(),
        "CN (principal id)",
        true,
    )?
    .unwrap_or_default();
    let ou = single(
        subject,
        subject.iter_organizational_unit(),
        "OU (role)",
        true,
    )?
    .unwrap_or_default();
    let o = single(subject, subject.iter_organization(), "O (owner)", false)?;
    let role: Role = ou.parse()?;
    let owner = match role {
        Role::Device => {
            validate_device_id(&cn)?;
            let owner = o.ok_or_else(|| CertError::SubjectField {
                field: "O (owner)",
                detail: "a device certificate must name its owner".into(),
            })?;
            validate_owner_id(&owner)?;
            Some(owner)
        }
        Role::Service => {
            validate_service_id(&cn)?;
            if let Some(o) = o {
                return Err(CertError::UnexpectedOwner(truncate(&o)));
            }
            None
        }
    };
    Ok(Identity {
        role,
        id: cn,
        owner,
        serial,
        not_after,
    })
}

/// The value of a subject attribute that must appear at most once (exactly once if
/// `required`).
fn single<'a, 'b>(
    subject: &X509Name<'_>,
    mut values: impl Iterator<Item = &'b x509_parser::x509::AttributeTypeAndValue<'a>>,
    field: &'static str,
    required: bool,
) -> Result<Option<String>>
where
    'a: 'b,
{
    let first = values.next();
    if values.next().is_some() {
        return Err(CertError::SubjectField {
            field,
            detail: format!(
                "found it more than once in \"{}\"",
                truncate(&subject.to_string())
            ),
        });
    }
    match first {
        None if required => Err(CertError::SubjectField {
            field,
            detail: format!("missing in \"{}\"", truncate(&subject.to_string())),
        }),
        None => Ok(None),
        Some(attr) => {
            attr.as_str()
                .map(|s| Some(s.to_string()))
                .map_err(|_| CertError::SubjectField {
                    field,
                    detail: "not a text string".into(),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_ids() {
        assert_eq!("device".parse::<Role>().unwrap(), Role::Device);
        assert!("admin".parse::<Role>().is_err());
        assert!(validate_service_id("hammer-service").is_ok());
        assert!(validate_service_id("-x").is_err());
        assert!(validate_device_id("Dev1").is_err());
        assert!(validate_owner_id("alice1").is_ok());
    }
}
