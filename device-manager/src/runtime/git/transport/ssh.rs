//! git over SSH through the system `ssh` program, as git itself does it:
//! `ssh [options] [-p PORT] [user@]host "git-upload-pack '<path>'"`, with the child's stdin and
//! stdout as the protocol stream (not stateless: one connection for refs and pack).
//!
//! With the deployment's [`GitCredentials::Ssh`], the private key and the known_hosts lines
//! are written to files in a private (0700) temporary folder that is removed when the
//! connection ends: `-i KEY -o IdentitiesOnly=yes`, and `-o UserKnownHostsFile=FILE -o
//! GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes`, so that only the given lines
//! decide which host keys are accepted (hashed lines and patterns included: ssh reads them).
//! Without given known_hosts lines, the manager user's own ssh configuration applies
//! (`~/.ssh/config`, `~/.ssh/known_hosts`, `/etc/ssh/ssh_known_hosts`). Always `BatchMode=yes`
//! (ssh never prompts) and a connect timeout. ssh's stderr goes to a file in the same folder;
//! its last [`STDERR_TAIL`] bytes explain a failure ([`explain_ssh_failure`]). The child is
//! killed and reaped when libgit2 drops the stream.

use super::{git_problem, io_problem, FetchContext};
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};
use hammer_protocol::GitCredentials;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

/// Bytes of ssh's stderr kept for a failure's message.
pub const STDERR_TAIL: u64 = 2048;
/// `ConnectTimeout` of ssh, in seconds.
const CONNECT_TIMEOUT_SECS: u32 = 30;

/// Where an SSH remote is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The path as the server's `git-upload-pack` gets it.
    pub path: String,
}

impl SshTarget {
    /// `host` or `[host]:port`, as ssh and known_hosts name it.
    pub fn shown(&self) -> String {
        match self.port {
            Some(p) if p != 22 => format!("[{}]:{p}", self.host),
            _ => self.host.clone(),
        }
    }
}

/// Reads `ssh://[user@]host[:port]/path` (also `git+ssh://`, `ssh+git://`) and the scp-like
/// `[user@]host:path`. As in git, `ssh://host/~user/x` asks for `~user/x`.
pub fn parse_ssh_url(url: &str) -> Result<SshTarget, String> {
    let bad = |why: &str| format!("the SSH URL {url:?} {why}");
    let scheme_rest = ["ssh://", "git+ssh://", "ssh+git://"]
        .iter()
        .find_map(|p| url.strip_prefix(p));
    let (authority, path, explicit_port) = match scheme_rest {
        Some(rest) => {
            let slash = rest.find('/').ok_or_else(|| bad("has no path"))?;
            let (authority, path) = rest.split_at(slash);
            let path = match path.strip_prefix("/~") {
                Some(home) => format!("~{home}"),
                None => path.to_string(),
            };
            (authority, path, true)
        }
        None => {
            // scp-like: the path starts after the first ':' outside brackets.
            let first_colon = url.find(':').unwrap_or(url.len());
            let search_from = match url.find('[').filter(|open| *open < first_colon) {
                Some(open) => url[open..]
                    .find(']')
                    .map(|c| open + c)
                    .ok_or_else(|| bad("has an unclosed '['"))?,
                None => 0,
            };
            let colon = url[search_from..]
                .find(':')
                .map(|c| search_from + c)
                .ok_or_else(|| bad("is neither ssh://… nor user@host:path"))?;
            (&url[..colon], url[colon + 1..].to_string(), false)
        }
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) if explicit_port => Some(p),
            Some(_) => return Err(bad("has a port where a path was expected")),
            None if after.is_empty() => None,
            None => return Err(bad("has text after ']'")),
        };
        (h, port)
    } else if explicit_port {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    } else {
        (hostport, None)
    };
    let port = match port {
        Some("") | None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))?,
        ),
    };
    if host.is_empty() || host.starts_with('-') {
        return Err(bad("has no host (or one starting with '-')"));
    }
    if user
        .as_deref()
        .is_some_and(|u| u.is_empty() || u.starts_with('-'))
    {
        return Err(bad("has an empty user or one starting with '-'"));
    }
    if path.is_empty() || path.chars().any(char::is_control) {
        return Err(bad("has no path (or control characters in it)"));
    }
    Ok(SshTarget {
        user,
        host: host.to_string(),
        port,
        path,
    })
}

