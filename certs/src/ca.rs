//! [`Ca`]: the fleet CA with its private key (ECDSA P-256). Creates, saves and loads itself
//! and issues server, service and device certificates. Every certificate gets a random serial
//! and fields chosen here, never copied from a request.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    PKCS_ECDSA_P256_SHA256,
};

use crate::cacert::{parse, CaCert};
use crate::clock::{from_unix_secs, to_offset};
use crate::error::{CertError, Result};
use crate::identity::{validate_device_id, validate_owner_id, validate_service_id};
use crate::revocation::RevocationList;
use crate::serial::{random_serial, serial_from_bytes};
use crate::statement::StatementSigner;
use crate::{files, Role};

/// File name of the CA certificate inside the CA folder.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA folder.
pub const CA_KEY_FILE: &str = "ca.key";
/// Validity of a newly created CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back `notBefore` is set, to absorb clock differences between machines.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A certificate the CA issued.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM, when the CA generated it (`None` when signed from a CSR).
    pub key_pem: Option<String>,
    /// Serial: lowercase hex, no colons, no leading zeros.
    pub serial: String,
    /// End of validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The fleet CA, private key included.
pub struct Ca {
    cert: CaCert,
    key: KeyPair,
    /// The same key, for [`Ca::sign_statement`].
    statements: StatementSigner,
    /// rcgen's view of the CA, used only as the issuer (name, key id, key usages).
    issuer: Certificate,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert", &self.cert).finish()
    }
}

impl Ca {
    /// Creates a new CA named `name` (its CN) with a fresh P-256 key, valid for
    /// [`CA_VALIDITY`]. Nothing is written: call [`Ca::save`].
    pub fn create(name: &str) -> Result<Ca> {
        if name.trim().is_empty()
            || name.chars().count() > 64
            || name.chars().any(|c| c.is_control())
        {
            return Err(CertError::InvalidInput {
                what: "CA name",
                detail: format!(
                    "\"{}\" must be 1 to 64 printable characters",
                    crate::error::truncate(name)
                ),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(now + CA_VALIDITY);
        params.serial_number = Some(random_serial()?);
        let issuer = params.self_signed(&key)?;
        let cert = CaCert::from_der(issuer.der().as_ref())?;
        Ca::assemble(cert, key, issuer)
    }

    /// Loads the CA from `dir/ca.pem` and `dir/ca.key`, checking that they belong together.
    pub fn load(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert = CaCert::from_pem(&files::read_string(&cert_path)?)?;
        let key_pem = files::read_string(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::Pem {
            what: "the CA key file",
            detail: format!("{}: {e}", key_path.display()),
        })?;
        let parsed = parse(cert.der().as_ref(), "the CA certificate")?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::CaKeyMismatch {
                cert_path,
                key_path,
            });
        }
        let issuer = CertificateParams::from_ca_cert_der(cert.der())?.self_signed(&key)?;
        Ca::assemble(cert, key, issuer)
    }

    /// Writes `dir/ca.pem` (0644) and `dir/ca.key` (0600) atomically, creating `dir` (0700)
    /// if missing. The key is written first, so a crash never leaves a certificate without
    /// its key.
    pub fn save(&self, dir: &Path) -> Result<()> {
        files::create_private_dir(dir)?;
        files::write_private(dir.join(CA_KEY_FILE), self.key.serialize_pem())?;
        files::write_public(dir.join(CA_CERT_FILE), self.cert.pem())
    }

    /// Loads the CA from `dir` if `dir/ca.pem` exists; otherwise creates one named `name`
    /// and saves it there.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Ca> {
        if dir.join(CA_CERT_FILE).exists() {
            Self::load(dir)
        } else {
            let ca = Self::create(name)?;
            ca.save(dir)?;
            Ok(ca)
        }
    }

    fn assemble(cert: CaCert, key: KeyPair, issuer: Certificate) -> Result<Ca> {
        let statements = StatementSigner::from_pkcs8(&key.serialize_der())?;
        Ok(Ca {
            cert,
            key,
            statements,
            issuer,
        })
    }

    /// The public half.
    pub fn cert(&self) -> &CaCert {
        &self.cert
    }

    /// Signs the statement "`field` of `device_id`'s enrollment is `value`" with the CA key
    /// (see [`crate::statement`]); checked with [`CaCert::verify_statement`].
    pub fn sign_statement(&self, field: &str, device_id: &str, value: &str) -> Result<String> {
        self.statements.sign(field, device_id, value)
    }

