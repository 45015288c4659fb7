//! Property tests of the edges where untrusted bytes come in: resource ids in paths,
//! `Lock-Token` and `Last-Event-ID` headers, JSON bodies, query strings, and bytes that are
//! not HTTP at all. Each case goes over a real socket to a real lockd on a real Redis, and
//! must never get a 5xx (a panic would be a 500 from CatchPanic); every 4xx must be a
//! problem document with a `code`; where the contract says exactly what the answer is, the
//! answer must be that. The domain parsers get the same treatment without HTTP.
//!
//! Case counts are bounded so that the suite stays fast; `PROPTEST_CASES` raises them.
//! Failures are not persisted to files: proptest prints the minimal failing input.

use std::collections::BTreeMap;

use lockd::domain::{AgentId, LockToken, ResourceId};
use lockd::events::{Cursor, EventId, RawEvent};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::helpers::{
    RawResponse, RedisServer, TestApp, raw_request, stream_events, test_settings,
};

/// proptest settings: `cases` cases (unless `PROPTEST_CASES` says otherwise), no files.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// The domain parsers, without HTTP.

/// Text that exercises names: any Unicode, control characters, and lengths around the
/// limits in one- and multi-byte characters.
fn name_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z:/._-]{0,8}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]?[a-z]{0,8}",
        (0usize..=140, 0usize..=3).prop_map(|(n, wide)| "a".repeat(n) + &"é".repeat(wide)),
        (500usize..=520, 0usize..=3).prop_map(|(n, wide)| "x".repeat(n) + &"ü".repeat(wide)),
        prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
    ]
}

fn is_valid_name(text: &str, max_bytes: usize) -> bool {
    !text.is_empty() && text.len() <= max_bytes && !text.chars().any(char::is_control)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn resource_id_parse_follows_the_contract(raw in name_text()) {
        let parsed = ResourceId::parse(raw.clone());
        prop_assert_eq!(parsed.is_ok(), is_valid_name(&raw, 512), "{:?}", raw);
        if let Ok(id) = parsed {
            prop_assert_eq!(id.as_str(), raw.as_str());
            prop_assert_eq!(id.to_string(), raw);
        }
    }

    #[test]
    fn agent_id_parse_follows_the_contract(raw in name_text()) {
        let parsed = AgentId::parse(raw.clone());
        prop_assert_eq!(parsed.is_ok(), is_valid_name(&raw, 128), "{:?}", raw);
        if let Ok(agent) = parsed {
            prop_assert_eq!(agent.as_str(), raw.as_str());
        }
    }

    #[test]
    fn lock_token_parse_takes_exactly_hyphenated_uuids(raw in token_text()) {
        let parsed = LockToken::parse(&raw);
        let expected = raw.len() == 36 && uuid::Uuid::try_parse(&raw).is_ok();
        prop_assert_eq!(parsed.is_ok(), expected, "{:?}", raw);
        if let Ok(token) = parsed {
            // One spelling per token: the canonical form is the lowercase input.
            prop_assert_eq!(token.to_string(), raw.to_ascii_lowercase());
            prop_assert_eq!(LockToken::parse(&token.to_string()).unwrap().digest(), token.digest());
            prop_assert_eq!(format!("{token:?}"), "LockToken(..)");
        }
    }

    #[test]
    fn event_id_parse_takes_exactly_ms_dash_seq(raw in event_id_text()) {
        let parsed = raw.parse::<EventId>();
        prop_assert_eq!(parsed.is_ok(), is_event_id(&raw), "{:?}", raw);
        if let Ok(id) = parsed {
            let (ms, seq) = raw.split_once('-').unwrap();
            prop_assert_eq!(id.ms, ms.parse::<u64>().unwrap());
            prop_assert_eq!(id.seq, seq.parse::<u64>().unwrap());
            prop_assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
        }
    }

    #[test]
    fn event_ids_order_as_redis_orders_them(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
        let parse = |(ms, seq): (u64, u64)| format!("{ms}-{seq}").parse::<EventId>().unwrap();
        prop_assert_eq!(parse(a).cmp(&parse(b)), a.cmp(&b));
    }

    #[test]
    fn foreign_pubsub_messages_never_panic_the_event_parser(raw in published_text()) {
        // Anyone who can PUBLISH on the channel can send anything: it must be refused or
        // parsed, never crash the subscriber.
        if let Ok(event) = RawEvent::from_published(&raw) {
            for cursor in [Cursor::start(1), Cursor::start(4)] {
                let frame = event.frame(&cursor);
                let frame = std::str::from_utf8(&frame).unwrap();
                prop_assert!(frame.ends_with("\n\n"));
                prop_assert_eq!(frame.matches('\n').count(), 4, "one data line: {:?}", frame);
            }
        }
    }

    #[test]
    fn cursors_parse_only_as_what_they_print(raw in "[0-9.\\-]{0,40}", partitions in 1usize..5) {
        // Last-Event-ID is client input: a cursor either parses into one that prints back
        // the same way, or is refused.
        if let Ok(cursor) = Cursor::parse(&raw, partitions) {
            let printed = cursor.to_string();
            prop_assert_eq!(Cursor::parse(&printed, partitions).unwrap(), cursor);
        }
    }
}

