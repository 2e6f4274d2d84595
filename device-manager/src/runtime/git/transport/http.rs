//! git's smart HTTP protocol (stateless RPC) over reqwest and rustls with the ring provider.
//!
//! - Refs: `GET <url>/info/refs?service=git-upload-pack`, answered with
//!   `application/x-git-upload-pack-advertisement` (anything else is a "dumb" server, which
//!   libgit2 cannot fetch from either).
//! - Pack: `POST <url>/git-upload-pack` with `application/x-git-upload-pack-request`; the body
//!   is what libgit2 wrote before its first read. The answer is handed to libgit2 chunk by chunk
//!   as reqwest receives it: a pack is never held whole in memory.
//! - Redirects of the refs request are followed (at most [`MAX_REDIRECTS`], never from https to
//!   http) and the pack requests go where it ended. The deployment's username and token are
//!   sent (basic auth, up front) only to the server of the URL the fetch was given.
//! - Trust: the system store (`rustls-native-certs`, which honours `SSL_CERT_FILE` and
//!   `SSL_CERT_DIR`) plus the operator's `git_ca_file`. Proxies: reqwest's (`HTTPS_PROXY`,
//!   `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` in the environment).
//! - No `Git-Protocol` header: libgit2 speaks protocol v0 only, and asking a server for v2
//!   would get answers it cannot read.
//!
//! Each fetch drives reqwest with its own current-thread tokio runtime, inside the blocking
//! git call (which runs in `spawn_blocking` or a plain thread): no thread of its own, and
//! host names are resolved with the blocking system resolver on that same thread.

use super::{git_problem, io_problem, FetchContext};
use bytes::Bytes;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};
use hammer_protocol::GitCredentials;
use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Runtime;

/// Redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// Connecting (TCP and TLS) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A response that sends nothing for this long is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const UPLOAD_PACK_LS: &str = "/info/refs?service=git-upload-pack";
const UPLOAD_PACK: &str = "/git-upload-pack";
const ADVERTISEMENT: &str = "application/x-git-upload-pack-advertisement";
const REQUEST: &str = "application/x-git-upload-pack-request";
const RESULT: &str = "application/x-git-upload-pack-result";

/// One connection of libgit2's smart transport to an HTTP(S) remote.
pub struct HttpSubtransport {
    ctx: Arc<FetchContext>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    /// Where the refs request ended (after redirects), without [`UPLOAD_PACK_LS`].
    base: Option<String>,
}

/// reqwest and the runtime that drives it.
#[derive(Clone)]
struct Client {
    rt: Arc<Runtime>,
    http: reqwest::Client,
}

