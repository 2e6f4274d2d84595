//! The API keeps its own contract (issue #19): a property-based test that reads
//! `service/src/api/openapi.json` and, for every operation (path × method) it lists, sends
//! requests generated from the document — path parameters (the caller's own device,
//! deployment or token, another user's, random unicode, long, `..`-like), query parameters by
//! their schema and junk, bodies generated from the request schema (every choice it leaves:
//! each `oneOf` alternative, optional properties given, absent or null) plus mutations (a
//! required field missing, wrong types, an unknown field, huge strings, invalid JSON, no body)
//! — as four callers (no token, a bad token, an ordinary user, the admin). No schema in the
//! document is opaque: each body and answer type of `hammer_protocol::api` is written out.
//! Only four properties of request bodies are not taken from the document ([`world_value`]:
//! an existing user, the caller's devices, and two syntaxes a schema without `pattern`
//! cannot state). Every answer must be a status the document lists for that
//! operation, never a 5xx, and a JSON body must validate against the response schema (a small
//! validator for the subset of JSON Schema the document uses: `$ref`, `type`, `nullable`,
//! `properties`, `required`, `additionalProperties`, `items`, `enum`, `oneOf`/`anyOf`/`allOf`,
//! `minimum`/`maximum`; `default` and `description` are documentation). One more property: an ordinary user's request naming another user's
//! device, deployment or token never succeeds.
//!
//! The document and the Rust types are kept in step by a second test: every schema named
//! after a `hammer_protocol` type validates what serde writes for values of the type (every
//! `Option` given and none, each enum variant), and every request schema's generated values
//! (the same generator) deserialize into the type, which also refuses them without a property
//! the schema requires, and refuses an unknown property exactly when the schema does.
//!
//! Deterministic: a fixed proptest seed and a bounded number of cases, after one sweep that
//! sends each operation's valid request as each caller. The event stream (`GET
//! /api/v1/events`) is checked for its status and content type only; its body is never read.
//! Operations that would stop the service (a path or operationId naming shutdown or kill)
//! are skipped. `POST /api/v1/enroll` is sent to the HTTPS enrollment listener, where it
//! is served.

use crate::common::*;
use hammer_protocol::api;
use hammer_protocol::{GitCredentials, InstallStep, Phase, ReuseDir};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
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

/// Where a schema leaves a choice, which one [`example`] makes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Pick {
    /// Which alternative of a `oneOf`/`anyOf` and which `enum` value (modulo their number).
    alt: usize,
    /// What the properties a schema does not require get.
    optional: Optional,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Optional {
    /// A value (what the sweep sends).
    #[default]
    Given,
    /// Left out.
    Absent,
    /// `null` where the property is nullable, left out where it is not.
    Null,
}

impl Pick {
    /// The `n`th way to choose, `n` in `0..Pick::COUNT` covers each kind with two alternatives.
    const COUNT: usize = 6;

    fn nth(n: usize) -> Pick {
        Pick {
            alt: n / 3,
            optional: [Optional::Given, Optional::Absent, Optional::Null][n % 3],
        }
    }
}

/// A valid instance of `schema`, generated from it alone except for the few properties
/// [`world_value`] names. Strings are `x{fresh}-{n}` (distinct within one value: a reused
/// folder and its key file are different paths); integers the `default`, else the `minimum`,
/// else 1; arrays one item; maps (`additionalProperties` without `properties`) empty.
fn example(doc: &Value, schema: &Value, fresh: u64, pick: Pick) -> Value {
    let mut n = 0;
    generate(doc, schema, fresh, pick, &mut n)
}