/// Token-like text: real tokens in any case, near misses, and anything at all.
fn token_text() -> impl Strategy<Value = String> {
    let uuid = any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string());
    prop_oneof![
        uuid.clone(),
        uuid.clone().prop_map(|t| t.to_ascii_uppercase()),
        uuid.clone().prop_map(|t| t.replace('-', "")),
        uuid.clone().prop_map(|t| format!("{{{t}}}")),
        uuid.clone().prop_map(|t| format!("urn:uuid:{t}")),
        (uuid.clone(), 0usize..36, any::<char>()).prop_map(|(t, at, c)| {
            let mut chars: Vec<char> = t.chars().collect();
            chars[at] = c;
            chars.into_iter().collect()
        }),
        (uuid, 0usize..36).prop_map(|(t, at)| format!("{}{}", &t[..at], &t[at + 1..])),
        "[0-9a-fA-F-]{30,40}",
        any::<String>(),
    ]
}

fn event_id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<(u64, u64)>().prop_map(|(ms, seq)| format!("{ms}-{seq}")),
        "[0-9]{0,22}-[0-9]{0,22}",
        "[ +0-9a-z*<>$-]{0,12}",
        any::<String>(),
    ]
}

fn is_event_id(text: &str) -> bool {
    let Some((ms, seq)) = text.split_once('-') else {
        return false;
    };
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 20
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u64>().is_ok()
    };
    part(ms) && part(seq)
}

fn published_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (json_value(), event_id_text()).prop_map(|(mut value, id)| {
            if let Value::Object(map) = &mut value {
                map.insert("id".into(), Value::String(id));
                map.insert("type".into(), json!("resource.locked"));
                map.entry("resource_id").or_insert(json!("r\n\u{2028}x"));
            }
            value.to_string()
        }),
    ]
}

/// Any JSON document, with the keys lockd knows over-represented.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("agent_id".to_owned()),
        Just("ttl_ms".to_owned()),
        Just("wait_ms".to_owned()),
        "[a-z_]{0,8}",
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// Over HTTP, against a real lockd.

/// One Redis, one lockd, and a runtime to drive them from proptest's synchronous runner.
struct Target {
    app: TestApp,
    redis: RedisServer,
    runtime: tokio::runtime::Runtime,
}

impl Target {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let (redis, app) = runtime.block_on(async {
            let redis = RedisServer::start().await;
            let mut settings = test_settings(&redis);
            settings.server.header_read_timeout_ms = 1000;
            let app = TestApp::spawn_with(settings).await;
            (redis, app)
        });
        Self {
            app,
            redis,
            runtime,
        }
    }

    fn send(&self, request: &[u8]) -> Option<RawResponse> {
        self.runtime
            .block_on(raw_request(self.app.addr, request, false))
    }

    /// A well-formed request with the given target, headers and body.
    fn request(
        &self,
        method: &str,
        target: &[u8],
        headers: &[(&str, &[u8])],
        body: Option<&[u8]>,
    ) -> RawResponse {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(method.as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(target);
        bytes.extend_from_slice(b" HTTP/1.1\r\nHost: lockd.test\r\nConnection: close\r\n");
        for (name, value) in headers {
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(b"\r\n");
        }
        if let Some(body) = body {
            bytes.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            bytes.extend_from_slice(body);
        }
        self.send(&bytes)
            .expect("a well-formed request gets an answer")
    }

    fn acquire(&self, resource: &str) -> Value {
        self.runtime
            .block_on(self.app.acquire_ok(resource, "fuzz-holder", 600_000))
    }

    fn status(&self, resource: &str) -> Value {
        self.runtime.block_on(self.app.status(resource))
    }

    fn events(&self) -> Vec<Value> {
        self.runtime.block_on(stream_events(&self.redis, &self.app))
    }

    fn run<S: Strategy>(
        &self,
        cases: u32,
        strategy: S,
        test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) {
        let mut runner = TestRunner::new(config(cases));
        if let Err(failure) = runner.run(&strategy, test) {
            panic!("{failure}");
        }
    }
}

