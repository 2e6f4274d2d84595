//! The sled implementation of [`Store`]: the only module that touches sled.
//!
//! Trees (records as JSON):
//! - `users` id → user, `user_names` name → id
//! - `tokens` hash → token, `token_index` user\0token_id → hash
//! - `devices` id → device, `device_names` owner\0name → id
//! - `enrollments` hash → enrollment
//! - `deployments` id → deployment
//! - `status` device\0epoch\0seq (big endian) → stored status
//! - `contig` device\0epoch → highest contiguous seq; `epochs` device → current epoch

use super::*;
use serde::de::DeserializeOwned;

/// sled-backed store in one directory.
pub struct SledStore {
    db: ::sled::Db,
    users: ::sled::Tree,
    user_names: ::sled::Tree,
    tokens: ::sled::Tree,
    token_index: ::sled::Tree,
    devices: ::sled::Tree,
    device_names: ::sled::Tree,
    enrollments: ::sled::Tree,
    deployments: ::sled::Tree,
    status: ::sled::Tree,
    contig: ::sled::Tree,
    epochs: ::sled::Tree,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(err)
}

fn from_json<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(err)
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn prefix(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k
}

fn epoch_key(device: &str, epoch: u64) -> Vec<u8> {
    let mut k = prefix(device);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

fn status_key(device: &str, epoch: u64, seq: u64) -> Vec<u8> {
    let mut k = epoch_key(device, epoch);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if b.len() == 8 {
        a.copy_from_slice(b);
    }
    u64::from_be_bytes(a)
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<SledStore> {
        let db = ::sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| StoreError(format!("cannot open the store in {}: {e}", dir.display())))?;
        let t = |n: &str| db.open_tree(n).map_err(err);
        Ok(SledStore {
            users: t("users")?,
            user_names: t("user_names")?,
            tokens: t("tokens")?,
            token_index: t("token_index")?,
            devices: t("devices")?,
            device_names: t("device_names")?,
            enrollments: t("enrollments")?,
            deployments: t("deployments")?,
            status: t("status")?,
            contig: t("contig")?,
            epochs: t("epochs")?,
            db,
        })
    }

    fn get<T: DeserializeOwned>(tree: &::sled::Tree, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        match tree.get(key).map_err(err)? {
            Some(v) => Ok(Some(from_json(&v)?)),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(iter: ::sled::Iter) -> Result<Vec<T>> {
        iter.map(|r| r.map_err(err).and_then(|(_, v)| from_json(&v)))
            .collect()
    }

    /// Claims `key` in a unique index: `true` when it was free.
    fn claim(tree: &::sled::Tree, key: &[u8], value: &[u8]) -> Result<bool> {
        Ok(tree
            .compare_and_swap(key, None::<&[u8]>, Some(value))
            .map_err(err)?
            .is_ok())
    }
}

impl Store for SledStore {
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        // sled 0.34's `flush_async` can stay pending forever when several callers flush at
        // once (seen with 32 concurrent setup requests); the blocking flush does not.
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(err)?
                .map_err(err)?;
            Ok(())
        })
    }

    fn insert_user(&self, user: &UserRecord) -> Result<bool> {
        if !Self::claim(&self.user_names, user.name.as_bytes(), user.id.as_bytes())? {
            return Ok(false);
        }
        self.users.insert(&user.id, to_json(user)?).map_err(err)?;
        Ok(true)
    }

    fn user(&self, id: &str) -> Result<Option<UserRecord>> {
        Self::get(&self.users, id)
    }

    fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        match self.user_names.get(name).map_err(err)? {
            Some(id) => Self::get(&self.users, id),
            None => Ok(None),
        }
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        Self::all(self.users.iter())
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        self.tokens
            .insert(&token.hash, to_json(token)?)
            .map_err(err)?;
        self.token_index
            .insert(key2(&token.user_id, &token.id), token.hash.as_bytes())
            .map_err(err)?;
        Ok(())
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        Self::get(&self.tokens, hash)
    }

    fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for r in self.token_index.scan_prefix(prefix(user_id)) {
            let (_, hash) = r.map_err(err)?;
            if let Some(t) = Self::get(&self.tokens, &hash)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn delete_token(&self, user_id: &str, token_id: &str) -> Result<bool> {
        match self
            .token_index
            .remove(key2(user_id, token_id))
            .map_err(err)?
        {
            Some(hash) => {
                self.tokens.remove(hash).map_err(err)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn insert_device(&self, device: &DeviceRecord) -> Result<bool> {
        if !Self::claim(
            &self.device_names,
            &key2(&device.owner, &device.name),
            device.id.as_bytes(),
        )? {
            return Ok(false);
        }
        self.devices
            .insert(&device.id, to_json(device)?)
            .map_err(err)?;
        Ok(true)
    }

    fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        Self::get(&self.devices, id)
    }

    fn device_by_name(&self, owner: &str, name: &str) -> Result<Option<DeviceRecord>> {
        match self.device_names.get(key2(owner, name)).map_err(err)? {
            Some(id) => Self::get(&self.devices, id),
            None => Ok(None),
        }
    }

    fn devices_of(&self, owner: &str) -> Result<Vec<DeviceRecord>> {
        let mut out = Vec::new();
        for r in self.device_names.scan_prefix(prefix(owner)) {
            let (_, id) = r.map_err(err)?;
            if let Some(d) = Self::get(&self.devices, id)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn all_devices(&self) -> Result<Vec<DeviceRecord>> {
        Self::all(self.devices.iter())
    }

    fn update_device(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut DeviceRecord) + Send),
    ) -> Result<Option<DeviceRecord>> {
        loop {
            let Some(old) = self.devices.get(id).map_err(err)? else {
                return Ok(None);
            };
            let mut rec: DeviceRecord = from_json(&old)?;
            f(&mut rec);
            let new = to_json(&rec)?;
            if self
                .devices
                .compare_and_swap(id, Some(old), Some(new))
                .map_err(err)?
                .is_ok()
            {
                return Ok(Some(rec));
            }
        }
    }

    fn delete_device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let Some(old) = self.devices.remove(id).map_err(err)? else {
            return Ok(None);
        };
        let rec: DeviceRecord = from_json(&old)?;
        self.device_names
            .remove(key2(&rec.owner, &rec.name))
            .map_err(err)?;
        for tree in [&self.status, &self.contig] {
            for r in tree.scan_prefix(prefix(id)).keys() {
                tree.remove(r.map_err(err)?).map_err(err)?;
            }
        }
        self.epochs.remove(id).map_err(err)?;
        self.delete_enrollments_of(id)?;
        Ok(Some(rec))
    }

    fn insert_enrollment(&self, token_hash: &str, rec: &EnrollmentRecord) -> Result<()> {
        self.enrollments
            .insert(token_hash, to_json(rec)?)
            .map_err(err)?;
        Ok(())
    }

    fn take_enrollment(&self, token_hash: &str) -> Result<Option<EnrollmentRecord>> {
        match self.enrollments.remove(token_hash).map_err(err)? {
            Some(v) => Ok(Some(from_json(&v)?)),
            None => Ok(None),
        }
    }

    fn delete_enrollments_of(&self, device_id: &str) -> Result<()> {
        for r in self.enrollments.iter() {
            let (k, v) = r.map_err(err)?;
            let rec: EnrollmentRecord = from_json(&v)?;
            if rec.device_id == device_id {
                self.enrollments.remove(k).map_err(err)?;
            }
        }
        Ok(())
    }

    fn put_deployment(&self, d: &DeploymentRecord) -> Result<()> {
        self.deployments.insert(&d.id, to_json(d)?).map_err(err)?;
        Ok(())
    }

    fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        Self::get(&self.deployments, id)
    }

    fn deployments(&self) -> Result<Vec<DeploymentRecord>> {
        Self::all(self.deployments.iter())
    }

    fn insert_status(&self, s: &StoredStatus) -> Result<Inserted> {
        let dev = &s.device_id;
        let (epoch, seq) = (s.event.epoch, s.event.seq);
        let new = Self::claim(&self.status, &status_key(dev, epoch, seq), &to_json(s)?)?;
        let ekey = epoch_key(dev, epoch);
        let mut contiguous = self
            .contig
            .get(&ekey)
            .map_err(err)?
            .map_or(0, |v| be_u64(&v));
        let start = contiguous;
        while self
            .status
            .contains_key(status_key(dev, epoch, contiguous + 1))
            .map_err(err)?
        {
            contiguous += 1;
        }
        if contiguous != start {
            self.contig
                .insert(&ekey, &contiguous.to_be_bytes())
                .map_err(err)?;
        }
        if new {
            self.epochs
                .insert(dev.as_bytes(), &epoch.to_be_bytes())
                .map_err(err)?;
        }
        Ok(Inserted { new, contiguous })
    }

    fn ack_of(&self, device_id: &str) -> Result<Option<(u64, u64)>> {
        let Some(epoch) = self.epochs.get(device_id).map_err(err)? else {
            return Ok(None);
        };
        let epoch = be_u64(&epoch);
        let seq = self
            .contig
            .get(epoch_key(device_id, epoch))
            .map_err(err)?
            .map_or(0, |v| be_u64(&v));
        Ok(Some((epoch, seq)))
    }

    fn statuses_of(&self, device_id: &str) -> Result<Vec<StoredStatus>> {
        Self::all(self.status.scan_prefix(prefix(device_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::PROTOCOL_VERSION;

    fn status(dev: &str, epoch: u64, seq: u64) -> StoredStatus {
        StoredStatus {
            device_id: dev.into(),
            received_at: 1,
            deployer: None,
            event: StatusEvent {
                v: PROTOCOL_VERSION,
                epoch,
                seq,
                generation: None,
                deployment_id: None,
                phase: Phase::Running,
                commit: None,
                time: 1,
                detail: None,
                log_tail: vec![],
            },
        }
    }

    #[test]
    fn status_dedup_and_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.ack_of("d").unwrap(), None);
        let i = s.insert_status(&status("d", 7, 2)).unwrap();
        assert_eq!((i.new, i.contiguous), (true, 0));
        let i = s.insert_status(&status("d", 7, 1)).unwrap();
        assert_eq!((i.new, i.contiguous), (true, 2));
        let i = s.insert_status(&status("d", 7, 1)).unwrap();
        assert_eq!((i.new, i.contiguous), (false, 2));
        assert_eq!(s.ack_of("d").unwrap(), Some((7, 2)));
        // Another device with a name prefix of "d" is separate.
        s.insert_status(&status("dd", 1, 1)).unwrap();
        assert_eq!(s.statuses_of("d").unwrap().len(), 2);
        // A new epoch (wiped device) starts over.
        let i = s.insert_status(&status("d", 9, 1)).unwrap();
        assert_eq!((i.new, i.contiguous), (true, 1));
        assert_eq!(s.ack_of("d").unwrap(), Some((9, 1)));
    }

    #[test]
    fn unique_names_and_one_time_enrollment() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let u = UserRecord {
            id: "u1".into(),
            name: "alice".into(),
            admin: false,
            created_at: 0,
        };
        assert!(s.insert_user(&u).unwrap());
        assert!(!s
            .insert_user(&UserRecord {
                id: "u2".into(),
                ..u.clone()
            })
            .unwrap());
        let e = EnrollmentRecord {
            device_id: "d".into(),
            owner: "u1".into(),
            expires_at: 5,
        };
        s.insert_enrollment("h", &e).unwrap();
        assert_eq!(s.take_enrollment("h").unwrap(), Some(e));
        assert_eq!(s.take_enrollment("h").unwrap(), None);
    }
}