/// `s` in single quotes for the remote shell, as git quotes it (`'` and `!` outside quotes).
pub fn shell_quote(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\'' | '!' => {
                out.push('\'');
                out.push('\\');
                out.push(c);
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The files a connection gives ssh.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SshFiles {
    pub key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

/// ssh's arguments (without the program) for fetching from `target`.
pub fn ssh_args(target: &SshTarget, files: &SshFiles) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut opt = |o: String| {
        args.push("-o".into());
        args.push(o.into());
    };
    opt("BatchMode=yes".into());
    opt(format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"));
    opt("ServerAliveInterval=15".into());
    opt("ServerAliveCountMax=4".into());
    if let Some(key) = &files.key {
        opt(format!("IdentityFile=\"{}\"", key.display()));
        opt("IdentitiesOnly=yes".into());
    }
    if let Some(kh) = &files.known_hosts {
        opt(format!("UserKnownHostsFile=\"{}\"", kh.display()));
        opt("GlobalKnownHostsFile=/dev/null".into());
        opt("StrictHostKeyChecking=yes".into());
    }
    if let Some(port) = target.port {
        args.push("-p".into());
        args.push(port.to_string().into());
    }
    args.push(
        match &target.user {
            Some(u) => format!("{u}@{}", target.host),
            None => target.host.clone(),
        }
        .into(),
    );
    args.push(format!("git-upload-pack {}", shell_quote(&target.path)).into());
    args
}

/// What the deployment gave for this connection, as far as the messages care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Given {
    pub key: bool,
    pub known_hosts: bool,
}

/// The sentence for a failed ssh: from its stderr (already bounded) and exit code.
pub fn explain_ssh_failure(
    stderr: &str,
    code: Option<i32>,
    target: &SshTarget,
    given: Given,
) -> String {
    let host = target.shown();
    let where_known = if given.known_hosts {
        "the repository's known_hosts"
    } else {
        "the manager user's known_hosts (~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts)"
    };
    let last = last_lines(stderr);
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return format!(
            "host key verification failed: the host key of {host} does not match the one in {where_known} (a changed key, or someone in between); refusing to connect. If the server's key was changed on purpose, replace its line (`ssh-keyscan{} {}`)",
            port_flag(target),
            target.host
        );
    }
    if stderr.contains("Host key verification failed") || stderr.contains("host key is known") {
        return format!(
            "host key verification failed: the host key of {host} is not in {where_known} (unknown host); refusing to connect. Add the server's line to it (`ssh-keyscan{} {}`, checked out of band)",
            port_flag(target),
            target.host
        );
    }
    if stderr.contains("Permission denied") {
        return if given.key {
            format!("authentication failed: {host} rejected the SSH key ({last})")
        } else {
            format!("authentication failed: {host} refused the manager user's own SSH keys and no git credentials are configured ({last}): give the repository an SSH key")
        };
    }
    if stderr.contains("Could not resolve hostname") {
        return format!("cannot resolve the host name {} ({last})", target.host);
    }
    if stderr.contains("Connection refused")
        || stderr.contains("timed out")
        || stderr.contains("No route to host")
        || stderr.contains("Network is unreachable")
    {
        return format!("cannot connect to {host} over SSH ({last})");
    }
    if code == Some(127) && stderr.contains("git-upload-pack") {
        return format!("the server {host} has no git-upload-pack ({last})");
    }
    match (code, last.is_empty()) {
        (Some(c), false) => format!("ssh to {host} failed (exit {c}): {last}"),
        (Some(c), true) => format!("ssh to {host} failed (exit {c})"),
        (None, _) => format!("ssh to {host} was killed by a signal"),
    }
}

fn port_flag(target: &SshTarget) -> String {
    match target.port {
        Some(p) if p != 22 => format!(" -p {p}"),
        _ => String::new(),
    }
}

/// The last non-empty lines of ssh's stderr, joined, without the banner's `@` lines.
fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@'))
        .collect();
    let from = lines.len().saturating_sub(3);
    lines[from..].join("; ")
}

/// One connection of libgit2's smart transport to an SSH remote.
pub struct SshSubtransport {
    ctx: Arc<FetchContext>,
}

impl SshSubtransport {
    pub fn new(ctx: Arc<FetchContext>) -> SshSubtransport {
        SshSubtransport { ctx }
    }
}