/// No 5xx; a 4xx is a problem document whose `status` and `code` are there. Returns the
/// parsed body (JSON for lockd's answers; `Null` for a stream or an empty body).
fn well_behaved(response: &RawResponse) -> Result<Value, TestCaseError> {
    prop_assert!(
        response.status < 500,
        "a {} answer: {:?}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    let content_type = response.header("content-type").unwrap_or_default();
    if response.status >= 400 {
        prop_assert_eq!(content_type, "application/problem+json", "{:?}", response);
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| TestCaseError::fail(format!("a problem that is not JSON: {e}")))?;
        prop_assert_eq!(&body["status"], &json!(response.status), "{}", body);
        prop_assert!(
            body["code"].as_str().is_some_and(|c| !c.is_empty()),
            "no code: {}",
            body
        );
        prop_assert_eq!(
            body["type"].as_str().unwrap_or_default(),
            format!(
                "urn:lockd:problem:{}",
                body["code"].as_str().unwrap_or_default()
            )
        );
        return Ok(body);
    }
    if content_type == "application/json" {
        return serde_json::from_slice(&response.body)
            .map_err(|e| TestCaseError::fail(format!("a 2xx that is not JSON: {e}")));
    }
    Ok(Value::Null)
}

fn expect_problem(response: &RawResponse, status: u16, code: &str) -> Result<(), TestCaseError> {
    let body = well_behaved(response)?;
    prop_assert_eq!(response.status, status, "{}", body);
    prop_assert_eq!(body["code"].as_str(), Some(code), "{}", body);
    Ok(())
}

/// Percent-encodes `bytes` for a path, leaving the bytes marked `raw` as they are where a
/// path may hold them unencoded.
fn encode_path(bytes: &[u8], raw: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    for (at, &byte) in bytes.iter().enumerate() {
        let allowed = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte);
        if allowed && raw.get(at).copied().unwrap_or(true) {
            out.push(byte);
        } else {
            out.extend_from_slice(format!("%{byte:02X}").as_bytes());
        }
    }
    out
}

/// Bytes for a resource id: anything, UTF-8 text, path-like text, and lengths around 512.
fn resource_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        any::<String>().prop_map(String::into_bytes),
        "[a-z]{0,3}([/.:%]{1,3}[a-z]{0,3}){0,4}".prop_map(String::into_bytes),
        (505usize..=520).prop_map(|n| vec![b'r'; n]),
        (250usize..=260).prop_map(|n| "é".repeat(n).into_bytes()),
    ]
}