    /// Issues a TLS server certificate (EKU serverAuth only) for the given DNS names and IP
    /// addresses, with a new key.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<Issued> {
        if dns_names.is_empty() && ips.is_empty() {
            return Err(CertError::InvalidInput {
                what: "server certificate names",
                detail: "give at least one DNS name or IP address".into(),
            });
        }
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|_| CertError::InvalidInput {
                    what: "DNS name",
                    detail: format!("\"{}\" is not ASCII", crate::error::truncate(name)),
                })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cn = dns_names
            .first()
            .cloned()
            .or_else(|| ips.first().map(|ip| ip.to_string()))
            .unwrap_or_default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        let mut params = self.leaf_params(dn, validity, ExtendedKeyUsagePurpose::ServerAuth)?;
        params.subject_alt_names = sans;
        self.issue_with_new_key(params)
    }

    /// Issues the service's MQTT client certificate: CN = `service_id`, OU = "service",
    /// EKU clientAuth, with a new key.
    pub fn issue_service(&self, service_id: &str, validity: Duration) -> Result<Issued> {
        validate_service_id(service_id)?;
        let params = self.leaf_params(
            subject(service_id, Role::Service, None),
            validity,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        self.issue_with_new_key(params)
    }

    /// Issues a device certificate and its key here (offline bundle for factory
    /// provisioning): CN = `device_id`, OU = "device", O = `owner`.
    pub fn issue_device(&self, device_id: &str, owner: &str, validity: Duration) -> Result<Issued> {
        let params = self.device_params(device_id, owner, validity)?;
        self.issue_with_new_key(params)
    }

    /// Signs a device's CSR. Only the CSR's public key is used (after its self-signature
    /// is checked); subject, validity, key usage, EKU (clientAuth) and CA:FALSE are set here.
    pub fn sign_device_csr(
        &self,
        csr_pem: &str,
        device_id: &str,
        owner: &str,
        validity: Duration,
    ) -> Result<Issued> {
        let params = self.device_params(device_id, owner, validity)?;
        let public_key = crate::csr::csr_public_key(csr_pem)?;
        self.sign(params, &public_key, None)
    }

    /// A signed X.509 CRL (PEM) listing every serial in `revoked`, valid for `next_update`
    /// (e.g. Mosquitto's `crlfile`).
    pub fn crl_pem(&self, revoked: &RevocationList, next_update: Duration) -> Result<String> {
        crate::crl::crl_pem(&self.issuer, &self.key, &revoked.serials(), next_update)
    }

    fn device_params(
        &self,
        device_id: &str,
        owner: &str,
        validity: Duration,
    ) -> Result<CertificateParams> {
        validate_device_id(device_id)?;
        validate_owner_id(owner)?;
        self.leaf_params(
            subject(device_id, Role::Device, Some(owner)),
            validity,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn leaf_params(
        &self,
        dn: DistinguishedName,
        validity: Duration,
        eku: ExtendedKeyUsagePurpose,
    ) -> Result<CertificateParams> {
        if validity.is_zero() {
            return Err(CertError::InvalidInput {
                what: "validity",
                detail: "must be longer than zero".into(),
            });
        }
        let now = SystemTime::now();
        let not_after = now
            .checked_add(validity)
            .filter(|t| crate::clock::unix_secs(*t) < 253_402_300_799) // 9999-12-31
            .ok_or_else(|| CertError::InvalidInput {
                what: "validity",
                detail: format!("{validity:?} is too long"),
            })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn issue_with_new_key(&self, params: CertificateParams) -> Result<Issued> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        self.sign(params, &key, Some(key.serialize_pem()))
    }

    fn sign(
        &self,
        params: CertificateParams,
        public_key: &impl PublicKeyData,
        key_pem: Option<String>,
    ) -> Result<Issued> {
        let cert = params.signed_by(public_key, &self.issuer, &self.key)?;
        let parsed = parse(cert.der().as_ref(), "the issued certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem,
            serial: serial_from_bytes(parsed.raw_serial()),
            not_after: from_unix_secs(parsed.validity().not_after.timestamp()),
        })
    }
}

fn subject(id: &str, role: Role, owner: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    if let Some(owner) = owner {
        dn.push(DnType::OrganizationName, owner);
    }
    dn
}