fn generate(doc: &Value, schema: &Value, fresh: u64, pick: Pick, n: &mut u32) -> Value {
    let name = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"));
    let s = resolve(doc, schema);
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e[pick.alt % e.len()].clone();
    }
    if let Some(alt) = s
        .get("oneOf")
        .or_else(|| s.get("anyOf"))
        .and_then(Value::as_array)
    {
        return generate(doc, &alt[pick.alt % alt.len()], fresh, pick, n);
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        // Each part is an object schema (`allOf: [$ref]` carries `nullable` or a `default`
        // beside a reference): the union of their properties.
        let mut o = Map::new();
        for part in all {
            if let Value::Object(p) = generate(doc, part, fresh, pick, n) {
                o.extend(p);
            }
        }
        return Value::Object(o);
    }
    match s.get("type").and_then(Value::as_str) {
        Some("array") => json!([generate(doc, &s["items"], fresh, pick, n)]),
        Some("string") => {
            *n += 1;
            json!(format!("x{fresh}-{n}"))
        }
        Some("integer") | Some("number") => s
            .get("default")
            .or_else(|| s.get("minimum"))
            .cloned()
            .unwrap_or(json!(1)),
        Some("boolean") => json!(true),
        _ => {
            let required: Vec<&str> = s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut o = Map::new();
            for (k, p) in s
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let v = if required.contains(&k.as_str()) {
                    generate(doc, p, fresh, pick, n)
                } else {
                    match pick.optional {
                        Optional::Given => generate(doc, p, fresh, pick, n),
                        Optional::Absent => continue,
                        Optional::Null if resolve(doc, p)["nullable"] == true => Value::Null,
                        Optional::Null => continue,
                    }
                };
                let v = match name.and_then(|name| world_value(name, k)) {
                    Some(w) if !v.is_null() => w,
                    _ => v,
                };
                o.insert(k.clone(), v);
            }
            Value::Object(o)
        }
    }
}