impl HttpSubtransport {
    pub fn new(ctx: Arc<FetchContext>) -> HttpSubtransport {
        HttpSubtransport {
            ctx,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, git2::Error> {
        self.state
            .lock()
            .map_err(|_| git2::Error::from_str("the HTTP transport's state is poisoned"))
    }
}

impl SmartSubtransport for HttpSubtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let mut state = self.state()?;
        let client = match &state.client {
            Some(c) => c.clone(),
            None => {
                let c = new_client(url, &self.ctx).map_err(git_problem)?;
                state.client = Some(c.clone());
                c
            }
        };
        let auth = Auth::for_fetch(url, self.ctx.creds.as_ref());
        match action {
            Service::UploadPackLs => {
                let target = service_url(url, UPLOAD_PACK_LS);
                let resp = client
                    .rt
                    .block_on(send(&client.http, &target, None, &auth))
                    .map_err(git_problem)?;
                check_content_type(content_type(&resp), ADVERTISEMENT).map_err(git_problem)?;
                let base = base_after_redirects(resp.url().as_str(), url, UPLOAD_PACK_LS);
                state.base = Some(base);
                Ok(Box::new(HttpStream {
                    client,
                    auth,
                    post: None,
                    body: Some(Body::new(resp)),
                }))
            }
            Service::UploadPack => {
                let base = state.base.clone().unwrap_or_else(|| url.to_string());
                Ok(Box::new(HttpStream {
                    client,
                    auth,
                    post: Some((service_url(&base, UPLOAD_PACK), Vec::new())),
                    body: None,
                }))
            }
            Service::ReceivePackLs | Service::ReceivePack => Err(git_problem(
                "the device manager only fetches: pushing is not supported".into(),
            )),
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// `url` with `suffix` appended (one `/` between them).
pub fn service_url(url: &str, suffix: &str) -> String {
    format!("{}{suffix}", url.trim_end_matches('/'))
}

/// The base URL for the pack requests: where the refs request ended, without its suffix, or
/// the given URL when the end does not have that shape.
pub fn base_after_redirects(final_url: &str, asked: &str, suffix: &str) -> String {
    match final_url.strip_suffix(suffix) {
        Some(base) if !base.is_empty() => base.to_string(),
        _ => asked.trim_end_matches('/').to_string(),
    }
}

/// `scheme://host:port` of a URL (`None`: not a URL reqwest can read).
fn origin(url: &str) -> Option<(String, String, Option<u16>)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((
        u.scheme().to_string(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default(),
    ))
}

/// The credentials a request may carry: the deployment's username and token, only for the
/// server of the URL the fetch was given.
#[derive(Clone)]
struct Auth {
    origin: Option<(String, String, Option<u16>)>,
    login: Option<(String, String)>,
    /// What the deployment configured, for the messages.
    kind: CredsKind,
}

/// Which credentials the deployment has, as far as HTTP is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredsKind {
    None,
    Token,
    /// SSH credentials, useless over HTTP.
    Ssh,
}

impl Auth {
    fn for_fetch(url: &str, creds: Option<&GitCredentials>) -> Auth {
        let (login, kind) = match creds {
            Some(GitCredentials::Https { username, token }) => {
                (Some((username.clone(), token.clone())), CredsKind::Token)
            }
            Some(GitCredentials::Ssh { .. }) => (None, CredsKind::Ssh),
            None => (None, CredsKind::None),
        };
        Auth {
            origin: origin(url),
            login,
            kind,
        }
    }

    /// The login for a request to `url`: only on the fetch's own server.
    fn login_for(&self, url: &str) -> Option<&(String, String)> {
        let same = self.origin.is_some() && origin(url) == self.origin;
        self.login.as_ref().filter(|_| same)
    }
}

fn new_client(url: &str, ctx: &FetchContext) -> Result<Client, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP client's runtime: {e}"))?;
    // Plain http:// needs no trust store (and loading the system's costs a few milliseconds).
    let tls = tls_config(url.starts_with("https:"), ctx.ca_file.as_deref())?;
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.previous().iter().any(|u| u.scheme() == "https")
            && attempt.url().scheme() != "https";
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if downgrade {
            attempt.error("a redirect from https:// to http:// is refused")
        } else {
            attempt.follow()
        }
    });
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(concat!(
            "git/2.0 (hammer-manager/",
            env!("CARGO_PKG_VERSION"),
            ")"
        ))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(redirects)
        .dns_resolver(Arc::new(BlockingResolver))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(Client {
        rt: Arc::new(rt),
        http,
    })
}