impl SmartSubtransport for SshSubtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        match action {
            Service::UploadPackLs | Service::UploadPack => {}
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(git_problem(
                    "the device manager only fetches: pushing is not supported".into(),
                ))
            }
        }
        let target = parse_ssh_url(url).map_err(git_problem)?;
        let stream = SshStream::start(target, self.ctx.creds.as_ref()).map_err(git_problem)?;
        Ok(Box::new(stream))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// A 0700 folder of its own under the temporary directory, removed on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<PrivateDir, String> {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random)
            .map_err(|e| format!("no randomness for a temporary folder: {e}"))?;
        let path = std::env::temp_dir().join(format!("hammer-git-ssh-{}", hex::encode(random)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(PrivateDir(path))
    }

    /// Writes a 0600 file in the folder.
    fn write(&self, name: &str, content: &[u8]) -> Result<PathBuf, String> {
        let path = self.0.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        file.write_all(content)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running ssh and what it was given. Fields drop in order: the child is reaped (see
/// [`Drop`]) before the folder with its key goes.
struct SshStream {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: std::fs::File,
    target: SshTarget,
    given: Given,
    _dir: PrivateDir,
}

impl SshStream {
    fn start(target: SshTarget, creds: Option<&GitCredentials>) -> Result<SshStream, String> {
        let dir = PrivateDir::new()?;
        let mut files = SshFiles::default();
        if let Some(GitCredentials::Ssh {
            private_key,
            known_hosts,
        }) = creds
        {
            let mut key = private_key.trim_end().to_string();
            // ssh refuses a key file whose last line has no newline.
            key.push('\n');
            files.key = Some(dir.write("id", key.as_bytes())?);
            if !known_hosts.trim().is_empty() {
                files.known_hosts = Some(dir.write("known_hosts", known_hosts.as_bytes())?);
            }
        }
        let given = Given {
            key: files.key.is_some(),
            known_hosts: files.known_hosts.is_some(),
        };
        let stderr_path = dir.0.join("stderr");
        let stderr = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&stderr_path)
            .map_err(|e| format!("cannot create {}: {e}", stderr_path.display()))?;
        let child_stderr = stderr
            .try_clone()
            .map_err(|e| format!("cannot create {}: {e}", stderr_path.display()))?;
        let mut child = Command::new("ssh")
            .args(ssh_args(&target, &files))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(child_stderr))
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => "the `ssh` program is not installed: install the OpenSSH client (Debian: openssh-client) to fetch ssh:// repositories".to_string(),
                _ => format!("cannot start ssh: {e}"),
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("cannot talk to ssh: its pipes are missing".into());
        };
        Ok(SshStream {
            child,
            stdin: Some(stdin),
            stdout,
            stderr,
            target,
            given,
            _dir: dir,
        })
    }

    /// The error for a connection that ended or broke: ssh's own account when it failed.
    fn failure(&mut self, what: std::io::Result<usize>) -> std::io::Result<usize> {
        // The pipe closed: ssh is exiting. Close ours so that it is not held up by it.
        self.stdin.take();
        match self.child.wait() {
            Ok(status) if status.success() => what,
            Ok(status) => Err(io_problem(explain_ssh_failure(
                &read_tail(&mut self.stderr),
                status.code(),
                &self.target,
                self.given,
            ))),
            Err(e) => Err(io_problem(format!("cannot wait for ssh: {e}"))),
        }
    }
}

fn read_tail(file: &mut std::fs::File) -> String {
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)));
    let mut bytes = Vec::new();
    let _ = file.take(STDERR_TAIL).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Read for SshStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            return match self.stdout.read(buf) {
                Ok(0) if !buf.is_empty() => self.failure(Ok(0)),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => self.failure(Err(e)),
            };
        }
    }
}