/// The properties of request bodies whose valid values depend on the world the contract test
/// runs in, or on a syntax the schema cannot state (it has no `pattern`): without these the
/// generated request is refused, and the operation's success path is never tried. Everything
/// else in every request body comes from the document.
fn world_value(schema: &str, property: &str) -> Option<Value> {
    Some(match (schema, property) {
        // An existing ordinary user's name (the schema cannot know who exists).
        ("ProvisionRequest", "owner") => json!("alice"),
        // The caller's own devices (alice's, set up and connected by the test).
        ("CreateDeployment", "targets") => json!({"names": ["alice-dev"]}),
        // A full commit id (40 hex digits): the one the simulated devices report running.
        ("CreateDeployment", "commit") => json!("1".repeat(40)),
        // A repository URL the service parses (`parse_remote_url`); nothing fetches it, the
        // simulated device only reports phases.
        ("SetupRequest", "repo_url") => json!("https://example.com/app.git"),
        // A window's text (`hammer_protocol::window`) and one of the caller's devices.
        ("CreateWindow", "window") => json!("mon-fri 22:00-04:00"),
        ("CreateWindow", "applies_to") => json!({"device": "alice-dev"}),
        // A webhook URL the service accepts (`webhooks::rules::check_url`); deliveries to it
        // just fail.
        ("CreateWebhook", "url") => json!("https://example.com/hook"),
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
    /// Which choices the body's schema leaves ([`Pick::nth`]).
    pick: usize,
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
    (0..nops, 0usize..4, path, query, body, 0..Pick::COUNT).prop_map(
        |(op, caller, path, query, body, pick)| Case {
            op,
            caller,
            path,
            query,
            body,
            pick,
        },
    )
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
        } else if path.starts_with("/api/v1/webhooks") {
            "webhook"
        } else if path.starts_with("/api/v1/commits") {
            "commit"
        } else if path.starts_with("/api/v1/windows") {
            "window"
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
            .map(|s| example(&self.doc, s, fresh, Pick::nth(c.pick)));
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
            "window" => (
                "/api/v1/windows",
                json!({"applies_to": {"tag": "env=prod"}, "window": "daily 02:00-03:00"}),
            ),
            "webhook" => (
                "/api/v1/webhooks",
                json!({"url": format!("https://example.com/del{fresh}")}),
            ),
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
        if kind == "webhook" && a.status == 429 {
            // Alice has the most webhooks the generated requests left her: delete one of
            // those instead (never the world's own).
            let l = send(
                &self.http,
                &format!("{}/api/v1/webhooks", self.base),
                Method::GET,
                alice,
                None,
                false,
            )
            .await;
            let v: Value = serde_json::from_str(&l.body).unwrap();
            let own = &self.world.own[2]["webhook"];
            return v
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_str().unwrap().to_owned())
                .rfind(|id| id != own)
                .unwrap();
        }
        assert_eq!(a.status, 201, "{}", a.body);
        let v: Value = serde_json::from_str(&a.body).unwrap();
        match kind {
            "device" => v["device"]["name"].as_str().unwrap().to_owned(),
            "webhook" => v["webhook"]["id"].as_str().unwrap().to_owned(),
            // A window and a token answer their id.
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
        let window = json!({"applies_to": {"device": "alice-dev"}, "window": "daily 02:00-03:00"});
        let (s, alice_win) = h.post("/api/v1/windows", &alice, window).await;
        assert_eq!(s, 201, "{alice_win}");
        let window = json!({"applies_to": {"tag": "a=b"}, "window": "sat,sun 00:00-24:00"});
        let (s, bob_win) = h.post("/api/v1/windows", &bob, window).await;
        assert_eq!(s, 201, "{bob_win}");
        for (i, tok) in [(2usize, &alice), (3, &h.admin)] {
            let (s, t) = h.post("/api/v1/tokens", tok, json!({})).await;
            assert_eq!(s, 201, "{t}");
            own[i].insert("token", t["id"].as_str().unwrap().to_owned());
            let hook = json!({"url": "https://example.com/own"});
            let (s, w) = h.post("/api/v1/webhooks", tok, hook).await;
            assert_eq!(s, 201, "{w}");
            own[i].insert("webhook", w["webhook"]["id"].as_str().unwrap().to_owned());
        }
        let hook = json!({"url": "https://example.com/bob"});
        let (s, bob_hook) = h.post("/api/v1/webhooks", &bob, hook).await;
        assert_eq!(s, 201, "{bob_hook}");
        for o in own.iter_mut() {
            o.insert("device", "alice-dev".into());
            o.insert("deployment", dep["id"].as_str().unwrap().to_owned());
            o.entry("token").or_insert_with(|| "tok-none".into());
            o.insert("window", alice_win["id"].as_str().unwrap().to_owned());
            o.entry("webhook").or_insert_with(|| "wh-none".into());
            // The commit the simulated devices report running.
            o.insert("commit", "1".repeat(40));
        }
        others.insert("device", "bob-dev".into());
        // Commits are not owned: "another user's" is one nobody runs.
        others.insert("commit", "2".repeat(40));
        others.insert("deployment", bob_dep["id"].as_str().unwrap().to_owned());
        others.insert("token", bob_tok["id"].as_str().unwrap().to_owned());
        others.insert("window", bob_win["id"].as_str().unwrap().to_owned());
        others.insert(
            "webhook",
            bob_hook["webhook"]["id"].as_str().unwrap().to_owned(),
        );
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
                    pick: 0,
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

// ---------- the document and the types ----------

type Parse = fn(Value) -> Result<(), String>;

fn parses<T: DeserializeOwned>(v: Value) -> Result<(), String> {
    serde_json::from_value::<T>(v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The types of the request bodies and of their parts, by schema name.
fn request_types() -> BTreeMap<&'static str, Parse> {
    BTreeMap::from([
        ("CreateUser", parses::<api::CreateUser> as Parse),
        ("CreateDevice", parses::<api::CreateDevice>),
        ("ProvisionRequest", parses::<api::ProvisionRequest>),
        ("SetupRequest", parses::<api::SetupRequest>),
        ("GitCredentials", parses::<GitCredentials>),
        ("InstallStep", parses::<InstallStep>),
        ("EnrollRequest", parses::<api::EnrollRequest>),
        ("CreateDeployment", parses::<api::CreateDeployment>),
        ("Targets", parses::<api::Targets>),
        ("Strategy", parses::<api::Strategy>),
        ("PhaseSize", parses::<api::PhaseSize>),
        ("MarkBad", parses::<api::MarkBad>),
        ("CreateWindow", parses::<api::CreateWindow>),
        ("CreateWebhook", parses::<api::CreateWebhook>),
    ])
}

fn to_json<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

/// A value of `T` made from `v`, as serde writes it. For the views other changes add fields
/// to (`DeviceView`, `HistoryEntry`): built from JSON, a new defaulted field does not break
/// this test's build; the fields written here are still checked.
fn written<T: Serialize + DeserializeOwned>(v: Value) -> (T, Value) {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    let w = to_json(&t);
    (t, w)
}

/// Real values of each type the document names, serialized by serde: every `Option` given
/// and every `Option` `None`, each variant of each enum.
fn samples() -> BTreeMap<&'static str, Vec<Value>> {
    use api::*;
    use hammer_protocol::WireName;
    let s = |x: &str| x.to_owned();
    let webhook_view = WebhookView {
        id: s("w1"),
        url: s("https://example.com/h"),
        events: vec![WebhookEvent::DeviceRolledBack],
        secret_prefix: s("abcdef"),
        created_at: 1,
    };
    let attempts = vec![
        DeliveryAttempt {
            time: 1,
            status: Some(500),
            error: None,
            duration_ms: 3,
        },
        DeliveryAttempt {
            time: 2,
            status: None,
            error: Some(s("cannot connect: connection refused")),
            duration_ms: 1,
        },
    ];
    let health = |pid: Option<u32>| HealthView {
        time: 1,
        app_running: pid.is_some(),
        pid,
        restarts: 2,
        uptime_secs: 3,
        app_rss_kb: 4,
        app_cpu_ms: 5,
        manager_version: s("0.1.0"),
    };
    let windows = vec![
        MaintenanceWindow {
            id: s("w1"),
            name: Some(s("nightly")),
            applies_to: AppliesTo::Device(s("dev")),
            window: s("mon-fri 22:00-04:00"),
            created_at: 1,
        },
        MaintenanceWindow {
            id: s("w2"),
            name: None,
            applies_to: AppliesTo::Tag(s("site=lab")),
            window: s("daily 02:00-03:30"),
            created_at: 2,
        },
    ];
    let (_, device_full) = written::<DeviceView>(json!({
        "id": "d1", "name": "dev", "tags": {"env": "prod"}, "state": "ready", "online": true,
        "last_seen": 7, "current_commit": "1".repeat(40), "current_commit_subject": "Fix the pump",
        "app_phase": "running",
        "run_state": "stopped", "generation": 3, "reported_generation": 2,
        "current_deployment": "dep1",
        "setup": {
            "repo_url": "https://h.example/r.git", "git_ref": "main", "start": "./run",
            "env": {"A": "1"}, "health_window_secs": 10, "health_cmd": "true",
            "credentials": "ssh", "install": {"command": "npm ci"}, "full_history": true,
            "warnings": ["w"],
        },
        "last_health": to_json(&health(Some(9))),
    }));
    let (device, device_none) = written::<DeviceView>(json!({
        "id": "d1", "name": "dev", "tags": {}, "state": "registered", "online": false,
        "last_seen": null, "current_commit": null, "app_phase": null, "run_state": "running",
        "generation": 0, "current_deployment": null, "setup": null, "last_health": null,
    }));
    let (entry_full, entry_full_json) = written::<HistoryEntry>(json!({
        "time": 1, "deployment_id": "dep1", "deployer": "alice", "generation": 2,
        "phase": "fetched", "commit": "1".repeat(40), "detail": "d", "log_tail": ["l"],
        "commit_subject": "Fix the pump",
    }));
    let (entry_none, entry_none_json) =
        written::<HistoryEntry>(json!({"time": 1, "phase": "received"}));
    let strategy_full = Strategy {
        phases: vec![PhaseSize::Devices(1), PhaseSize::Percent(10)],
        soak_secs: Some(600),
        start_at: Some(1_900_000_000_000),
        max_in_flight: Some(2),
        abort_at_percent: Some(50),
        abort_min_devices: 3,
        timeout_secs: 60,
        retries: 1,
    };
    let target =
        |last_phase, commit: Option<String>, detail: Option<String>| DeploymentTargetView {
            device: s("dev"),
            state: TargetState::InFlight,
            attempts: 1,
            last_phase,
            commit,
            detail,
            updated_at: 4,
        };
    let deployment_full = DeploymentView {
        phasing: Some(PhasingView {
            current: 2,
            count: 3,
            ends: vec![1, 2, 3],
            state: PhaseGateState::Held,
            soak_until: Some(9),
            held_reason: Some(s("phase 2: dev crashed after it succeeded")),
            promotions: vec![
                PromotionView {
                    phase: 1,
                    at: 8,
                    by: None,
                },
                PromotionView {
                    phase: 1,
                    at: 8,
                    by: Some(s("alice")),
                },
            ],
        }),
        id: s("dep1"),
        deployer: s("alice"),
        created_at: 1,
        finished_at: Some(2),
        git_ref: Some(s("main")),
        commit: Some("1".repeat(40)),
        strategy: strategy_full.clone(),
        state: DeploymentState::Failed,
        reason: Some(s("r")),
        targets: vec![target(
            Some(Phase::Running),
            Some("1".repeat(40)),
            Some(s("d")),
        )],
        paused: true,
    };
    let deployment_none = DeploymentView {
        finished_at: None,
        git_ref: None,
        commit: None,
        strategy: Strategy::default(),
        state: DeploymentState::Running,
        reason: None,
        targets: vec![target(None, None, None)],
        paused: false,
        phasing: None,
        ..deployment_full.clone()
    };
    let user = UserView {
        id: s("u1"),
        name: s("alice"),
        admin: false,
    };
    let action = |g: Option<u64>, d: Option<String>| ActionAccepted {
        device: s("dev"),
        action: s("rollback"),
        generation: g,
        deployment_id: d,
    };
    let bad = |reason| BadCommit {
        commit: "1".repeat(40),
        reason,
        marked_at: 5,
    };
    let setup_full = SetupRequest {
        repo_url: s("https://h.example/r.git"),
        git_ref: s("v1"),
        start: s("./run"),
        env: BTreeMap::from([(s("A"), s("1"))]),
        health_window_secs: 30,
        health_cmd: Some(s("true")),
        credentials: Some(GitCredentials::Https {
            username: s("u"),
            token: s("t"),
        }),
        install: Some(InstallStep {
            command: s("npm ci"),
            timeout_secs: 60,
            reuse: vec![ReuseDir {
                dir: s("node_modules"),
                key: s("package-lock.json"),
            }],
        }),
        full_history: true,
    };
    let setup_ssh = SetupRequest {
        credentials: Some(GitCredentials::Ssh {
            private_key: s("-----BEGIN OPENSSH PRIVATE KEY-----"),
            known_hosts: s("h.example ssh-ed25519 AAAA"),
        }),
        ..setup_full.clone()
    };
    let setup_none = SetupRequest {
        git_ref: api::default_ref(),
        env: BTreeMap::new(),
        health_window_secs: api::default_health_window(),
        health_cmd: None,
        credentials: None,
        install: None,
        full_history: false,
        ..setup_full.clone()
    };
    let deploy_full = CreateDeployment {
        targets: Targets::Names(vec![s("dev")]),
        git_ref: Some(s("main")),
        commit: Some("1".repeat(40)),
        strategy: strategy_full.clone(),
    };
    let deploy_none = CreateDeployment {
        targets: Targets::Tag(s("env=prod")),
        git_ref: None,
        commit: None,
        strategy: Strategy::default(),
    };
    let events = [
        Event::Status {
            device: s("dev"),
            entry: entry_full,
        },
        Event::Status {
            device: s("dev"),
            entry: entry_none,
        },
        Event::Presence {
            device: s("dev"),
            online: true,
            time: 1,
        },
        Event::Health {
            device: s("dev"),
            health: health(Some(9)),
        },
        Event::Health {
            device: s("dev"),
            health: health(None),
        },
        Event::Logs {
            device: s("dev"),
            lines: vec![s("a"), s("b")],
        },
        Event::Deployment {
            deployment: deployment_full.clone(),
        },
        Event::Deployment {
            deployment: deployment_none.clone(),
        },
        Event::Unknown,
    ];
    let install = setup_full.install.clone().unwrap();
    BTreeMap::from([
        ("ErrorBody", vec![to_json(&ErrorBody { error: s("e") })]),
        ("CreateUser", vec![to_json(&CreateUser { name: s("bob") })]),
        ("UserView", vec![to_json(&user)]),
        (
            "NewToken",
            vec![to_json(&NewToken {
                id: s("t1"),
                token: s("hm_x"),
                user: user.clone(),
            })],
        ),
        (
            "TokenView",
            vec![to_json(&TokenView {
                id: s("t1"),
                created_at: 1,
            })],
        ),
        (
            "CreateDevice",
            vec![
                to_json(&CreateDevice {
                    name: s("dev"),
                    tags: BTreeMap::from([(s("env"), s("prod"))]),
                }),
                to_json(&CreateDevice {
                    name: s("dev"),
                    tags: BTreeMap::new(),
                }),
            ],
        ),
        (
            "CreatedDevice",
            vec![to_json(&CreatedDevice {
                device: device.clone(),
                enrollment_token: s("et"),
                enrollment_expires_at: 1,
                ca_sha256: s("ab"),
                enroll_url: s("https://h:1"),
            })],
        ),
        ("DeviceView", vec![device_full.clone(), device_none]),
        (
            "SetupRequest",
            vec![
                to_json(&setup_full),
                to_json(&setup_ssh),
                to_json(&setup_none),
            ],
        ),
        (
            "GitCredentials",
            vec![
                to_json(&setup_full.credentials),
                to_json(&setup_ssh.credentials),
            ],
        ),
        (
            "InstallStep",
            vec![
                to_json(&install),
                to_json(&InstallStep {
                    reuse: Vec::new(),
                    ..install.clone()
                }),
            ],
        ),
        (
            "HealthView",
            vec![to_json(&health(Some(1))), to_json(&health(None))],
        ),
        (
            "EnrollRequest",
            vec![to_json(&EnrollRequest {
                token: s("et"),
                csr_pem: s("-----BEGIN CERTIFICATE REQUEST-----"),
                sealing_public_key: "11".repeat(32),
            })],
        ),
        (
            "EnrollSignatures",
            vec![to_json(&EnrollSignatures {
                broker_url: s("30"),
                service_public_key: s("31"),
            })],
        ),
        (
            "EnrollResponse",
            vec![to_json(&EnrollResponse {
                device_id: s("d1"),
                owner: s("u1"),
                cert_pem: s("c"),
                ca_pem: s("ca"),
                broker_url: s("mqtts://h:8883"),
                service_public_key: s("ab"),
                ca_signatures: EnrollSignatures {
                    broker_url: s("30"),
                    service_public_key: s("31"),
                },
            })],
        ),
        (
            "ProvisionRequest",
            vec![
                to_json(&ProvisionRequest {
                    owner: s("alice"),
                    name: s("dev"),
                    tags: BTreeMap::from([(s("env"), s("prod"))]),
                }),
                to_json(&ProvisionRequest {
                    owner: s("alice"),
                    name: s("dev"),
                    tags: BTreeMap::new(),
                }),
            ],
        ),
        (
            "ProvisionResponse",
            vec![to_json(&ProvisionResponse {
                device,
                ca_pem: s("ca"),
                cert_pem: s("c"),
                key_pem: s("k"),
                sealing_private_key: "22".repeat(32),
                config_toml: s("device_id = \"d1\""),
            })],
        ),
        (
            "Strategy",
            vec![to_json(&strategy_full), to_json(&Strategy::default())],
        ),
        (
            "PhaseSize",
            vec![
                to_json(&PhaseSize::Devices(1)),
                to_json(&PhaseSize::Percent(10)),
            ],
        ),
        (
            "PhasingView",
            vec![
                to_json(deployment_full.phasing.as_ref().unwrap()),
                to_json(&PhasingView {
                    soak_until: None,
                    held_reason: None,
                    promotions: Vec::new(),
                    state: PhaseGateState::Running,
                    ..deployment_full.phasing.clone().unwrap()
                }),
            ],
        ),
        (
            "Targets",
            vec![to_json(&deploy_full.targets), to_json(&deploy_none.targets)],
        ),
        (
            "CreateDeployment",
            vec![to_json(&deploy_full), to_json(&deploy_none)],
        ),
        (
            "DeploymentView",
            vec![to_json(&deployment_full), to_json(&deployment_none)],
        ),
        ("HistoryEntry", vec![entry_full_json, entry_none_json]),
        (
            "ActionAccepted",
            vec![
                to_json(&action(Some(2), Some(s("dep1")))),
                to_json(&action(None, None)),
            ],
        ),
        (
            "MarkBad",
            vec![
                to_json(&MarkBad {
                    reason: Some(s("r")),
                    rollback: true,
                }),
                to_json(&MarkBad::default()),
            ],
        ),
        (
            "BadCommits",
            vec![to_json(&BadCommits {
                commits: vec![bad(Some(s("r"))), bad(None)],
            })],
        ),
        (
            "MarkedBad",
            vec![
                to_json(&MarkedBad {
                    commit: bad(Some(s("r"))),
                    stopped: vec![s("dep1")],
                    rolled_back: vec![action(Some(2), None)],
                    not_rolled_back: vec![NotRolledBack {
                        device: s("dev"),
                        reason: s("r"),
                    }],
                }),
                to_json(&MarkedBad {
                    commit: bad(None),
                    stopped: Vec::new(),
                    rolled_back: Vec::new(),
                    not_rolled_back: Vec::new(),
                }),
            ],
        ),
        (
            "LogLines",
            vec![to_json(&LogLines {
                device: s("dev"),
                lines: vec![s("a")],
            })],
        ),
        ("Event", events.iter().map(to_json).collect()),
        (
            "AppliesTo",
            vec![
                to_json(&AppliesTo::Device(s("dev"))),
                to_json(&AppliesTo::Tag(s("site=lab"))),
            ],
        ),
        (
            "CreateWindow",
            vec![
                to_json(&CreateWindow {
                    applies_to: AppliesTo::Device(s("dev")),
                    window: s("mon-fri 22:00-04:00"),
                    name: Some(s("nightly")),
                }),
                to_json(&CreateWindow {
                    applies_to: AppliesTo::Tag(s("site=lab")),
                    window: s("daily 02:00-03:30"),
                    name: None,
                }),
            ],
        ),
        ("MaintenanceWindow", windows.iter().map(to_json).collect()),
        (
            "DeviceWindows",
            vec![
                to_json(&DeviceWindows {
                    device: s("dev"),
                    windows: windows.clone(),
                    open: false,
                    opens_at: Some(9),
                }),
                to_json(&DeviceWindows {
                    device: s("dev"),
                    windows: vec![],
                    open: true,
                    opens_at: None,
                }),
            ],
        ),
        (
            "WebhookEvent",
            WebhookEvent::ALL.iter().map(to_json).collect(),
        ),
        (
            "DeliveryState",
            DeliveryState::ALL.iter().map(to_json).collect(),
        ),
        (
            "CreateWebhook",
            vec![
                to_json(&CreateWebhook {
                    url: s("https://example.com/h"),
                    events: vec![WebhookEvent::DeploymentCreated, WebhookEvent::DeviceOffline],
                }),
                to_json(&CreateWebhook {
                    url: s("http://h"),
                    events: vec![],
                }),
            ],
        ),
        ("WebhookView", vec![to_json(&webhook_view)]),
        (
            "NewWebhook",
            vec![to_json(&NewWebhook {
                webhook: webhook_view.clone(),
                secret: "0".repeat(64),
            })],
        ),
        ("DeliveryAttempt", attempts.iter().map(to_json).collect()),
        (
            "DeliveryView",
            vec![
                to_json(&DeliveryView {
                    id: s("d1"),
                    webhook_id: s("w1"),
                    event: WebhookEvent::DeploymentSucceeded,
                    created_at: 1,
                    state: DeliveryState::Pending,
                    attempts: attempts.clone(),
                    attempt_count: 2,
                    next_attempt_at: Some(5),
                }),
                to_json(&DeliveryView {
                    id: s("d2"),
                    webhook_id: s("w1"),
                    event: WebhookEvent::Ping,
                    created_at: 1,
                    state: DeliveryState::Delivered,
                    attempts: vec![],
                    attempt_count: 0,
                    next_attempt_at: None,
                }),
            ],
        ),
        (
            "AuditEntry",
            vec![
                to_json(&AuditEntry {
                    time: 1,
                    actor: s("alice"),
                    action: AuditAction::DeploymentCreated,
                    target: Some(s("dep1")),
                    peer: Some(s("127.0.0.1")),
                    result: s("201"),
                    detail: Some(s("d")),
                }),
                to_json(&AuditEntry {
                    time: 1,
                    actor: s("device dev"),
                    action: AuditAction::DeviceRolledBack,
                    target: None,
                    peer: None,
                    result: s("ok"),
                    detail: None,
                }),
            ],
        ),
    ])
}

#[test]
fn every_schema_in_the_document_accepts_what_the_types_serialize_and_the_types_accept_what_it_generates(
) {
    let doc: Value = serde_json::from_str(DOC).unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let by_name = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let samples = samples();
    let parsers = request_types();
    let mut failures = BTreeSet::new();
    // Every schema named after a type is checked against values of the type.
    for (name, s) in schemas {
        let typed = s["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("`hammer_protocol::"));
        if typed && !samples.contains_key(name.as_str()) {
            failures.insert(format!("{name}: no values of its type in `samples()`"));
        }
    }
    // Type → document: what serde writes validates.
    for (name, values) in &samples {
        assert!(schemas.contains_key(*name), "no schema {name}");
        for v in values {
            if let Err(e) = validate(&doc, &by_name(name), v, name) {
                failures.insert(format!(
                    "{name}: what the type writes breaks the schema: {e}"
                ));
            }
        }
    }
    // Document → type: every request body, and its parts, as the contract test generates it.
    let (ops, _) = operations(&doc);
    let mut requests: Vec<String> = ops
        .iter()
        .filter_map(|op| op.body_schema.as_ref())
        .map(|s| {
            s["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .unwrap_or_else(|| panic!("a request body's schema is not a named one: {s}"))
                .to_owned()
        })
        .collect();
    requests.extend(
        [
            "GitCredentials",
            "InstallStep",
            "Targets",
            "Strategy",
            "PhaseSize",
        ]
        .map(String::from),
    );
    requests.sort();
    requests.dedup();
    for name in &requests {
        let Some(parse) = parsers.get(name.as_str()) else {
            failures.insert(format!(
                "{name}: a request schema without its type in `request_types()`"
            ));
            continue;
        };
        let schema = by_name(name);
        for n in 0..Pick::COUNT {
            let v = example(&doc, &schema, 7, Pick::nth(n));
            if let Err(e) = validate(&doc, &schema, &v, name) {
                failures.insert(format!(
                    "{name}: the generator made {v}, outside its schema: {e}"
                ));
            }
            if let Err(e) = parse(v.clone()) {
                failures.insert(format!("{name}: the type refuses {v}: {e}"));
            }
            let Some(o) = v.as_object() else { continue };
            // A property the schema requires: the type refuses the value without it.
            for k in o.keys() {
                let mut less = o.clone();
                less.remove(k);
                let less = Value::Object(less);
                let schema_ok = validate(&doc, &schema, &less, name).is_ok();
                if schema_ok != parse(less.clone()).is_ok() {
                    failures.insert(format!(
                        "{name}: without `{k}` the schema {} and the type {}: {less}",
                        if schema_ok { "accepts" } else { "refuses" },
                        if schema_ok { "refuses" } else { "accepts" },
                    ));
                }
            }
            // An unknown property: refused by both (`deny_unknown_fields`,
            // `additionalProperties: false`) or by neither.
            let mut more = o.clone();
            more.insert("surprise".into(), json!("field"));
            let more = Value::Object(more);
            let schema_ok = validate(&doc, &schema, &more, name).is_ok();
            if schema_ok != parse(more.clone()).is_ok() {
                failures.insert(format!(
                    "{name}: with an unknown property the schema {} and the type {}",
                    if schema_ok { "accepts" } else { "refuses" },
                    if schema_ok { "refuses" } else { "accepts" },
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the document and the types disagree:\n{}",
        failures.into_iter().collect::<Vec<_>>().join("\n")
    );
}