#[test]
fn any_resource_id_in_the_path_gets_the_contracts_answer() {
    let target = Target::start();
    let methods = prop::sample::select(vec!["GET", "POST", "DELETE", "PATCH"]);
    let strategy = (
        resource_bytes(),
        prop::collection::vec(any::<bool>(), 0..64),
        methods,
    );
    target.run(160, strategy, |(bytes, raw, method)| {
        let path = [b"/locks/".as_slice(), &encode_path(&bytes, &raw)].concat();
        let token = uuid::Uuid::new_v4().to_string();
        let acquire = br#"{"agent_id":"fuzz","ttl_ms":60000}"#;
        type Parts<'a> = (Vec<(&'a str, &'a [u8])>, Option<&'a [u8]>);
        let (headers, body): Parts = match method {
            "POST" => (
                vec![("Content-Type", b"application/json")],
                Some(acquire.as_slice()),
            ),
            "DELETE" | "PATCH" => (vec![("Lock-Token", token.as_bytes())], None),
            _ => (vec![], None),
        };
        let response = target.request(method, &path, &headers, body);
        let answer = well_behaved(&response)?;
        let valid = std::str::from_utf8(&bytes)
            .ok()
            .filter(|text| is_valid_name(text, 512));
        let Some(id) = valid else {
            return expect_problem(&response, 400, "invalid_resource_id");
        };
        match method {
            "GET" => {
                prop_assert_eq!(response.status, 200);
                prop_assert_eq!(answer["resource_id"].as_str(), Some(id), "{}", answer);
            }
            "POST" => {
                // Shrinking may send the same id twice.
                prop_assert!(
                    [201, 409].contains(&response.status),
                    "{}: {}",
                    response.status,
                    answer
                );
                if response.status == 201 {
                    prop_assert_eq!(answer["resource_id"].as_str(), Some(id), "{}", answer);
                    let location = response.header("location").unwrap_or_default();
                    prop_assert!(location.starts_with("/locks/"), "{}", location);
                }
            }
            _ => {
                // A fresh random token holds nothing.
                prop_assert!(
                    [404, 409].contains(&response.status),
                    "{}: {}",
                    response.status,
                    answer
                );
            }
        }
        Ok(())
    });
}

/// Bytes a header value may hold on the wire: tab, space, visible ASCII and obs-text.
fn header_value_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        Just(b'\t'),
        0x20u8..=0x7e,
        0x80u8..=0xff,
        Just(b'-'),
        prop::sample::select(b"0123456789abcdef".to_vec()),
    ];
    prop::collection::vec(byte, 0..48)
}

fn token_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        token_text()
            .prop_filter("a header value", |t| t
                .bytes()
                .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)))
            .prop_map(String::into_bytes),
        header_value_bytes(),
        (any::<u128>(), "[ \t]{0,3}", "[ \t]{0,3}").prop_map(|(n, before, after)| {
            format!("{before}{}{after}", uuid::Uuid::from_u128(n)).into_bytes()
        }),
    ]
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

#[test]
fn any_lock_token_header_is_refused_or_checked_and_changes_nothing() {
    let target = Target::start();
    let grant = target.acquire("held");
    let before = target.events();
    let strategy = (
        token_header(),
        prop::sample::select(vec!["DELETE", "PATCH"]),
    );
    target.run(192, strategy, |(value, method)| {
        let response = target.request(method, b"/locks/held", &[("Lock-Token", &value)], None);
        let trimmed = trim_ows(&value);
        let valid = std::str::from_utf8(trimmed)
            .is_ok_and(|text| text.len() == 36 && uuid::Uuid::try_parse(text).is_ok());
        if valid {
            // A well-formed token that is not the holder's.
            expect_problem(&response, 409, "not_lock_owner")
        } else {
            expect_problem(&response, 400, "invalid_lock_token")
        }
    });
    let after = target.status("held");
    assert_eq!(after["fencing_token"], grant["fencing_token"]);
    assert_eq!(after["expires_at"], grant["expires_at"]);
    assert_eq!(target.events(), before, "no change, no event");
}

/// Content types with a known verdict, and anything else.
fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("application/merge-patch+json".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        Just(None),
        "[ -~]{0,30}".prop_map(Some),
    ]
}

/// `Some(is_json)` for the content types whose verdict is known; `None` otherwise.
fn json_verdict(content_type: Option<&str>) -> Option<bool> {
    match content_type {
        None | Some("text/plain" | "application/x-www-form-urlencoded") => Some(false),
        Some(
            "application/json" | "application/json; charset=utf-8" | "application/merge-patch+json",
        ) => Some(true),
        Some(_) => None,
    }
}