impl Write for SshStream {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(io_problem("ssh's input is closed".into()));
        };
        match stdin.write(data) {
            Ok(n) => Ok(n),
            Err(e) => self.failure(Err(e)),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SshStream {
    fn drop(&mut self) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(user: Option<&str>, host: &str, port: Option<u16>, path: &str) -> SshTarget {
        SshTarget {
            user: user.map(String::from),
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn ssh_urls_and_scp_like_urls_name_user_host_port_and_path() {
        assert_eq!(
            parse_ssh_url("ssh://git@h.example:2222/srv/r.git").unwrap(),
            target(Some("git"), "h.example", Some(2222), "/srv/r.git")
        );
        assert_eq!(
            parse_ssh_url("git+ssh://h.example/r.git").unwrap(),
            target(None, "h.example", None, "/r.git")
        );
        assert_eq!(
            parse_ssh_url("ssh://h/~alice/r.git").unwrap(),
            target(None, "h", None, "~alice/r.git")
        );
        assert_eq!(
            parse_ssh_url("ssh://u@[::1]:22/r").unwrap(),
            target(Some("u"), "::1", Some(22), "/r")
        );
        assert_eq!(
            parse_ssh_url("git@github.com:o/r.git").unwrap(),
            target(Some("git"), "github.com", None, "o/r.git")
        );
        assert_eq!(
            parse_ssh_url("u@[fe80::1]:r.git").unwrap(),
            target(Some("u"), "fe80::1", None, "r.git")
        );
    }

    #[test]
    fn ssh_urls_that_could_become_options_or_lack_parts_are_refused() {
        for bad in [
            "ssh://-oProxyCommand=x/r",
            "-oProxyCommand=x:r",
            "ssh://-u@h/r",
            "ssh://h",
            "ssh://h:0/r",
            "ssh://h:99999/r",
            "h:",
            "no-colon",
            "[h:r",
        ] {
            assert!(parse_ssh_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_single_quoted_for_the_remote_shell_as_git_does() {
        assert_eq!(shell_quote("/srv/r.git"), "'/srv/r.git'");
        assert_eq!(shell_quote("it's!"), "'it'\\''s'\\!''");
    }

    #[test]
    fn ssh_gets_batch_mode_the_key_the_known_hosts_and_the_port() {
        let files = SshFiles {
            key: Some("/t/id".into()),
            known_hosts: Some("/t/known_hosts".into()),
        };
        let args = ssh_args(&target(Some("git"), "h", Some(2222), "/r.git"), &files);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=4",
                "-o",
                "IdentityFile=\"/t/id\"",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "UserKnownHostsFile=\"/t/known_hosts\"",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-p",
                "2222",
                "git@h",
                "git-upload-pack '/r.git'",
            ]
        );
        // Nothing given: the user's own ssh configuration decides keys and host keys.
        let args = ssh_args(&target(None, "h", None, "r"), &SshFiles::default());
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args
            .iter()
            .any(|a| a.contains("KnownHosts") || a.contains("Identit")));
        assert_eq!(args[args.len() - 2..], ["h", "git-upload-pack 'r'"]);
    }

    #[test]
    fn ssh_failures_become_sentences_that_say_what_to_do() {
        let t = target(Some("git"), "127.0.0.1", Some(2222), "/r");
        let given = Given {
            key: true,
            known_hosts: true,
        };
        let changed = explain_ssh_failure(
            "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@\nHost key verification failed.\n",
            Some(255),
            &t,
            given,
        );
        assert!(
            changed.starts_with("host key verification failed"),
            "{changed}"
        );
        assert!(
            changed.contains("[127.0.0.1]:2222")
                && changed.contains("ssh-keyscan -p 2222 127.0.0.1"),
            "{changed}"
        );
        let unknown = explain_ssh_failure(
            "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\n",
            Some(255),
            &t,
            given,
        );
        assert!(
            unknown.contains("unknown host") && unknown.contains("repository's known_hosts"),
            "{unknown}"
        );
        let denied = explain_ssh_failure(
            "git@127.0.0.1: Permission denied (publickey).\r\n",
            Some(255),
            &t,
            given,
        );
        assert!(denied.starts_with("authentication failed"), "{denied}");
        let none = Given {
            key: false,
            known_hosts: false,
        };
        let denied = explain_ssh_failure("Permission denied (publickey).", Some(255), &t, none);
        assert!(denied.contains("no git credentials"), "{denied}");
        let other = explain_ssh_failure(
            "fatal: '/r' does not appear to be a git repository\n",
            Some(128),
            &t,
            given,
        );
        assert!(
            other.contains("exit 128") && other.contains("does not appear"),
            "{other}"
        );
        assert!(explain_ssh_failure(
            "ssh: connect to host 127.0.0.1 port 2222: Connection refused",
            Some(255),
            &t,
            given
        )
        .starts_with("cannot connect"));
    }
}
