//! A git server over HTTP or HTTPS on loopback: a small Python server in front of
//! `git http-backend`, with optional basic auth and, for HTTPS, Python's `ssl` module with a
//! certificate from a throwaway CA ([`https_git_server`]).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The server script: `python3 SCRIPT ROOT USER TOKEN [CERT KEY]` prints its port, then
/// serves (over TLS with CERT and KEY).
pub const HTTP_SERVER: &str = r#"
import base64, http.server, os, socketserver, ssl, subprocess, sys

ROOT, USER, TOKEN = sys.argv[1], sys.argv[2], sys.argv[3]
EXPECTED = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def handle_any(self):
        if USER and self.headers.get("Authorization") != EXPECTED:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = dict(os.environ, GIT_PROJECT_ROOT=ROOT, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_USER=USER,
                   GATEWAY_INTERFACE="CGI/1.1")
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            if not line:
                continue
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            else:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = handle_any
    do_POST = handle_any

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

srv = Server(("127.0.0.1", 0), Handler)
if len(sys.argv) > 5:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[4], sys.argv[5])
    srv.socket = tls.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// Kills the server when the test ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves the repositories under `root` over HTTP (`git http-backend`) with basic auth, or
/// without any when `user` is empty; returns the server and its port.
pub fn http_git_server(root: &Path, user: &str, token: &str) -> (Server, u16) {
    start(root, &[user, token])
}

/// A throwaway CA and a server certificate from it for 127.0.0.1 and localhost.
pub struct TestTls {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestTls {
    pub fn new() -> TestTls {
        let ca = hammer_certs::Ca::create("hammer test git CA").unwrap();
        let issued = ca
            .issue_server(
                &["localhost".to_string()],
                &["127.0.0.1".parse().unwrap()],
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        TestTls {
            ca_pem: ca.cert().pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.unwrap(),
        }
    }
}

/// [`http_git_server`] over HTTPS with `tls`'s server certificate.
pub fn https_git_server(root: &Path, user: &str, token: &str, tls: &TestTls) -> (Server, u16) {
    let (cert, key) = (root.join("server.pem"), root.join("server.key"));
    std::fs::write(&cert, &tls.cert_pem).unwrap();
    std::fs::write(&key, &tls.key_pem).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    start(root, &[user, token, &cert, &key])
}

fn start(root: &Path, args: &[&str]) -> (Server, u16) {
    let script = root.join("server.py");
    std::fs::write(&script, HTTP_SERVER).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(root)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("server prints its port");
    (Server(child), port)
}