/// Bodies: JSON shaped like an acquire or a refresh, any JSON, and any bytes.
fn body() -> impl Strategy<Value = (Vec<u8>, Option<Value>)> {
    let number = prop_oneof![
        prop::sample::select(vec![
            json!(null),
            json!(0),
            json!(1),
            json!(3_600_000),
            json!(3_600_001),
            json!(60_000),
            json!(60_001),
            json!(-1),
            json!(1.5),
            json!(1e3),
            json!("1000"),
            json!(u64::MAX),
        ]),
        any::<u32>().prop_map(|n| json!(n)),
    ];
    let agent = prop_oneof![
        Just(json!("agent-7")),
        Just(json!("")),
        Just(json!("a".repeat(128))),
        Just(json!("a".repeat(129))),
        Just(json!("tab\there")),
        Just(json!(7)),
        Just(json!(null)),
        any::<String>().prop_map(Value::String),
    ];
    let shaped = (
        prop::option::of(agent),
        prop::option::of(number.clone()),
        prop::option::of(number),
        prop::option::of(("[a-z_]{1,8}", json_value())),
    )
        .prop_map(|(agent, ttl, wait, extra)| {
            let mut map = serde_json::Map::new();
            for (key, value) in [("agent_id", agent), ("ttl_ms", ttl), ("wait_ms", wait)] {
                if let Some(value) = value {
                    map.insert(key.into(), value);
                }
            }
            if let Some((key, value)) = extra {
                map.insert(key, value);
            }
            Value::Object(map)
        });
    prop_oneof![
        3 => shaped.prop_map(|v| (v.to_string().into_bytes(), Some(v))),
        1 => json_value().prop_map(|v| (v.to_string().into_bytes(), Some(v))),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| (b, None)),
        1 => Just((Vec::new(), None)),
    ]
}

/// The contract's verdict on a body: `Some(Ok(()))` for success, `Some(Err((status,
/// code)))` for a refusal, `None` where the contract is not checked.
type Verdict = Option<Result<(), (u16, &'static str)>>;

/// A JSON number that is a whole non-negative number: JSON Schema's `integer`, which
/// takes `1000.0` as well as `1000` (the OpenAPI document promises that much).
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let float = value.as_f64()?;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked whole and in range"
        )]
        (float.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&float)).then_some(float as u64)
    })
}

/// What the contract says an acquire body must get.
fn acquire_verdict(value: &Value) -> Verdict {
    let invalid_body = Some(Err((422, "invalid_body")));
    let Value::Object(map) = value else {
        return invalid_body;
    };
    if map
        .keys()
        .any(|k| !["agent_id", "ttl_ms", "wait_ms"].contains(&k.as_str()))
    {
        return invalid_body;
    }
    let number = |key: &str| match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => whole_number(value).map(Some).ok_or(()),
    };
    let (Some(Value::String(agent)), Ok(ttl), Ok(wait)) =
        (map.get("agent_id"), number("ttl_ms"), number("wait_ms"))
    else {
        return invalid_body;
    };
    if !is_valid_name(agent, 128) {
        return Some(Err((422, "invalid_agent_id")));
    }
    if !(1..=3_600_000).contains(&ttl.unwrap_or(30_000)) {
        return Some(Err((422, "invalid_ttl_ms")));
    }
    if wait.unwrap_or(0) > 60_000 {
        return Some(Err((422, "invalid_wait_ms")));
    }
    Some(Ok(()))
}

/// What the contract says a refresh body must get.
fn refresh_verdict(value: &Value) -> Verdict {
    let Value::Object(map) = value else {
        return Some(Err((422, "invalid_body")));
    };
    if map.keys().any(|k| k != "ttl_ms") {
        return Some(Err((422, "invalid_body")));
    }
    Some(match map.get("ttl_ms") {
        None | Some(Value::Null) => Ok(()),
        Some(value) => match whole_number(value) {
            None => Err((422, "invalid_body")),
            Some(ttl) if !(1..=3_600_000).contains(&ttl) => Err((422, "invalid_ttl_ms")),
            Some(_) => Ok(()),
        },
    })
}

