//! The API keeps its own contract (issue #19): a property-based test that reads
//! `service/src/api/openapi.json` and, for every operation (path × method) it lists, sends
//! requests generated from the document — path parameters (the caller's own device,
//! deployment or token, another user's, random unicode, long, `..`-like), query parameters by
//! their schema and junk, bodies built from the request schema (or a known valid example when
//! the schema is opaque) plus mutations (a required field missing, wrong types, an unknown
//! field, huge strings, invalid JSON, no body) — as four callers (no token, a bad token, an
//! ordinary user, the admin). Every answer must be a status the document lists for that
//! operation, never a 5xx, and a JSON body must validate against the response schema (a small
//! validator for the subset of JSON Schema the document uses: `$ref`, `type`, `nullable`,
//! `properties`, `required`, `additionalProperties`, `items`, `enum`, `oneOf`/`anyOf`/`allOf`,
//! `minimum`/`maximum`). One more property: an ordinary user's request naming another user's
//! device, deployment or token never succeeds.
//!
//! Deterministic: a fixed proptest seed and a bounded number of cases, after one sweep that
//! sends each operation's valid request as each caller. The event stream (`GET
//! /api/v1/events`) is checked for its status and content type only; its body is never read.
//! Operations that would stop the service (a path or operationId naming shutdown or kill)
//! are skipped. `POST /api/v1/enroll` is sent to the HTTPS enrollment listener, where it
//! is served.

use crate::common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const DOC: &str = include_str!("../../src/api/openapi.json");
/// Random cases after the sweep.
const CASES: u32 = 700;
/// Words in a path or operationId that mark an operation that would stop the service.
const SKIP_WORDS: [&str; 2] = ["shutdown", "kill"];

// ---------- the document ----------

struct Op {
    path: String,
    method: Method,
    id: String,
    params: Vec<Value>,
    body_schema: Option<Value>,
    body_required: bool,
    responses: Map<String, Value>,
    sse: bool,
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    let mut v = v;
    for _ in 0..16 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r.strip_prefix('#').expect("only local $ref");
                v = doc
                    .pointer(ptr)
                    .unwrap_or_else(|| panic!("dangling $ref {r}"));
            }
            None => return v,
        }
    }
    panic!("$ref loop")
}

fn operations(doc: &Value) -> (Vec<Op>, Vec<String>) {
    let mut ops = Vec::new();
    let mut skipped = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let shared: Vec<Value> = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (m, op) in item.as_object().unwrap() {
            let method = match m.as_str() {
                "get" => Method::GET,
                "post" => Method::POST,
                "put" => Method::PUT,
                "delete" => Method::DELETE,
                "patch" => Method::PATCH,
                _ => continue,
            };
            let id = op["operationId"].as_str().unwrap_or(m).to_owned();
            let lower = format!("{path} {id}").to_lowercase();
            if SKIP_WORDS.iter().any(|w| lower.contains(w)) {
                skipped.push(format!("{} {path}", method));
                continue;
            }
            let mut params: Vec<Value> = shared.iter().map(|p| resolve(doc, p).clone()).collect();
            for p in op
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                params.push(resolve(doc, p).clone());
            }
            let (body_schema, body_required) = match op.get("requestBody") {
                Some(rb) => {
                    let rb = resolve(doc, rb);
                    (
                        rb.pointer("/content/application~1json/schema").cloned(),
                        rb["required"].as_bool().unwrap_or(false),
                    )
                }
                None => (None, false),
            };
            let responses = op["responses"].as_object().cloned().unwrap_or_default();
            let sse = responses.values().any(|r| {
                resolve(doc, r)
                    .pointer("/content/text~1event-stream")
                    .is_some()
            });
            ops.push(Op {
                path: path.clone(),
                method,
                id,
                params,
                body_schema,
                body_required,
                responses,
                sse,
            });
        }
    }
    (ops, skipped)
}

// ---------- the validator (the subset of JSON Schema the document uses) ----------

fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(doc, schema);
    if v.is_null() && s["nullable"].as_bool() == Some(true) {
        return Ok(());
    }
    if let Some(alts) = s.get("oneOf").or_else(|| s.get("anyOf")) {
        let alts = alts.as_array().unwrap();
        let ok = alts
            .iter()
            .filter(|a| validate(doc, a, v, at).is_ok())
            .count();
        let one = s.get("oneOf").is_some();
        if (one && ok != 1) || ok == 0 {
            return Err(format!("{at}: {ok} of the alternatives match {v}"));
        }
    }
    for a in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        validate(doc, a, v, at)?;
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            other => return Err(format!("{at}: the validator does not know type {other}")),
        };
        if !ok {
            return Err(format!("{at}: expected {t}, got {v}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return Err(format!("{at}: {n} < minimum {min}"));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return Err(format!("{at}: {n} > maximum {max}"));
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return Err(format!("{at}: required property `{r}` is missing"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(doc, ps, val, &format!("{at}/{k}"))?,
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{at}: property `{k}` is not in the schema"))
                    }
                    Some(ap @ Value::Object(_)) => validate(doc, ap, val, &format!("{at}/{k}"))?,
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, it) in arr.iter().enumerate() {
            validate(doc, items, it, &format!("{at}/{i}"))?;
        }
    }
    Ok(())
}

// ---------- generation ----------

/// A valid instance of `schema` (a known example when the schema is an opaque object).
fn example(doc: &Value, schema: &Value, fresh: u64) -> Value {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        let s = resolve(doc, schema);
        if s.get("properties").is_none() {
            if let Some(v) = known_example(name, fresh) {
                return v;
            }
        }
    }
    let s = resolve(doc, schema);
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e[0].clone();
    }
    if let Some(alt) = s
        .get("oneOf")
        .or_else(|| s.get("anyOf"))
        .and_then(Value::as_array)
    {
        return example(doc, &alt[0], fresh);
    }
    match s.get("type").and_then(Value::as_str) {
        Some("array") => json!([example(doc, &s["items"], fresh)]),
        Some("string") => json!(format!("x{fresh}")),
        Some("integer") | Some("number") => s.get("minimum").cloned().unwrap_or(json!(1)),
        Some("boolean") => json!(true),
        _ => {
            let mut o = Map::new();
            for (k, p) in s
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                o.insert(k.clone(), example(doc, p, fresh));
            }
            Value::Object(o)
        }
    }
}

/// Valid request bodies for the schemas the document leaves opaque (`type: object` only;
/// the types are `hammer_protocol::api`'s).
fn known_example(schema: &str, fresh: u64) -> Option<Value> {
    Some(match schema {
        "CreateUser" => json!({"name": format!("user{fresh}")}),
        "CreateDevice" => json!({"name": format!("dev{fresh}"), "tags": {"env": "prod"}}),
        "ProvisionRequest" => {
            json!({"owner": "alice", "name": format!("prov{fresh}"), "tags": {"env": "prod"}})
        }
        "SetupRequest" => json!({
            "repo_url": "https://example.com/app.git", "start": "./run.sh",
            "env": {"A": "1"}, "health_window_secs": 5,
        }),
        "CreateDeployment" => json!({
            "targets": {"names": ["alice-dev"]},
            "strategy": {"max_in_flight": 1, "timeout_secs": 60},
        }),
        "EnrollRequest" => json!({
            "token": "not-a-token", "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----",
            "sealing_public_key": "11".repeat(32),
        }),
        _ => return None,
    })
}

#[derive(Debug, Clone)]
enum PathKind {
    Own,
    Others,
    Random(String),
    Long,
    DotDot,
}

#[derive(Debug, Clone)]
enum QueryKind {
    Absent,
    Valid,
    Junk(String),
    Empty,
    Unknown,
}