/// rustls (ring) trusting the system store (for https) and the operator's extra CA file.
fn tls_config(
    system: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if system {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A certificate of the store that rustls cannot use is skipped, as curl does.
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read git_ca_file {} (manager.toml): {e}",
                path.display()
            )
        })?;
        let certs = hammer_certs::tls::parse_certs_pem(&pem).map_err(|e| {
            format!(
                "git_ca_file {} (manager.toml) holds no usable certificate: {e}",
                path.display()
            )
        })?;
        for cert in certs {
            roots.add(cert).map_err(|e| {
                format!(
                    "git_ca_file {} (manager.toml) has a certificate rustls refuses: {e}",
                    path.display()
                )
            })?;
        }
    }
    if system && roots.is_empty() {
        return Err("no trusted CA certificates for https:// git servers: the system store is empty (install the ca-certificates package, or set SSL_CERT_FILE) and manager.toml sets no git_ca_file".into());
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(hammer_certs::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Resolves host names with the system resolver on the calling thread (the git call's own,
/// which blocks anyway) instead of a thread of tokio's blocking pool.
struct BlockingResolver;

impl reqwest::dns::Resolve for BlockingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = (host.as_str(), 0).to_socket_addrs()?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Sends a refs (`body: None`, GET) or pack (POST) request; a response that is not a success
/// is turned into its sentence.
async fn send(
    http: &reqwest::Client,
    url: &str,
    body: Option<Vec<u8>>,
    auth: &Auth,
) -> Result<reqwest::Response, String> {
    let mut req = match body {
        None => http.get(url),
        Some(b) => http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, REQUEST)
            .header(reqwest::header::ACCEPT, RESULT)
            .body(b),
    };
    if let Some((user, token)) = auth.login_for(url) {
        req = req.basic_auth(user, Some(token));
    }
    let resp = req.send().await.map_err(|e| describe_send_error(&e))?;
    match status_problem(resp.status().as_u16(), auth.kind) {
        Some(problem) => Err(problem),
        None => Ok(resp),
    }
}

fn content_type(resp: &reqwest::Response) -> Option<&str> {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// The sentence for a response status that is not a success (`None`: success).
pub fn status_problem(status: u16, creds: CredsKind) -> Option<String> {
    Some(match status {
        200..=299 => return None,
        401 => match creds {
            CredsKind::Token => {
                "authentication failed: the server rejected the username/token (HTTP 401)".into()
            }
            CredsKind::None => "authentication required but no git credentials are configured (HTTP 401): set the repository's username and token".into(),
            CredsKind::Ssh => "authentication required but no git credentials for HTTPS are configured (HTTP 401; the repository has SSH credentials): use its ssh:// URL, or set a username and token".into(),
        },
        403 => "access denied (HTTP 403): the credentials have no read access to this repository".into(),
        404 => "repository not found (HTTP 404): check the URL, and that the credentials may see it".into(),
        407 => "the HTTP proxy asks for authentication (HTTP 407): give its user and password in the HTTPS_PROXY URL".into(),
        s => format!("the git server answered HTTP {s}"),
    })
}

/// Checks a response's content type (parameters after `;` ignored).
pub fn check_content_type(got: Option<&str>, want: &str) -> Result<(), String> {
    let base = got.map(|g| g.split(';').next().unwrap_or("").trim());
    if base.is_some_and(|b| b.eq_ignore_ascii_case(want)) {
        return Ok(());
    }
    Err(format!(
        "the server is not a smart git HTTP server (it answered {:?}, not {want}); \"dumb\" HTTP git servers are not supported",
        got.unwrap_or("no content type")
    ))
}

/// A reqwest error with its causes, turned into what the operator should do.
fn describe_send_error(e: &reqwest::Error) -> String {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    explain_send_error(&chain, e.is_timeout())
}

/// See [`describe_send_error`]: the pure part, from the error chain's text.
pub fn explain_send_error(chain: &str, timeout: bool) -> String {
    let lower = chain.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        format!(
            "TLS: the git server's certificate is not trusted ({chain}): if it comes from a private CA, put that CA in a PEM file and name it as git_ca_file in manager.toml"
        )
    } else if timeout {
        format!("the git server did not answer in time ({chain})")
    } else {
        format!("cannot reach the git server ({chain})")
    }
}

/// A request of libgit2's (its body gathered until the first read) and the answer being read.
/// The answer is declared (and so dropped) before the runtime that drives it.
struct HttpStream {
    body: Option<Body>,
    /// The pack request's URL and body, until it is sent.
    post: Option<(String, Vec<u8>)>,
    auth: Auth,
    client: Client,
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.body.is_none() {
            let Some((url, request)) = self.post.take() else {
                return Err(io_problem("the HTTP transport has nothing to read".into()));
            };
            let resp = self
                .client
                .rt
                .block_on(send(&self.client.http, &url, Some(request), &self.auth))
                .map_err(io_problem)?;
            check_content_type(content_type(&resp), RESULT).map_err(io_problem)?;
            self.body = Some(Body::new(resp));
        }
        match self.body.as_mut() {
            Some(body) => body.read(&self.client.rt, buf),
            None => Ok(0),
        }
    }
}

impl Write for HttpStream {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self.post.as_mut() {
            Some((_, body)) => {
                body.extend_from_slice(data);
                Ok(data.len())
            }
            None => Err(io_problem(
                "the HTTP transport cannot write after the request was sent".into(),
            )),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A response body, read chunk by chunk as it arrives.
struct Body {
    resp: reqwest::Response,
    chunk: Bytes,
}

impl Body {
    fn new(resp: reqwest::Response) -> Body {
        Body {
            resp,
            chunk: Bytes::new(),
        }
    }

    fn read(&mut self, rt: &Runtime, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match rt.block_on(self.resp.chunk()) {
                Ok(Some(c)) => self.chunk = c,
                Ok(None) => return Ok(0),
                Err(e) => {
                    return Err(io_problem(format!(
                        "the git server's answer broke off: {}",
                        describe_send_error(&e)
                    )))
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_append_to_the_repository_url_with_one_slash() {
        assert_eq!(
            service_url("https://h/o/r.git", UPLOAD_PACK_LS),
            "https://h/o/r.git/info/refs?service=git-upload-pack"
        );
        assert_eq!(
            service_url("https://h/o/r.git/", UPLOAD_PACK),
            "https://h/o/r.git/git-upload-pack"
        );
    }

    #[test]
    fn pack_requests_go_where_the_refs_request_was_redirected() {
        assert_eq!(
            base_after_redirects(
                "https://new/o/r.git/info/refs?service=git-upload-pack",
                "https://old/o/r",
                UPLOAD_PACK_LS
            ),
            "https://new/o/r.git"
        );
        // A redirect to something of another shape: the URL given.
        assert_eq!(
            base_after_redirects("https://new/login", "https://old/o/r/", UPLOAD_PACK_LS),
            "https://old/o/r"
        );
    }

    #[test]
    fn the_token_goes_only_to_the_server_of_the_fetched_url() {
        let creds = GitCredentials::Https {
            username: "u".into(),
            token: "t".into(),
        };
        let auth = Auth::for_fetch("https://git.example/o/r.git", Some(&creds));
        assert!(auth
            .login_for("https://git.example/o/r.git/git-upload-pack")
            .is_some());
        assert!(auth.login_for("https://GIT.example:443/x").is_some());
        assert!(auth.login_for("https://other.example/o/r.git").is_none());
        assert!(auth.login_for("https://git.example:8443/o/r.git").is_none());
        assert!(auth.login_for("http://git.example/o/r.git").is_none());
        let ssh = GitCredentials::Ssh {
            private_key: "k".into(),
            known_hosts: String::new(),
        };
        let auth = Auth::for_fetch("https://git.example/o/r.git", Some(&ssh));
        assert!(auth.login_for("https://git.example/o/r.git").is_none());
        assert_eq!(auth.kind, CredsKind::Ssh);
    }

    #[test]
    fn statuses_become_sentences_that_say_what_to_do() {
        assert_eq!(status_problem(200, CredsKind::None), None);
        let wrong = status_problem(401, CredsKind::Token).unwrap();
        assert!(wrong.starts_with("authentication failed"), "{wrong}");
        let none = status_problem(401, CredsKind::None).unwrap();
        assert!(none.contains("no git credentials"), "{none}");
        assert!(status_problem(401, CredsKind::Ssh)
            .unwrap()
            .contains("ssh://"));
        assert!(status_problem(404, CredsKind::Token)
            .unwrap()
            .contains("not found"));
        assert!(status_problem(500, CredsKind::None)
            .unwrap()
            .contains("500"));
    }

    #[test]
    fn only_a_smart_server_answer_is_accepted() {
        assert!(check_content_type(Some(ADVERTISEMENT), ADVERTISEMENT).is_ok());
        assert!(check_content_type(
            Some("application/x-git-upload-pack-result; charset=x"),
            RESULT
        )
        .is_ok());
        let dumb = check_content_type(Some("text/plain"), ADVERTISEMENT).unwrap_err();
        assert!(dumb.contains("dumb"), "{dumb}");
        assert!(check_content_type(None, RESULT).is_err());
    }

    #[test]
    fn certificate_errors_point_to_git_ca_file() {
        let tls = explain_send_error(
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer",
            false,
        );
        assert!(
            tls.starts_with("TLS: the git server's certificate is not trusted"),
            "{tls}"
        );
        assert!(tls.contains("git_ca_file"), "{tls}");
        let refused = explain_send_error("error sending request: Connection refused", false);
        assert!(
            refused.starts_with("cannot reach the git server"),
            "{refused}"
        );
        assert!(explain_send_error("operation timed out", true).contains("in time"));
    }
}