/// Checks an answer against a verdict for a body sent with `content_type`.
fn check_body_answer(
    response: &RawResponse,
    content_type: Option<&str>,
    body: &[u8],
    parsed: Option<&Value>,
    verdict: impl Fn(&Value) -> Verdict,
    ok_status: u16,
) -> Result<bool, TestCaseError> {
    let answer = well_behaved(response)?;
    let expected = match (json_verdict(content_type), parsed) {
        (Some(false), _) => Some(Err((415, "unsupported_media_type"))),
        (Some(true), Some(value)) => verdict(value),
        (Some(true), None) if serde_json::from_slice::<Value>(body).is_err() => {
            // Not JSON. Usually 400; 422 when a field is refused before the syntax breaks.
            prop_assert!(
                [400, 422].contains(&response.status),
                "{}: {}",
                response.status,
                answer
            );
            None
        }
        _ => None,
    };
    match expected {
        Some(Ok(())) => prop_assert_eq!(response.status, ok_status, "{}", answer),
        Some(Err((status, code))) => expect_problem(response, status, code)?,
        None => prop_assert!(
            response.status == ok_status || (400..500).contains(&response.status),
            "{}: {}",
            response.status,
            answer
        ),
    }
    Ok(response.status == ok_status)
}

#[test]
fn any_acquire_body_gets_the_contracts_answer() {
    let target = Target::start();
    let counter = std::sync::atomic::AtomicU64::new(0);
    target.run(
        256,
        (body(), content_type()),
        |((body, parsed), content_type)| {
            // A fresh resource per case, so that a valid body is granted.
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = format!("/locks/body-{n}");
            let headers: Vec<(&str, &[u8])> = content_type
                .as_deref()
                .map(|ct| vec![("Content-Type", ct.as_bytes())])
                .unwrap_or_default();
            let response = target.request("POST", path.as_bytes(), &headers, Some(&body));
            let granted = check_body_answer(
                &response,
                content_type.as_deref(),
                &body,
                parsed.as_ref(),
                acquire_verdict,
                201,
            )?;
            if !granted {
                // A refused acquire changed nothing.
                let status = target.status(&format!("body-{n}"));
                prop_assert_eq!(&status["locked"], &json!(false), "{}", status);
            }
            Ok(())
        },
    );
}

#[test]
fn any_refresh_body_gets_the_contracts_answer_and_a_refusal_changes_nothing() {
    let target = Target::start();
    let counter = std::sync::atomic::AtomicU64::new(0);
    target.run(
        192,
        (body(), content_type()),
        |((body, parsed), content_type)| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let resource = format!("refresh-{n}");
            let grant = target.acquire(&resource);
            let token = grant["token"].as_str().unwrap().to_owned();
            let mut headers: Vec<(&str, &[u8])> = vec![("Lock-Token", token.as_bytes())];
            if let Some(ct) = content_type.as_deref() {
                headers.push(("Content-Type", ct.as_bytes()));
            }
            let send_body = !(body.is_empty() && content_type.is_none());
            let response = target.request(
                "PATCH",
                format!("/locks/{resource}").as_bytes(),
                &headers,
                send_body.then_some(body.as_slice()),
            );
            let refreshed = if body.is_empty() && content_type.is_none() {
                // No body and no Content-Type: the lease's own length.
                prop_assert_eq!(response.status, 200, "{:?}", response);
                true
            } else if body.is_empty() {
                // An empty body with a Content-Type: no body (what generated clients send),
                // or refused as the empty document or the wrong media type it also is.
                let answer = well_behaved(&response)?;
                let code = answer["code"].as_str().unwrap_or_default();
                prop_assert!(
                    response.status == 200
                        || (response.status, code) == (400, "malformed_json")
                        || (response.status, code) == (415, "unsupported_media_type"),
                    "{}: {}",
                    response.status,
                    answer
                );
                response.status == 200
            } else if content_type.is_none() {
                // A body with no Content-Type is refused, not guessed at.
                expect_problem(&response, 415, "unsupported_media_type")?;
                false
            } else {
                check_body_answer(
                    &response,
                    content_type.as_deref(),
                    &body,
                    parsed.as_ref(),
                    refresh_verdict,
                    200,
                )?
            };
            let status = target.status(&resource);
            if refreshed {
                // Refreshed, perhaps to a lease that has already run out (`ttl_ms: 1`).
                prop_assert!(
                    status["locked"] == false || status["fencing_token"] == grant["fencing_token"],
                    "{}",
                    status
                );
            } else {
                prop_assert_eq!(&status["fencing_token"], &grant["fencing_token"]);
                prop_assert_eq!(&status["expires_at"], &grant["expires_at"], "{}", status);
            }
            Ok(())
        },
    );
}

