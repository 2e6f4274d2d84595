//! A throwaway PostgreSQL for the tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port (`listen_addresses=127.0.0.1`, its socket in the temp dir), killed when
//! dropped (and, should the test process die first, when the thread that started it ends).
//!
//! PostgreSQL refuses to run as root: as root, initdb and postgres run as the user
//! `hammer-pg` (`.ci/run` creates it: `useradd --system --no-create-home hammer-pg`), which
//! owns the temp dir. The binaries come from `pg_config --bindir`, else
//! `/usr/lib/postgresql/*/bin`, else `PATH`. When PostgreSQL is missing the test says why and
//! skips; under `CI=true` a skip fails (`.ci/run` installs `postgresql`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser of the throwaway cluster.
pub const USER: &str = "hammer";

pub struct TestPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    pub port: u16,
    pub password: String,
    /// With TLS: the file of the CA that issued the server's certificate.
    pub ca_file: Option<PathBuf>,
}

/// A test that cannot run here says why; under `CI=true` that fails.
pub fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "PostgreSQL tests cannot run: {why} (CI=true: a skipped test fails CI; .ci/run installs postgresql and creates the hammer-pg user)"
    );
    eprintln!("SKIPPED: {why}");
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// The directory holding initdb and postgres.
fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&p) {
            return Some(p);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| has_initdb(p))
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(p) = versions.pop() {
        return Some(p);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|p| has_initdb(p))
}

/// The uid and gid of `hammer-pg` when this process is root (`Err` when it is missing).
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "hammer-pg"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(u), Some(g)) => Ok(Some((u, g))),
        _ => Err(
            "running as root and there is no user hammer-pg to run PostgreSQL as \
                  (useradd --system --no-create-home hammer-pg)"
                .into(),
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestPg {
    /// Starts a cluster, or says why it cannot (see [`skip`]) and answers `None`.
    pub fn start() -> Option<TestPg> {
        Self::start_with(false)
    }

    /// [`TestPg::start`] with TLS on (a server certificate for 127.0.0.1 and localhost from a
    /// CA of its own, in [`TestPg::ca_file`]).
    pub fn start_tls() -> Option<TestPg> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<TestPg> {
        let Some(bin) = bindir() else {
            skip("PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let owner = match run_as() {
            Ok(o) => o,
            Err(why) => {
                skip(&why);
                return None;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut pw = [0u8; 12];
        getrandom::getrandom(&mut pw).unwrap();
        let password = format!("pw-{}", hex::encode(pw));
        std::fs::write(dir.path().join("pw"), format!("{password}\n")).unwrap();
        if let Some((uid, gid)) = owner {
            for p in [dir.path().to_path_buf(), dir.path().join("pw")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut pg = TestPg {
            dir,
            bin,
            owner,
            child: None,
            port: 0,
            password,
            ca_file: None,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data())
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .args(["--locale=C", "--no-instructions", "--pwfile"])
            .arg(pg.dir.path().join("pw"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            let ca = hammer_certs::Ca::create("hammer test PostgreSQL").unwrap();
            let server = ca
                .issue_server(
                    &["localhost".to_owned()],
                    &["127.0.0.1".parse().unwrap()],
                    Duration::from_secs(3600),
                )
                .unwrap();
            let ca_file = pg.dir.path().join("ca.pem");
            std::fs::write(&ca_file, ca.cert().pem()).unwrap();
            let data = pg.data();
            std::fs::write(data.join("server.crt"), &server.cert_pem).unwrap();
            std::fs::write(data.join("server.key"), server.key_pem.unwrap()).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            if let Some((uid, gid)) = owner {
                for f in ["server.crt", "server.key"] {
                    std::os::unix::fs::chown(data.join(f), Some(uid), Some(gid)).unwrap();
                }
            }
            std::fs::write(
                data.join("postgresql.auto.conf"),
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            )
            .unwrap();
            pg.ca_file = Some(ca_file);
        }
        pg.port = free_port();
        pg.run();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command of the cluster's binaries, as its owner, killed when this thread ends.
    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        // SAFETY: prctl is async-signal-safe; it runs in the child before exec, after the
        // uid change (which would clear it).
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        c
    }

    /// Starts postgres on `self.port` and waits until it accepts connections.
    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(self.dir.path().join("postgres.log"), Some(uid), Some(gid))
                .unwrap();
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "postgres did not start ({exited:?}): {}",
                    std::fs::read_to_string(self.dir.path().join("postgres.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops postgres (fast shutdown: connections are cut).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGINT);
            }
            let _ = c.wait();
        }
    }

    /// Starts postgres again on the same port and data.
    pub fn start_again(&mut self) {
        self.run();
    }

    /// `postgres://hammer:PASSWORD@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// Runs `sql` with psql in database `db`; panics with psql's answer when it fails.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates database `name`; answers its URL.
    pub fn create_db(&self, name: &str) -> String {
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Immediate shutdown: the postmaster ends its backends, then itself.
            // SAFETY: kill on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
