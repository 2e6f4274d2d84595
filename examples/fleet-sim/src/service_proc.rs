//! `hammer serve` as a child process, for the benchmarks: find the binary, start it on a data
//! dir and fixed loopback ports with its output appended to a log file, wait for `/healthz`,
//! read the admin token, stop it with a signal, and start it again on the same dir and ports.
//!
//! A separate process is what production runs, and it gives the service its own open-file
//! budget (the simulated devices' sockets no longer count against it). The child is killed
//! when this process dies (`PR_SET_PDEATHSIG`) or drops the handle, and gets its soft
//! open-file limit raised to the hard one (`hammer serve` does not raise it itself).

use anyhow::{bail, Context};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long `hammer serve` may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM may take before the child is killed.
const TERM_TIMEOUT: Duration = Duration::from_secs(30);

/// The `hammer` binary: `explicit` if given, else next to this executable (the same
/// `target/<profile>/` folder).
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--hammer-bin {}: no such file", p.display());
        }
        return Ok(p.to_owned());
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no parent folder", exe.display()))?;
    let bin = dir.join("hammer");
    if !bin.is_file() {
        bail!(
            "the service binary {} is missing: run `cargo build --release -p hammer-cli` \
             first (same profile as this bench), or pass --hammer-bin PATH",
            bin.display()
        );
    }
    Ok(bin)
}

/// A stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StopSignal {
    /// SIGKILL: no shutdown code runs (a crash or power loss of the service host).
    Kill,
    /// SIGTERM: the service's graceful shutdown (SIGKILL after 30 s).
    Term,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Kill => "SIGKILL",
            StopSignal::Term => "SIGTERM",
        }
    }

    fn number(self) -> libc::c_int {
        match self {
            StopSignal::Kill => libc::SIGKILL,
            StopSignal::Term => libc::SIGTERM,
        }
    }
}

/// Where and how to run `hammer serve`; the same spec restarts it on the same dir and ports.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    /// `--broker-url` (an external broker) instead of the embedded one.
    pub broker_url: Option<String>,
    /// `--database`: the store in PostgreSQL (a URL that may hold a password: never logged).
    pub database: Option<String>,
    /// `--replica NAME`: one of several replicas on one database and one broker.
    pub replica: Option<String>,
    /// stdout and stderr of every start are appended here.
    pub log: PathBuf,
    /// `RUST_LOG` of the child.
    pub rust_log: String,
}

impl ServeSpec {
    /// A spec on two free loopback ports; public host `127.0.0.1`.
    pub fn new(
        bin: &Path,
        data_dir: PathBuf,
        log: PathBuf,
        rust_log: &str,
    ) -> anyhow::Result<Self> {
        Ok(ServeSpec {
            bin: bin.to_owned(),
            data_dir,
            http: SocketAddr::from(([127, 0, 0, 1], crate::mosquitto::free_port()?)),
            mqtt: SocketAddr::from(([127, 0, 0, 1], crate::mosquitto::free_port()?)),
            broker_url: None,
            database: None,
            replica: None,
            log,
            rust_log: rust_log.to_owned(),
        })
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--mqtt")
            .arg(self.mqtt.to_string())
            .arg("--enroll-listen")
            .arg("127.0.0.1:0")
            .arg("--public-host")
            .arg("127.0.0.1")
            // No load balancer here to take the service out of rotation: a stop is a stop,
            // and restart figures stay comparable with runs from before draining existed.
            .arg("--drain-grace")
            .arg("0");
        if let Some(url) = &self.broker_url {
            cmd.arg("--broker-url").arg(url);
        }
        if let Some(url) = &self.database {
            cmd.arg("--database").arg(url);
        }
        if let Some(name) = &self.replica {
            cmd.arg("--replica").arg(name);
        }
        cmd.env("RUST_LOG", &self.rust_log)
            .env_remove("HAMMER_DATA_DIR");
        cmd
    }
}

/// A running `hammer serve`; killed (SIGKILL) when dropped.
pub struct ServiceProc {
    child: tokio::process::Child,
    pid: u32,
    /// Base URL of its HTTP API.
    pub http_url: String,
    pub admin_token: String,
    /// Spawn → `/healthz` answered.
    pub started_in: Duration,
}

/// Runs in the child between fork and exec: only async-signal-safe calls.
fn child_setup() -> std::io::Result<()> {
    // SAFETY: prctl, getrlimit and setrlimit are plain system calls on memory we own.
    unsafe {
        // Killed with us even if we die without dropping the handle (Ctrl-C, panic=abort).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    Ok(())
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl ServiceProc {
    /// Starts `hammer serve` and waits until it answers `/healthz` and its admin token is
    /// in the data dir.
    pub async fn start(spec: &ServeSpec) -> anyhow::Result<ServiceProc> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open {}", spec.log.display()))?;
        writeln!(
            log,
            "==== rollout-bench: starting {} serve (http {}, mqtt {}, broker url {}, store {}, replica {}) at unix ms {}",
            spec.bin.display(),
            spec.http,
            spec.mqtt,
            spec.broker_url.as_deref().unwrap_or("embedded"),
            if spec.database.is_some() { "PostgreSQL" } else { "sled" },
            spec.replica.as_deref().unwrap_or("-"),
            hammer_protocol::now_ms()
        )?;
        let err = log.try_clone()?;
        let mut cmd = spec.command();
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true);
        // SAFETY: child_setup only makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(child_setup);
        }
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", spec.bin.display()))?;
        let pid = child
            .id()
            .context("the service exited before its pid was read")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("cannot set up the HTTP client")?;
        let url = format!("{}/healthz", spec.http_url());
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "hammer serve exited at start-up ({status}); last lines of {}:\n{}",
                    spec.log.display(),
                    log_tail(&spec.log, 20)
                );
            }
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if t0.elapsed() > START_TIMEOUT {
                bail!(
                    "hammer serve did not answer {url} within {START_TIMEOUT:?}; last lines of {}:\n{}",
                    spec.log.display(),
                    log_tail(&spec.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started_in = t0.elapsed();
        // Written before the HTTP listener opens.
        let token_file = spec.data_dir.join(hammer_service::ADMIN_TOKEN_FILE);
        let admin_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read {}", token_file.display()))?
            .trim()
            .to_owned();
        if admin_token.is_empty() {
            bail!("{} is empty", token_file.display());
        }
        Ok(ServiceProc {
            child,
            pid,
            http_url: spec.http_url(),
            admin_token,
            started_in,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` and waits until the process is gone (a SIGTERM that is not obeyed within
    /// 30 s becomes a SIGKILL). Returns the time from the signal to the exit, and whether
    /// the exit was clean (code 0 after SIGTERM; always true after SIGKILL).
    pub async fn stop(mut self, sig: StopSignal) -> anyhow::Result<(Duration, bool)> {
        let t0 = Instant::now();
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "hammer serve (pid {}) had already exited: {status}",
                self.pid
            );
        }
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        if unsafe { libc::kill(self.pid as libc::pid_t, sig.number()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot send {} to pid {}", sig.name(), self.pid));
        }
        let status = match tokio::time::timeout(TERM_TIMEOUT, self.child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await?;
                return Ok((t0.elapsed(), false));
            }
        };
        let clean = sig == StopSignal::Kill || status.success();
        Ok((t0.elapsed(), clean))
    }
}