#[test]
fn a_json_array_is_no_acquire_or_refresh_body() {
    let target = Target::start();
    let json = [("Content-Type", b"application/json".as_slice())];
    let response = target.request(
        "POST",
        b"/locks/array",
        &json,
        Some(br#"["agent-a", 5000, 0]"#),
    );
    expect_problem(&response, 422, "invalid_body").unwrap();
    assert_eq!(target.status("array")["locked"], false);

    let grant = target.acquire("array-refresh");
    let token = grant["token"].as_str().unwrap().as_bytes();
    let response = target.request(
        "PATCH",
        b"/locks/array-refresh",
        &[json[0], ("Lock-Token", token)],
        Some(b"[5000]"),
    );
    expect_problem(&response, 422, "invalid_body").unwrap();
    assert_eq!(
        target.status("array-refresh")["expires_at"],
        grant["expires_at"]
    );
}

fn last_event_id() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<(u64, u64)>().prop_map(|(ms, seq)| format!("{ms}-{seq}").into_bytes()),
        ("[ \t]{0,2}", "[0-9]{0,22}-[0-9]{0,22}", "[ \t]{0,2}")
            .prop_map(|(a, id, b)| format!("{a}{id}{b}").into_bytes()),
        header_value_bytes(),
        "[ -~]{0,24}".prop_map(String::into_bytes),
    ]
}

#[test]
fn any_last_event_id_resumes_or_gets_400() {
    let target = Target::start();
    target.acquire("evented");
    target.run(160, last_event_id(), |value| {
        let response = target.request("GET", b"/events", &[("Last-Event-ID", &value)], None);
        let trimmed = std::str::from_utf8(trim_ows(&value)).ok();
        match trimmed {
            Some(text) if text.is_empty() || is_event_id(text) => {
                well_behaved(&response)?;
                prop_assert_eq!(response.status, 200, "{:?}", response);
                prop_assert_eq!(response.header("content-type"), Some("text/event-stream"));
                Ok(())
            }
            _ => expect_problem(&response, 400, "invalid_last_event_id"),
        }
    });
}

/// A query string: known and unknown keys, values of every kind, percent-encoded bytes,
/// broken escapes, repeated keys.
fn query() -> impl Strategy<Value = (String, Vec<String>)> {
    let key = prop_oneof![
        Just("prefix".to_owned()),
        Just("limit".to_owned()),
        Just("cursor".to_owned()),
        Just("resource_id".to_owned()),
        Just("types".to_owned()),
        "[a-z_]{0,6}",
    ];
    let value = prop_oneof![
        (0i64..1100).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "-1".to_owned(),
            "99999999999999999999".to_owned(),
            "resource.locked,resource.unlocked".to_owned(),
            "resource.refreshed,%20resource.locked".to_owned(),
            "resource.nope".to_owned(),
        ]),
        "[0-9a-f]{0,12}",
        "[a-z:/._~-]{0,12}",
        "(%[0-9A-Fa-f]{2}){0,6}",
        "[%+&=a-z0-9]{0,10}",
        prop::collection::vec(any::<u8>(), 0..12).prop_map(|bytes| {
            String::from_utf8(encode_path(&bytes, &[])).expect("encoded is ASCII")
        }),
    ];
    prop::collection::vec((key, prop::option::of(value)), 0..4).prop_map(|pairs| {
        let query = pairs
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect::<Vec<_>>()
            .join("&");
        // `k` alone with an empty key is no pair at all; `=v` is a pair with key "".
        let keys = pairs
            .into_iter()
            .filter(|(k, v)| !k.is_empty() || v.is_some())
            .map(|(k, _)| k)
            .collect();
        (query, keys)
    })
}