#[derive(Debug, Clone)]
enum BodyKind {
    Valid,
    Duplicate,
    MissingField(usize),
    WrongType(usize),
    UnknownField,
    HugeString,
    TooLarge,
    InvalidJson,
    NotObject,
    None,
}

#[derive(Debug, Clone)]
struct Case {
    op: usize,
    caller: usize,
    path: PathKind,
    query: QueryKind,
    body: BodyKind,
}

fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{1,24}",
        "[a-z0-9-]{1,12}",
        Just("ünïcödé-☃".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("a=b=c".to_owned()),
        Just("%00".to_owned()),
    ]
}

fn case(nops: usize) -> impl Strategy<Value = Case> {
    let path = prop_oneof![
        3 => Just(PathKind::Own),
        2 => Just(PathKind::Others),
        3 => junk().prop_map(PathKind::Random),
        1 => Just(PathKind::Long),
        1 => Just(PathKind::DotDot),
    ];
    let query = prop_oneof![
        Just(QueryKind::Absent),
        Just(QueryKind::Valid),
        junk().prop_map(QueryKind::Junk),
        Just(QueryKind::Empty),
        Just(QueryKind::Unknown),
    ];
    let body = prop_oneof![
        4 => Just(BodyKind::Valid),
        1 => Just(BodyKind::Duplicate),
        2 => (0usize..8).prop_map(BodyKind::MissingField),
        2 => (0usize..8).prop_map(BodyKind::WrongType),
        1 => Just(BodyKind::UnknownField),
        1 => Just(BodyKind::HugeString),
        1 => Just(BodyKind::TooLarge),
        1 => Just(BodyKind::InvalidJson),
        1 => Just(BodyKind::NotObject),
        1 => Just(BodyKind::None),
    ];
    (0..nops, 0usize..4, path, query, body).prop_map(|(op, caller, path, query, body)| Case {
        op,
        caller,
        path,
        query,
        body,
    })
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------- the world the requests run in ----------

const CALLERS: [&str; 4] = ["no token", "bad token", "user", "admin"];

struct World {
    tokens: [String; 4],
    /// Per caller: the names of its own device, deployment and spare token.
    own: [BTreeMap<&'static str, String>; 4],
    /// Another user's (bob's).
    others: BTreeMap<&'static str, String>,
    fresh: AtomicU64,
}

impl World {
    fn param_kind(path: &str, param: &str) -> &'static str {
        if path.starts_with("/api/v1/deployments") {
            "deployment"
        } else if path.starts_with("/api/v1/tokens") {
            "token"
        } else if path.starts_with("/api/v1/commits") {
            "commit"
        } else {
            let _ = param;
            "device"
        }
    }
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    method: Method,
    token: &str,
    body: Option<Vec<u8>>,
    sse: bool,
) -> Answer {
    let mut req = http.request(method, url).timeout(Duration::from_secs(10));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: no answer: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // The event stream: status and headers only (the body never ends).
    let body = if sse && status == 200 {
        String::new()
    } else {
        resp.text().await.unwrap_or_default()
    };
    Answer {
        status,
        content_type,
        body,
    }
}

struct Ctx {
    doc: Value,
    ops: Vec<Op>,
    world: World,
    http: reqwest::Client,
    enroll_http: reqwest::Client,
    base: String,
    enroll_base: String,
    ran: Mutex<BTreeMap<String, u32>>,
}

impl Ctx {
    /// Builds and sends one case; checks the answer against the document.
    async fn run(&self, c: &Case) -> Result<(), (String, String)> {
        let op = &self.ops[c.op];
        let fresh = self.world.fresh.fetch_add(1, Ordering::Relaxed);
        let own = &self.world.own[c.caller];
        // Path.
        let mut path = op.path.clone();
        for p in op.params.iter().filter(|p| p["in"] == "path") {
            let name = p["name"].as_str().unwrap();
            let kind = World::param_kind(&op.path, name);
            let value = match &c.path {
                // Deleting the caller's own device or token: a fresh one, so later cases
                // still find the caller's device and the caller keeps its token.
                PathKind::Own if op.method == Method::DELETE && c.caller == 2 => {
                    encode(&self.fresh_to_delete(kind, fresh).await)
                }
                PathKind::Own => encode(own.get(kind).map(String::as_str).unwrap_or("none")),
                PathKind::Others => encode(&self.world.others[kind]),
                PathKind::Random(s) => encode(s),
                PathKind::Long => "a".repeat(2000),
                PathKind::DotDot => encode("..x/../y"),
            };
            path = path.replace(&format!("{{{name}}}"), &value);
        }
        // Query.
        let mut query = Vec::new();
        for p in op.params.iter().filter(|p| p["in"] == "query") {
            let name = p["name"].as_str().unwrap();
            let value = match &c.query {
                QueryKind::Absent | QueryKind::Unknown => continue,
                // A valid cursor is one the list gave out: none (the first page).
                QueryKind::Valid if name == "cursor" => continue,
                QueryKind::Valid => match (name, p["schema"]["type"].as_str()) {
                    ("device", _) => own.get("device").cloned().unwrap_or_default(),
                    ("deployment", _) => own.get("deployment").cloned().unwrap_or_default(),
                    ("tag", _) => "env=prod".into(),
                    (_, Some("integer")) => p["schema"]
                        .get("default")
                        .or_else(|| p["schema"].get("minimum"))
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "1".into()),
                    _ => format!("v{fresh}"),
                },
                QueryKind::Junk(s) => s.clone(),
                QueryKind::Empty => String::new(),
            };
            query.push(format!("{name}={}", encode(&value)));
        }
        if matches!(c.query, QueryKind::Unknown) {
            query.push("zzz=%E2%98%83".into());
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        // Body.
        let valid = op
            .body_schema
            .as_ref()
            .map(|s| example(&self.doc, s, fresh));
        let body: Option<Vec<u8>> = match (&c.body, valid) {
            (BodyKind::None, _) => None,
            (BodyKind::InvalidJson, _) => Some(b"{\"name\": \"x\",".to_vec()),
            (BodyKind::NotObject, _) => Some(b"[1, \"two\", null]".to_vec()),
            (_, None) if !op.body_required && c.op.is_multiple_of(2) => None,
            (_, None) => Some(b"{}".to_vec()),
            (BodyKind::Valid, Some(v)) => Some(v.to_string().into_bytes()),
            (BodyKind::Duplicate, Some(v)) => {
                // The same valid body twice: the second may conflict.
                let b = v.to_string().into_bytes();
                let url = format!("{}{}", self.base_of(op), path);
                let token = &self.world.tokens[c.caller];
                send(
                    self.http_of(op),
                    &url,
                    op.method.clone(),
                    token,
                    Some(b.clone()),
                    op.sse,
                )
                .await;
                Some(b)
            }
            (BodyKind::MissingField(i), Some(mut v)) => {
                if let Some(o) = v.as_object_mut() {
                    if let Some(k) = o.keys().nth(i % o.len().max(1)).cloned() {
                        o.remove(&k);
                    }
                }
                Some(v.to_string().into_bytes())
            }
            (BodyKind::WrongType(i), Some(mut v)) => {
                if let Some(o) = v.as_object_mut() {
                    let n = o.len().max(1);
                    if let Some((_, val)) = o.iter_mut().nth(i % n) {
                        *val = match val {
                            Value::String(_) => json!(12345),
                            Value::Number(_) => json!("twelve"),
                            Value::Bool(_) => json!("yes"),
                            Value::Object(_) => json!(["not", "an", "object"]),
                            Value::Array(_) => json!({"not": "an array"}),
                            Value::Null => json!(false),
                        };
                    }
                }
                Some(v.to_string().into_bytes())
            }
            (BodyKind::UnknownField, Some(mut v)) => {
                if let Some(o) = v.as_object_mut() {
                    o.insert("surprise".into(), json!("field"));
                }
                Some(v.to_string().into_bytes())
            }
            (BodyKind::HugeString, Some(mut v)) => {
                if let Some(o) = v.as_object_mut() {
                    for val in o.values_mut() {
                        if val.is_string() {
                            *val = json!("é".repeat(100_000));
                            break;
                        }
                    }
                }
                Some(v.to_string().into_bytes())
            }
            (BodyKind::TooLarge, Some(_)) => Some(
                json!({"name": "x".repeat(1_100_000)})
                    .to_string()
                    .into_bytes(),
            ),
        };
        let shown_body = body.as_ref().map(|b| {
            let s = String::from_utf8_lossy(b);
            if s.len() > 200 {
                format!(
                    "{}… ({} bytes)",
                    &s[..s.floor_char_boundary_compat(200)],
                    s.len()
                )
            } else {
                s.into_owned()
            }
        });
        let url = format!("{}{}", self.base_of(op), path);
        let token = &self.world.tokens[c.caller];
        let a = send(
            self.http_of(op),
            &url,
            op.method.clone(),
            token,
            body,
            op.sse,
        )
        .await;
        *self
            .ran
            .lock()
            .unwrap()
            .entry(format!("{} {} {}", op.method, op.path, a.status))
            .or_default() += 1;
        let what = || {
            format!(
                "{} ({} {}) as {}: {} {} body {:?}",
                op.id,
                op.method,
                op.path,
                CALLERS[c.caller],
                op.method,
                if path.len() > 300 {
                    &path[..path.floor_char_boundary_compat(300)]
                } else {
                    &path
                },
                shown_body
            )
        };
        let code = a.status.to_string();
        let class = format!("{}XX", &code[..1]);
        let Some(resp) = op
            .responses
            .get(&code)
            .or_else(|| op.responses.get(&class))
            .or_else(|| op.responses.get("default"))
        else {
            return Err((
                format!("{} {}", op.id, a.status),
                format!(
                    "undocumented status {} for {}; answer: {}",
                    a.status,
                    what(),
                    &a.body[..a.body.floor_char_boundary_compat(300)]
                ),
            ));
        };
        // Another user's device, deployment or token is "no such" to an ordinary user.
        if matches!(c.path, PathKind::Others)
            && c.caller == 2
            && op
                .params
                .iter()
                .any(|p| p["in"] == "path" && World::param_kind(&op.path, "") != "commit")
            && (200..300).contains(&a.status)
        {
            return Err((
                format!("{} {} others", op.id, a.status),
                format!(
                    "another user's resource answered {} to {}: {}",
                    a.status,
                    what(),
                    a.body
                ),
            ));
        }
        if a.status >= 500 {
            return Err((
                format!("{} {}", op.id, a.status),
                format!("server error {} for {}: {}", a.status, what(), a.body),
            ));
        }
        let resp = resolve(&self.doc, resp);
        if op.sse && a.status == 200 {
            if !a.content_type.starts_with("text/event-stream") {
                return Err((
                    op.id.clone(),
                    format!("{}: content type {}", what(), a.content_type),
                ));
            }
            return Ok(());
        }
        if let Some(schema) = resp.pointer("/content/application~1json/schema") {
            if !a.content_type.starts_with("application/json") {
                return Err((
                    op.id.clone(),
                    format!(
                        "{}: status {} should be JSON, content type {:?}",
                        what(),
                        a.status,
                        a.content_type
                    ),
                ));
            }
            let v: Value = serde_json::from_str(&a.body).map_err(|e| {
                (
                    op.id.clone(),
                    format!("{}: status {} body is not JSON: {e}", what(), a.status),
                )
            })?;
            validate(&self.doc, schema, &v, "").map_err(|e| {
                (
                    format!("{} {} schema", op.id, a.status),
                    format!(
                        "{}: status {} body breaks its schema: {e}",
                        what(),
                        a.status
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// A new device or token of the user (alice), to be deleted.
    async fn fresh_to_delete(&self, kind: &str, fresh: u64) -> String {
        let alice = &self.world.tokens[2];
        let (url, body) = match kind {
            "device" => ("/api/v1/devices", json!({"name": format!("del{fresh}")})),
            _ => ("/api/v1/tokens", json!({})),
        };
        let a = send(
            &self.http,
            &format!("{}{url}", self.base),
            Method::POST,
            alice,
            Some(body.to_string().into_bytes()),
            false,
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let v: Value = serde_json::from_str(&a.body).unwrap();
        match kind {
            "device" => v["device"]["name"].as_str().unwrap().to_owned(),
            _ => v["id"].as_str().unwrap().to_owned(),
        }
    }

    fn base_of(&self, op: &Op) -> &str {
        if op.path == "/api/v1/enroll" {
            &self.enroll_base
        } else {
            &self.base
        }
    }

    fn http_of(&self, op: &Op) -> &reqwest::Client {
        if op.path == "/api/v1/enroll" {
            &self.enroll_http
        } else {
            &self.http
        }
    }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        let mut i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

impl FloorBoundary for String {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        self.as_str().floor_char_boundary_compat(i)
    }
}

#[test]
fn every_answer_is_in_the_openapi_document() {
    let doc: Value = serde_json::from_str(DOC).expect("openapi.json is valid JSON");
    let (ops, skipped) = operations(&doc);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::start());
    let ctx = rt.block_on(async {
        let alice = h.user("alice").await;
        let bob = h.user("bob").await;
        let mut own: [BTreeMap<&'static str, String>; 4] = Default::default();
        let mut others = BTreeMap::new();
        // Devices: alice's and the admin's are set up and connected (so deployments exist).
        let dev = h
            .ready_device(
                "alice",
                &alice,
                "alice-dev",
                json!({"env": "prod"}),
                Behavior::Succeed,
            )
            .await;
        let bob_dev = h
            .ready_device("bob", &bob, "bob-dev", json!({}), Behavior::Silent)
            .await;
        let (s, bob_dep) = h
            .post(
                "/api/v1/deployments",
                &bob,
                json!({"targets": {"names": ["bob-dev"]}}),
            )
            .await;
        assert_eq!(s, 201, "{bob_dep}");
        let (s, dep) = h
            .post(
                "/api/v1/deployments",
                &alice,
                json!({"targets": {"names": ["alice-dev"]}}),
            )
            .await;
        assert_eq!(s, 201, "{dep}");
        let (_, bob_tok) = h.post("/api/v1/tokens", &bob, json!({})).await;
        for (i, tok) in [(2usize, &alice), (3, &h.admin)] {
            let (s, t) = h.post("/api/v1/tokens", tok, json!({})).await;
            assert_eq!(s, 201, "{t}");
            own[i].insert("token", t["id"].as_str().unwrap().to_owned());
        }
        for o in own.iter_mut() {
            o.insert("device", "alice-dev".into());
            o.insert("deployment", dep["id"].as_str().unwrap().to_owned());
            o.entry("token").or_insert_with(|| "tok-none".into());
            // The commit the simulated devices report running.
            o.insert("commit", "1".repeat(40));
        }
        others.insert("device", "bob-dev".into());
        // Commits are not owned: "another user's" is one nobody runs.
        others.insert("commit", "2".repeat(40));
        others.insert("deployment", bob_dep["id"].as_str().unwrap().to_owned());
        others.insert("token", bob_tok["id"].as_str().unwrap().to_owned());
        // The enrollment listener trusts the fleet CA.
        let bundle = h.provision("bob", "bob-enroll", json!({})).await;
        let enroll_http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(bundle.ca_pem.as_bytes()).unwrap())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let enroll_base = h
            .svc()
            .enroll_url
            .trim_end_matches('/')
            .trim_end_matches("/api/v1/enroll")
            .to_owned();
        std::mem::forget(dev);
        std::mem::forget(bob_dev);
        Ctx {
            doc: doc.clone(),
            ops,
            world: World {
                tokens: [
                    String::new(),
                    "hm_not_a_real_token".into(),
                    alice.clone(),
                    h.admin.clone(),
                ],
                own,
                others,
                fresh: AtomicU64::new(0),
            },
            http: h.http.clone(),
            enroll_http,
            base: h.base.clone(),
            enroll_base,
            ran: Mutex::new(BTreeMap::new()),
        }
    });
    // Failures by operation and status: the first request that showed it, and how many did.
    let failures: Mutex<BTreeMap<String, (String, u32)>> = Mutex::new(BTreeMap::new());
    let note = |(key, msg): (String, String)| {
        failures.lock().unwrap().entry(key).or_insert((msg, 0)).1 += 1;
    };
    // The sweep: every operation's valid request as every caller, on its own and another's.
    for op in 0..ctx.ops.len() {
        for caller in 0..4 {
            for path in [PathKind::Own, PathKind::Others] {
                let c = Case {
                    op,
                    caller,
                    path,
                    query: QueryKind::Valid,
                    body: BodyKind::Valid,
                };
                if let Err(e) = rt.block_on(ctx.run(&c)) {
                    note(e);
                }
            }
        }
    }
    // The random cases: fixed seed, bounded count; every failure is collected (no shrinking
    // needed to read them: each names its operation, caller, request and status).
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[19; 32]),
    );
    let _ = runner.run(&case(ctx.ops.len()), |c| {
        if let Err(e) = rt.block_on(ctx.run(&c)) {
            note(e);
        }
        Ok::<(), TestCaseError>(())
    });
    let ran = ctx.ran.lock().unwrap();
    let total: u32 = ran.values().sum();
    eprintln!(
        "contract: {} operations, {total} requests, skipped {:?}",
        ctx.ops.len(),
        skipped
    );
    for (k, n) in ran.iter() {
        eprintln!("  {k}: {n}");
    }
    for op in &ctx.ops {
        let sent = format!("{} {} ", op.method, op.path);
        assert!(
            ran.keys().any(|k| k.starts_with(&sent)),
            "{} {} was never sent",
            op.method,
            op.path
        );
    }
    drop(ran);
    if let Some(svc) = h.svc {
        rt.block_on(svc.shutdown());
    }
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} kinds of answer break the OpenAPI document:\n{}",
        failures.len(),
        failures
            .values()
            .map(|(msg, n)| format!("- ({n}×) {msg}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_validator_refuses_what_the_schema_does_not_allow() {
    let doc: Value = serde_json::from_str(DOC).unwrap();
    let user = json!({"$ref": "#/components/schemas/UserView"});
    let ok = json!({"id": "u1", "name": "alice", "admin": false});
    assert_eq!(validate(&doc, &user, &ok, ""), Ok(()));
    let wrong_type = json!({"id": "u1", "name": "alice", "admin": "no"});
    assert!(validate(&doc, &user, &wrong_type, "").is_err());
    let missing = json!({"id": "u1", "admin": false});
    assert!(validate(&doc, &user, &missing, "").is_err());
    let list = json!({"type": "array", "items": user});
    assert!(validate(&doc, &list, &json!([ok, 3]), "").is_err());
    let action = json!({"$ref": "#/components/schemas/ActionAccepted"});
    let nulls = json!({"device": "d", "action": "stop", "generation": null, "deployment_id": null});
    assert_eq!(validate(&doc, &action, &nulls, ""), Ok(()));
    let negative =
        json!({"device": "d", "action": "stop", "generation": -1, "deployment_id": null});
    assert!(validate(&doc, &action, &negative, "").is_err());
    let error = json!({"$ref": "#/components/schemas/ErrorBody"});
    assert!(validate(&doc, &error, &json!({"message": "x"}), "").is_err());
}