#[test]
fn any_query_string_of_the_list_and_the_event_stream_is_answered_or_refused_with_400() {
    let target = Target::start();
    target.acquire("listed/a");
    target.acquire("listed/b");
    let paths = prop::sample::select(vec!["/locks", "/events"]);
    target.run(192, (paths, query()), |(path, (query, keys))| {
        let response = target.request("GET", format!("{path}?{query}").as_bytes(), &[], None);
        let answer = well_behaved(&response)?;
        let known: &[&str] = if path == "/locks" {
            &["prefix", "limit", "cursor"]
        } else {
            &["resource_id", "prefix", "types"]
        };
        let mut seen = BTreeMap::new();
        let unknown_or_repeated = keys
            .iter()
            .any(|key| !known.contains(&key.as_str()) || seen.insert(key, ()).is_some());
        if unknown_or_repeated {
            return expect_problem(&response, 400, "invalid_query");
        }
        match response.status {
            200 if path == "/locks" => {
                prop_assert!(answer["locks"].is_array(), "{}", answer);
            }
            200 => prop_assert_eq!(response.header("content-type"), Some("text/event-stream")),
            _ => expect_problem(&response, 400, "invalid_query")?,
        }
        Ok(())
    });
}

/// Bytes that are barely HTTP or not at all.
fn malformed_request() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"POST /locks/x HTTP/1.1\r\n".to_vec()),
        Just(b"GET /locks/x HTTP/1.1\r\n".to_vec()),
        Just(b"GET /events HTTP/1.1\r\n".to_vec()),
        Just(b"DELETE /locks/held HTTP/1.1\r\n".to_vec()),
        Just(b"GET /locks/%ZZ HTTP/1.1\r\n".to_vec()),
        Just(b"GET /locks/x HTTP/9.9\r\n".to_vec()),
        Just(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        Just(b"G\x00T / HTTP/1.1\r\n".to_vec()),
        Just(Vec::new()),
    ];
    let header = prop_oneof![
        prop::sample::select(vec![
            b"Host: x\r\n".to_vec(),
            b"Content-Type: application/json\r\n".to_vec(),
            b"Content-Length: 10\r\n".to_vec(),
            b"Content-Length: -1\r\n".to_vec(),
            b"Content-Length: 5\r\nContent-Length: 6\r\n".to_vec(),
            b"Content-Length: 99999999999999999999999\r\n".to_vec(),
            b"Transfer-Encoding: chunked\r\n".to_vec(),
            b"Transfer-Encoding: gzip, chunked\r\n".to_vec(),
            b"Lock-Token: \x01\r\n".to_vec(),
            b"Last-Event-ID: 1-\x7f\r\n".to_vec(),
            b" folded: header\r\n".to_vec(),
            b"no colon here\r\n".to_vec(),
            b"Bad Name: x\r\n".to_vec(),
        ]),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    let body = prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"\r\n{\"agent_id\":\"a\"}".to_vec()),
        Just(b"\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec()),
        Just(b"\r\n5\r\n{\"a\":\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..80),
        Just(Vec::new()),
    ];
    prop_oneof![
        3 => (line, prop::collection::vec(header, 0..4), body).prop_map(|(line, headers, body)| {
            let mut bytes = line;
            for header in headers {
                bytes.extend_from_slice(&header);
            }
            bytes.extend_from_slice(&body);
            bytes
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

#[test]
fn bytes_that_are_not_quite_http_never_get_a_5xx_or_change_anything() {
    let target = Target::start();
    let grant = target.acquire("held");
    let held_events = || -> Vec<Value> {
        let events = target.events();
        events
            .into_iter()
            .filter(|e| e["resource_id"] == "held")
            .collect()
    };
    let before = held_events();
    target.run(160, malformed_request(), |bytes| {
        // The client stops sending, as a broken client would.
        let Some(response) = target
            .runtime
            .block_on(raw_request(target.app.addr, &bytes, true))
        else {
            // Closed without an answer: fine for bytes that are no request.
            return Ok(());
        };
        prop_assert!(
            response.status < 500,
            "{} to {:?}",
            response.status,
            String::from_utf8_lossy(&bytes)
        );
        // hyper answers what it cannot parse with a bare 400 (or 414/431) before lockd
        // sees it; everything lockd answers is a problem document.
        if response.status >= 400 && response.header("content-type").is_some() {
            well_behaved(&response)?;
        }
        Ok(())
    });
    let after = target.status("held");
    assert_eq!(after["fencing_token"], grant["fencing_token"]);
    assert_eq!(after["expires_at"], grant["expires_at"]);
    assert_eq!(held_events(), before, "no change, no event");
    let healthy = target.request("GET", b"/healthz", &[], None);
    assert_eq!(healthy.status, 200);
}
