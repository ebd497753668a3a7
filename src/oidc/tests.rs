use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2_11::Digest as _;

use super::callback::PendingCallback;
use super::error::html_escape;
use super::flow::{Flow, FLOW_MAX_AGE_S};
use super::*;
use crate::config::{ConfigError, RawLogin, RefreshConfig, Route, DEFAULT_SESSION_LIFETIME_S};
use crate::http::cookie;
use crate::http::negotiate::{is_navigation, prefers_json, wants_html};
use crate::http::url::{
    parse_query, percent_decode_bytes, query_encode, safe_return_to, with_query, MAX_QUERY_PARAMS,
    MAX_RETURN_TO_LEN,
};
use crate::session::{self, Session};
use crate::testkit::{self, AUD, ISS, NOW};

const SESSION: &str = "__Host-relay-session";
const AT: &str = "__Host-relay-at";
const CSRF: &str = "__Host-relay-csrf";

fn merge(base: &mut Value, extra: Value) {
    let obj = base.as_object_mut().unwrap();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
}

/// A configuration with sessions, a confidential client and double-submit CSRF.
fn config(extra: Value) -> Config {
    let mut v = json!({
        "session_keys": [{"kid": "k1", "key": testkit::b64(&testkit::SESSION_KEY)}],
        "token_endpoint": {"cluster": "idp", "authority": "idp.example.com", "path": "/oauth2/token"},
        "client_id": AUD,
        "client_secret": "s3cret",
        "csrf": {"allowed_origins": ["https://app.example.com"], "double_submit": true},
    });
    merge(&mut v, extra);
    testkit::config(v)
}

fn raw_login(extra: Value) -> Value {
    let mut v = json!({
        "authorization_endpoint": "https://auth.example.com/oauth2/authorize",
        "redirect_uri": "https://app.example.com/auth/callback",
        "login_path": "/auth/login",
        "logout_path": "/auth/logout",
        "scopes": ["openid", "offline_access"],
        "revocation_path": "/oauth2/revoke",
        "end_session_endpoint": "https://auth.example.com/logout",
        "post_logout_redirect": "/"
    });
    merge(&mut v, extra);
    v
}

fn try_login(c: &Config, extra: Value) -> Result<LoginConfig, ConfigError> {
    let raw = RawLogin::read(raw_login(extra).into(), "login").unwrap();
    LoginConfig::new(raw, &c.cookies)
}

fn login(c: &Config) -> LoginConfig {
    try_login(c, json!({})).unwrap()
}

fn refresh(c: &Config) -> &RefreshConfig {
    c.refresh.as_ref().unwrap()
}

fn random(b: u8) -> Random {
    Random {
        verifier: [b; 32],
        state: [b.wrapping_add(1); 32],
        nonce: [b.wrapping_add(2); 32],
        iv: [b.wrapping_add(3); 12],
        csrf: [b.wrapping_add(4); 32],
    }
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn set_cookies(r: &Reply) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| *n == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `(name, value, max-age)` of each Set-Cookie.
fn parsed_cookies(r: &Reply) -> Vec<(String, String, Option<u64>)> {
    set_cookies(r)
        .iter()
        .map(|c| {
            let mut parts = c.split("; ");
            let (n, v) = parts.next().unwrap().split_once('=').unwrap();
            let max_age = parts
                .find_map(|p| p.strip_prefix("Max-Age="))
                .map(|m| m.parse().unwrap());
            (n.to_string(), v.to_string(), max_age)
        })
        .collect()
}

/// Names set with a value (not cleared).
fn set_names(r: &Reply) -> Vec<String> {
    parsed_cookies(r)
        .into_iter()
        .filter(|(_, v, m)| !v.is_empty() && *m != Some(0))
        .map(|(n, _, _)| n)
        .collect()
}

fn cleared_names(r: &Reply) -> Vec<String> {
    parsed_cookies(r)
        .into_iter()
        .filter(|(_, _, m)| *m == Some(0))
        .map(|(n, _, _)| n)
        .collect()
}

/// The Cookie header a browser would send after receiving `r`.
fn jar(r: &Reply) -> String {
    parsed_cookies(r)
        .into_iter()
        .filter(|(_, v, m)| !v.is_empty() && *m != Some(0))
        .map(|(n, v, _)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn location_params(location: &str) -> Vec<(String, String)> {
    parse_query(location.split_once('?').unwrap().1)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Starts a login; returns the reply, the state and the flow cookie as `name=value`.
fn started(
    c: &Config,
    l: &LoginConfig,
    return_to: &str,
    b: u8,
    now: u64,
) -> (Reply, String, String) {
    let q = format!("return_to={}", query_encode(return_to));
    let r = start(c, l, refresh(c), &q, "", now, &random(b));
    let state = param(&location_params(header(&r, "location").unwrap()), "state").to_string();
    let cookie = jar(&r);
    (r, state, cookie)
}

fn id_claims(nonce: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "nonce": nonce, "exp": NOW + 300, "iat": NOW})
}

fn token_body(id_token: Option<&str>, rt: Option<&str>) -> Vec<u8> {
    let mut v = json!({"access_token": testkit::sign(&testkit::claims()), "token_type": "Bearer", "expires_in": 300});
    if let Some(i) = id_token {
        v["id_token"] = json!(i);
    }
    if let Some(r) = rt {
        v["refresh_token"] = json!(r);
    }
    v.to_string().into_bytes()
}

fn nonce_of(r: &Random) -> String {
    URL_SAFE_NO_PAD.encode(r.nonce)
}

/// A started login and its callback, up to the exchange.
fn exchange(c: &Config, l: &LoginConfig, extra_cookies: &str) -> (TokenRequest, PendingCallback) {
    let (_, state, flow) = started(c, l, "/app/page?x=1", 1, NOW);
    let cookies = format!("{flow}{extra_cookies}");
    callback(
        c,
        l,
        refresh(c),
        &format!("code=the-code&state={state}"),
        &cookies,
        false,
        NOW,
    )
    .unwrap()
}

fn finish(
    c: &Config,
    l: &LoginConfig,
    p: &PendingCallback,
    status: Option<u32>,
    body: &[u8],
) -> Reply {
    match finish_callback(
        &LoginContext {
            config: c,
            login: l,
            keys: Some(testkit::inline_keys(c)),
        },
        p,
        status,
        body,
        NOW,
        &Random::fixed(9),
        true,
    ) {
        CallbackOutcome::Respond(r) => r,
        CallbackOutcome::UnknownKid => panic!("unexpected UnknownKid"),
    }
}

fn json_body(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap()
}

// ---- configuration ----

#[test]
fn example_configuration_compiles() {
    let c = config(json!({}));
    let l = login(&c);
    assert_eq!(l.callback_path, "/auth/callback");
    assert_eq!(l.scope, "openid offline_access");
    assert_eq!(l.flow_cookie_prefix, "__Host-relay-flow");
    assert_eq!(l.post_logout_redirect_uri, "https://app.example.com/");
    assert_eq!(l.session_lifetime_s, DEFAULT_SESSION_LIFETIME_S);
    assert_eq!(l.route("/auth/login?return_to=/x"), Some(Route::Login));
    assert_eq!(l.route("/auth/callback?code=1"), Some(Route::Callback));
    assert_eq!(l.route("/auth/logout"), Some(Route::Logout));
    assert_eq!(l.route("/auth/login/"), None);
    assert_eq!(l.route("/api/x"), None);

    // Only the two URLs are required.
    let raw = RawLogin::read(
        json!({
            "authorization_endpoint": "http://127.0.0.1:9000/auth?tenant=a",
            "redirect_uri": "http://localhost:8080/cb",
            "post_logout_redirect": "/bye?x=1",
            "prompt": "login consent",
            "extra_authorize_params": {"audience": "https://api", "ui_locales": "de en"},
        })
        .into(),
        "login",
    )
    .unwrap();
    let l = LoginConfig::new(raw, &c.cookies).unwrap();
    assert_eq!(
        (l.login_path.as_str(), l.logout_path.as_str()),
        ("/auth/login", "/auth/logout")
    );
    assert_eq!(l.scope, "openid");
    assert_eq!(l.revocation_path, None);
    assert_eq!(l.end_session_endpoint, None);
    assert_eq!(l.post_logout_redirect_uri, "http://localhost:8080/bye?x=1");
    assert_eq!(l.extra_authorize_params.len(), 2);
}

#[test]
fn flow_cookie_prefix_derives_from_the_session_name() {
    for (session, prefix) in [
        ("__Host-relay-session", "__Host-relay-flow"),
        ("my_session", "my_flow"),
        ("session", "session-flow"),
        ("sess", "sess-flow"),
    ] {
        let c = config(
            json!({"cookies": {"access_token": "at", "session": session, "csrf": "x",
                                          "path": "/", "same_site": "Lax", "secure": true}}),
        );
        let l = login(&c);
        assert_eq!(l.flow_cookie_prefix, prefix);
        let name = l.flow_cookie_name("some-state");
        assert!(
            l.is_flow_cookie(&name) && name.len() == prefix.len() + 9,
            "{name}"
        );
        assert!(cookie::is_valid_name(&name));
        assert!(!l.is_flow_cookie(session));
    }
    let l = login(&config(json!({})));
    for n in [
        "__Host-relay-flow",
        "__Host-relay-flow-",
        "__Host-relay-flow-0123456",
        "__Host-relay-flow-0123456G",
        "__Host-relay-flow-ABCDEF01",
        "__Host-relay-flow-012345678",
        "x__Host-relay-flow-01234567",
    ] {
        assert!(!l.is_flow_cookie(n), "{n}");
    }
    // A cookie name that would collide with the flow cookies is refused.
    let c = config(
        json!({"cookies": {"access_token": "__Host-relay-flow-0badcafe", "session": SESSION, "csrf": CSRF,
                                      "path": "/", "same_site": "Strict", "secure": true}}),
    );
    assert_eq!(try_login(&c, json!({})).unwrap_err().field, "cookies");
}

#[test]
fn bad_configurations_name_their_field() {
    let c = config(json!({}));
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"authorization_endpoint": "http://auth.example.com/authorize"}),
            "login.authorization_endpoint",
        ),
        (
            json!({"authorization_endpoint": "auth.example.com/authorize"}),
            "login.authorization_endpoint",
        ),
        (
            json!({"authorization_endpoint": "https://auth.example.com/a#f"}),
            "login.authorization_endpoint",
        ),
        (
            json!({"authorization_endpoint": "https://u:p@auth.example.com/a"}),
            "login.authorization_endpoint",
        ),
        (
            json!({"authorization_endpoint": "https://auth example.com/a"}),
            "login.authorization_endpoint",
        ),
        (
            json!({"authorization_endpoint": "https://auth.example.com:0/a"}),
            "login.authorization_endpoint",
        ),
        (
            json!({"authorization_endpoint": "ftp://auth.example.com/a"}),
            "login.authorization_endpoint",
        ),
        (
            json!({"redirect_uri": "https://app.example.com/cb?x=1"}),
            "login.redirect_uri",
        ),
        (
            json!({"redirect_uri": "https://app.example.com"}),
            "login.redirect_uri",
        ),
        (
            json!({"redirect_uri": "http://app.example.com/cb"}),
            "login.redirect_uri",
        ),
        (json!({"login_path": "auth/login"}), "login.login_path"),
        (json!({"login_path": "//auth"}), "login.login_path"),
        (json!({"login_path": "/auth/login?x"}), "login.login_path"),
        (json!({"login_path": "/auth/callback"}), "login.login_path"),
        (json!({"logout_path": "/auth/login"}), "login.logout_path"),
        (
            json!({"logout_path": "/auth/callback"}),
            "login.logout_path",
        ),
        (json!({"scopes": ["profile"]}), "login.scopes"),
        (json!({"scopes": []}), "login.scopes"),
        (json!({"scopes": ["openid", "a b"]}), "login.scopes[1]"),
        (json!({"scopes": ["openid", "openid"]}), "login.scopes[1]"),
        (json!({"scopes": ["openid", ""]}), "login.scopes[1]"),
        (
            json!({"revocation_path": "https://auth.example.com/revoke"}),
            "login.revocation_path",
        ),
        (
            json!({"end_session_endpoint": "/logout"}),
            "login.end_session_endpoint",
        ),
        (
            json!({"post_logout_redirect": "//evil.test/"}),
            "login.post_logout_redirect",
        ),
        (
            json!({"post_logout_redirect": "/\\evil"}),
            "login.post_logout_redirect",
        ),
        (
            json!({"post_logout_redirect": "javascript:alert(1)"}),
            "login.post_logout_redirect",
        ),
        (
            json!({"session_lifetime_s": 10}),
            "login.session_lifetime_s",
        ),
        (
            json!({"session_lifetime_s": 40_000_000}),
            "login.session_lifetime_s",
        ),
        (json!({"prompt": "bogus"}), "login.prompt"),
        (json!({"prompt": "none login"}), "login.prompt"),
        (json!({"prompt": ""}), "login.prompt"),
        (
            json!({"extra_authorize_params": {"state": "x"}}),
            "login.extra_authorize_params.state",
        ),
        (
            json!({"extra_authorize_params": {"response_mode": "form_post"}}),
            "login.extra_authorize_params.response_mode",
        ),
        (
            json!({"extra_authorize_params": {"a b": "x"}}),
            "login.extra_authorize_params.a b",
        ),
        (
            json!({"extra_authorize_params": {"acr": "a\nb"}}),
            "login.extra_authorize_params.acr",
        ),
        (json!({"id_token_issuer": " "}), "login.id_token_issuer"),
    ];
    for (extra, field) in cases {
        let what = extra.to_string();
        let ConfigError { field: f, problem } = try_login(&c, extra).unwrap_err();
        assert_eq!(f, field, "{what}: {problem}");
        assert!(!problem.is_empty() && !problem.contains('\n'), "{what}");
    }
    // Unknown members and missing required ones are refused while reading, named.
    let e = RawLogin::read(raw_login(json!({"scope": "openid"})).into(), "login").unwrap_err();
    assert_eq!(e.field, "login.scope", "{e}");
    assert!(e.problem.starts_with("unknown field `scope`"), "{e}");
    let e = RawLogin::read(raw_login(json!({"redirect_uri": null})).into(), "login").unwrap_err();
    assert_eq!(e.field, "login.redirect_uri", "{e}");
}

// ---- login start ----

#[test]
fn authorization_request_carries_pkce_state_and_nonce() {
    let c = config(json!({}));
    let l = try_login(&c, json!({"prompt": "consent", "extra_authorize_params": {"audience": "https://api.example.com"}})).unwrap();
    let (r, state, flow_cookie) = started(&c, &l, "/a?b=c", 1, NOW);
    assert_eq!(r.status, 302);
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    let location = header(&r, "location").unwrap();
    assert!(
        location
            .starts_with("https://auth.example.com/oauth2/authorize?response_type=code&client_id="),
        "{location}"
    );
    // Spaces as %20, everything but unreserved characters encoded.
    assert!(
        location.contains("&scope=openid%20offline_access&"),
        "{location}"
    );
    assert!(
        location.contains("&redirect_uri=https%3A%2F%2Fapp.example.com%2Fauth%2Fcallback&"),
        "{location}"
    );
    let p = location_params(location);
    assert_eq!(param(&p, "response_type"), "code");
    assert_eq!(param(&p, "client_id"), AUD);
    assert_eq!(
        param(&p, "redirect_uri"),
        "https://app.example.com/auth/callback"
    );
    assert_eq!(param(&p, "scope"), "openid offline_access");
    assert_eq!(param(&p, "code_challenge_method"), "S256");
    assert_eq!(param(&p, "prompt"), "consent");
    assert_eq!(param(&p, "audience"), "https://api.example.com");
    assert_eq!(state, URL_SAFE_NO_PAD.encode([2u8; 32]));
    assert_eq!(param(&p, "nonce"), URL_SAFE_NO_PAD.encode([3u8; 32]));
    for v in [
        param(&p, "state"),
        param(&p, "nonce"),
        param(&p, "code_challenge"),
    ] {
        assert_eq!(v.len(), 43);
    }

    // The flow cookie: named after the state, sealed, Lax, HttpOnly, Secure, 10 minutes.
    let set = set_cookies(&r);
    assert_eq!(set.len(), 1);
    let name = l.flow_cookie_name(&state);
    let digest = sha2_11::Sha256::digest(state.as_bytes());
    assert_eq!(
        name,
        format!(
            "__Host-relay-flow-{:02x}{:02x}{:02x}{:02x}",
            digest[0], digest[1], digest[2], digest[3]
        )
    );
    assert!(set[0].starts_with(&format!("{name}=")));
    assert!(
        set[0].ends_with("; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"),
        "{}",
        set[0]
    );
    let sealed = flow_cookie.split_once('=').unwrap().1;
    let (flow, _) = session::unseal_json(&refresh(&c).session_keys, sealed, Flow::read).unwrap();
    assert_eq!(flow.s, state);
    assert_eq!(flow.n, param(&p, "nonce"));
    assert_eq!(flow.r, "/a?b=c");
    assert_eq!(flow.t, NOW);
    assert_eq!(flow.v.len(), 43);
    assert_eq!(flow.v, URL_SAFE_NO_PAD.encode([1u8; 32]));
    // S256: the challenge is base64url(SHA-256(verifier)).
    assert_eq!(
        param(&p, "code_challenge"),
        URL_SAFE_NO_PAD.encode(sha2_11::Sha256::digest(flow.v.as_bytes()))
    );
    // The verifier, nonce and return path never show in the URL.
    assert!(!location.contains(&flow.v));
}

#[test]
fn endpoint_with_a_query_gets_an_ampersand() {
    let c = config(json!({}));
    for (endpoint, prefix) in [
        (
            "https://auth.example.com/authorize?tenant=a",
            "https://auth.example.com/authorize?tenant=a&response_type=code&",
        ),
        (
            "https://auth.example.com/authorize?",
            "https://auth.example.com/authorize?response_type=code&",
        ),
        (
            "https://auth.example.com/authorize?a=1&",
            "https://auth.example.com/authorize?a=1&response_type=code&",
        ),
        (
            "https://auth.example.com",
            "https://auth.example.com?response_type=code&",
        ),
    ] {
        let l = try_login(&c, json!({"authorization_endpoint": endpoint})).unwrap();
        let (r, _, _) = started(&c, &l, "/", 1, NOW);
        assert!(
            header(&r, "location").unwrap().starts_with(prefix),
            "{endpoint}"
        );
    }
}

#[test]
fn two_flows_get_two_cookies() {
    let c = config(json!({}));
    let l = login(&c);
    let (_, state_a, flow_a) = started(&c, &l, "/a", 1, NOW);
    let (_, state_b, flow_b) = started(&c, &l, "/b", 50, NOW + 1);
    assert_ne!(state_a, state_b);
    let (name_a, name_b) = (
        flow_a.split_once('=').unwrap().0,
        flow_b.split_once('=').unwrap().0,
    );
    assert_ne!(name_a, name_b);
    // Both tabs finish, each with its own flow, in either order.
    let both = format!("{flow_a}; {flow_b}");
    for (state, to) in [(&state_b, "/b"), (&state_a, "/a")] {
        let (_, p) = callback(
            &c,
            &l,
            refresh(&c),
            &format!("code=c&state={state}"),
            &both,
            false,
            NOW + 2,
        )
        .unwrap();
        assert_eq!(p.return_to(), to);
    }
}

#[test]
fn stale_flow_cookies_are_cleaned_up() {
    let c = config(json!({}));
    let l = login(&c);
    let flows: Vec<String> = (0..4u8)
        .map(|i| started(&c, &l, "/", 10 * i + 1, NOW + u64::from(i) * 10).2)
        .collect();
    let names: Vec<&str> = flows.iter().map(|f| f.split_once('=').unwrap().0).collect();
    let garbage = "__Host-relay-flow-00000000=garbage";
    let now = NOW + 100;

    // Four readable flows and a garbage one: the garbage and the two oldest go.
    let header_all = format!("{}; {garbage}; other=1", flows.join("; "));
    let r = start(&c, &l, refresh(&c), "", &header_all, now, &random(200));
    let mut cleared = cleared_names(&r);
    cleared.sort();
    let mut want = vec![
        "__Host-relay-flow-00000000".to_string(),
        names[0].to_string(),
        names[1].to_string(),
    ];
    want.sort();
    assert_eq!(cleared, want);
    assert_eq!(set_names(&r).len(), 1, "the new flow");
    for clear in set_cookies(&r).iter().filter(|c| c.contains("Max-Age=0")) {
        assert!(
            clear.contains("; Path=/;") && clear.contains("SameSite=Lax"),
            "{clear}"
        );
    }

    // Three present: tolerated, except the unreadable one.
    let header_three = format!("{}; {}; {garbage}", flows[0], flows[1]);
    let r = start(&c, &l, refresh(&c), "", &header_three, now, &random(200));
    assert_eq!(cleared_names(&r), vec!["__Host-relay-flow-00000000"]);
    let r = start(
        &c,
        &l,
        refresh(&c),
        "",
        &flows[..3].join("; "),
        now,
        &random(200),
    );
    assert!(cleared_names(&r).is_empty());

    // Expired flows go whatever the count.
    let r = start(
        &c,
        &l,
        refresh(&c),
        "",
        &flows[0],
        NOW + FLOW_MAX_AGE_S + 1,
        &random(200),
    );
    assert_eq!(cleared_names(&r), vec![names[0].to_string()]);
}

/// Flows started in the same second: the header's order decides, older (listed first) go.
#[test]
fn stale_flow_cookies_tie_on_position() {
    let c = config(json!({}));
    let l = login(&c);
    let flows: Vec<String> = (0..4u8)
        .map(|i| started(&c, &l, "/", 10 * i + 1, NOW).2)
        .collect();
    let names: Vec<&str> = flows.iter().map(|f| f.split_once('=').unwrap().0).collect();
    let r = start(
        &c,
        &l,
        refresh(&c),
        "",
        &flows.join("; "),
        NOW + 1,
        &random(200),
    );
    let mut cleared = cleared_names(&r);
    cleared.sort();
    let mut want = vec![names[0].to_string(), names[1].to_string()];
    want.sort();
    assert_eq!(cleared, want);
}

#[test]
fn return_to_table() {
    let ok: &[(&str, &str)] = &[
        ("/a?b=c", "/a?b=c"),
        ("/", "/"),
        ("/app/page#frag", "/app/page#frag"),
        ("/a%20b", "/a%20b"),
        ("/a b", "/a%20b"),
        ("/über", "/%C3%BCber"),
        ("/q?x=\"<y>\"", "/q?x=%22%3Cy%3E%22"),
        ("/%2e%2e/x", "/%2e%2e/x"),
        ("/a/%2F%2Fb", "/a/%2F%2Fb"),
    ];
    for (raw, want) in ok {
        assert_eq!(safe_return_to(raw), *want, "{raw:?}");
    }
    let refused = [
        "https://evil.test/",
        "//evil.test",
        "///evil.test",
        "/\\evil.test",
        "\\\\evil.test",
        "/a\\b",
        "/%2F%2Fevil.test",
        "/%2f/evil.test",
        "/%5Cevil.test",
        "/%5cevil.test",
        "/%252F%252Fevil.test",
        "/%09/evil.test",
        "/\t/evil.test",
        "/a\nb",
        "/a\rb",
        "/a\u{7f}",
        "/a\u{85}",
        "/%00",
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        "data:text/html,x",
        "evil.test",
        "",
        " /a",
    ];
    for raw in refused {
        assert_eq!(safe_return_to(raw), "/", "{raw:?}");
    }
    let long = format!("/{}", "a".repeat(MAX_RETURN_TO_LEN));
    assert_eq!(safe_return_to(&long), "/");
    let just = format!("/{}", "a".repeat(MAX_RETURN_TO_LEN - 1));
    assert_eq!(safe_return_to(&just), just);
    // Growing past the cap by encoding counts too.
    let wide = format!("/{}", "é".repeat(MAX_RETURN_TO_LEN / 4));
    assert_eq!(safe_return_to(&wide), "/");

    // Through the login start: the query value is decoded once, then checked.
    let c = config(json!({}));
    let l = login(&c);
    let sealed_return = |q: &str| {
        let r = start(&c, &l, refresh(&c), q, "", NOW, &random(1));
        let (_, v) = jar(&r)
            .split_once('=')
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .unwrap();
        session::unseal_json(&refresh(&c).session_keys, &v, Flow::read)
            .unwrap()
            .0
            .r
    };
    assert_eq!(sealed_return("return_to=%2Fa%3Fb%3Dc"), "/a?b=c");
    assert_eq!(sealed_return("return_to=/a?b=c"), "/a?b=c");
    assert_eq!(sealed_return("return_to=/a&b=c"), "/a");
    assert_eq!(sealed_return("return_to=%2F%2Fevil.test"), "/");
    assert_eq!(sealed_return("return_to=/%252F%252Fevil"), "/");
    assert_eq!(sealed_return("return_to=https://evil.test"), "/");
    assert_eq!(sealed_return(""), "/");
    assert_eq!(sealed_return("return_to="), "/");
    assert_eq!(
        sealed_return("return_to=/first&return_to=/second"),
        "/first"
    );
}

// ---- navigation ----

#[test]
fn navigation_detection() {
    let html = Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
    let cases: &[(&str, Option<&str>, Option<&str>, bool)] = &[
        ("GET", Some("navigate"), html, true),
        ("GET", Some("navigate"), None, true),
        ("POST", Some("navigate"), html, true),
        ("GET", Some("cors"), html, false),
        ("GET", Some("no-cors"), html, false),
        ("GET", Some("same-origin"), Some("*/*"), false),
        ("GET", None, html, true),
        ("GET", None, Some("TEXT/HTML"), true),
        ("GET", None, Some("*/*"), false),
        ("GET", None, Some("application/json"), false),
        ("GET", None, None, false),
        ("POST", None, html, false),
        ("HEAD", None, html, false),
    ];
    for (method, mode, accept, want) in cases {
        assert_eq!(
            is_navigation(method, *mode, *accept),
            *want,
            "{method} {mode:?} {accept:?}"
        );
    }
}

// ---- callback ----

#[test]
fn callback_happy_path() {
    let c = config(json!({}));
    let l = login(&c);
    let old_csrf = format!("; {CSRF}=planted-before-login; {SESSION}.0=old; {SESSION}.1=old");
    let (req, pending) = exchange(&c, &l, &old_csrf);

    // The code exchange: authorization_code with the verifier, client authentication.
    let h = |n: &str| {
        req.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h(":method"), Some("POST"));
    assert_eq!(h(":path"), Some("/oauth2/token"));
    assert_eq!(h(":authority"), Some("idp.example.com"));
    assert!(h("authorization").unwrap().starts_with("Basic "));
    let verifier = URL_SAFE_NO_PAD.encode([1u8; 32]);
    assert_eq!(
        req.body,
        format!("grant_type=authorization_code&code=the-code&redirect_uri=https%3A%2F%2Fapp.example.com%2Fauth%2Fcallback&code_verifier={verifier}")
    );
    assert_eq!(pending.return_to(), "/app/page?x=1");
    assert!(!format!("{pending:?}").contains(&verifier));

    let id_token = testkit::sign(&id_claims(&nonce_of(&random(1))));
    let r = finish(
        &c,
        &l,
        &pending,
        Some(200),
        &token_body(Some(&id_token), Some("rt-1")),
    );
    // Strict relay cookies: a same-site hop page rather than a 302.
    assert_eq!(r.status, 200);
    assert_eq!(r.reason, "login");
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(header(&r, "referrer-policy"), Some("no-referrer"));
    assert!(
        r.body
            .contains("<meta http-equiv=\"refresh\" content=\"0;url=/app/page?x=1\">"),
        "{}",
        r.body
    );

    let cookies = parsed_cookies(&r);
    let get = |n: &str| cookies.iter().find(|(k, _, _)| k == n).unwrap();
    let at = get(AT);
    // (Signatures are randomized: compare the signed part.)
    let signed = |t: &str| t.rsplit_once('.').unwrap().0.to_string();
    assert_eq!(signed(&at.1), signed(&testkit::sign(&testkit::claims())));
    assert_eq!(at.2, Some(300));
    let session_value = &get(SESSION).1;
    let s = session::unseal(&refresh(&c).session_keys, session_value, NOW)
        .unwrap()
        .session;
    assert_eq!(s.rt, "rt-1");
    assert_eq!(s.exp, Some(NOW + DEFAULT_SESSION_LIFETIME_S));
    assert_eq!(s.id_token.as_deref(), Some(id_token.as_str()));
    assert_eq!(get(SESSION).2, Some(DEFAULT_SESSION_LIFETIME_S));
    // Stale chunks of an older session are deleted.
    let mut cleared = cleared_names(&r);
    cleared.sort();
    assert_eq!(
        cleared,
        vec![
            pending.flow_cookie.clone(),
            format!("{SESSION}.0"),
            format!("{SESSION}.1")
        ]
    );
    // A fresh CSRF token, readable by the page.
    let csrf_line = set_cookies(&r)
        .into_iter()
        .find(|l| l.starts_with(CSRF))
        .unwrap();
    assert!(
        !csrf_line.contains("HttpOnly") && csrf_line.contains("SameSite=Strict"),
        "{csrf_line}"
    );
    assert_eq!(get(CSRF).1, csrf::new_token([9; 32]));
    for line in set_cookies(&r).iter().filter(|l| !l.starts_with(CSRF)) {
        assert!(
            line.contains("HttpOnly") && line.contains("Secure"),
            "{line}"
        );
    }

    // Lax relay cookies: a plain 302.
    let c = config(
        json!({"cookies": {"access_token": AT, "session": SESSION, "csrf": CSRF,
                                      "path": "/", "same_site": "Lax", "secure": true}}),
    );
    let l = login(&c);
    let (_, pending) = exchange(&c, &l, "");
    let r = finish(
        &c,
        &l,
        &pending,
        Some(200),
        &token_body(Some(&id_token), Some("rt-1")),
    );
    assert_eq!(r.status, 302);
    assert_eq!(header(&r, "location"), Some("/app/page?x=1"));
    assert!(set_names(&r).contains(&SESSION.to_string()));
}

use crate::csrf;

#[test]
fn login_without_refresh_token_or_double_submit() {
    let c = config(json!({"csrf": null}));
    let l = login(&c);
    let (_, pending) = exchange(&c, &l, &format!("; {SESSION}=previous-user"));
    let id_token = testkit::sign(&id_claims(&nonce_of(&random(1))));
    let r = finish(
        &c,
        &l,
        &pending,
        Some(200),
        &token_body(Some(&id_token), None),
    );
    assert_eq!(r.reason, "login_no_refresh_token");
    assert_eq!(set_names(&r), vec![AT.to_string()]);
    assert!(cleared_names(&r).contains(&SESSION.to_string()));
}

/// Asserts an error answer: status, reason, no token or session cookie set.
fn assert_refused(r: &Reply, status: u32, reason: &str) {
    assert_eq!(r.status, status, "{reason}: {}", r.body);
    assert_eq!(r.reason, reason);
    assert_eq!(header(r, "cache-control"), Some("no-store"));
    assert!(set_names(r).is_empty(), "{reason}: {:?}", set_cookies(r));
    assert!(!set_cookies(r)
        .iter()
        .any(|c| c.starts_with(AT) || c.starts_with(SESSION) || c.starts_with(CSRF)));
}

#[test]
fn callback_errors_before_the_exchange() {
    let c = config(json!({}));
    let l = login(&c);
    let (_, state, flow) = started(&c, &l, "/back", 1, NOW);
    let flow_name = flow.split_once('=').unwrap().0.to_string();
    let run = |q: &str, cookies: &str, now: u64| {
        callback(&c, &l, refresh(&c), q, cookies, false, now).unwrap_err()
    };

    // The IdP's error: 400, its (known) code echoed, the flow cleared; its description never.
    let r = run(
        &format!("error=access_denied&error_description=Call+0800-SCAM&state={state}"),
        &flow,
        NOW,
    );
    assert_refused(&r, 400, "login_idp_error");
    assert_eq!(json_body(&r)["error"], "access_denied");
    assert!(!r.body.contains("SCAM"));
    assert_eq!(cleared_names(&r), vec![flow_name.clone()]);
    let r = run("error=%3Cscript%3E", "", NOW);
    assert_refused(&r, 400, "login_idp_error");
    assert_eq!(json_body(&r)["error"], "invalid_request");
    assert!(cleared_names(&r).is_empty());

    // Missing or repeated parameters.
    for q in [
        "code=x",
        &format!("state={state}"),
        &format!("code=&state={state}"),
        "",
        &format!("code=a&code=b&state={state}"),
        &format!("code=a&state={state}&state={state}"),
    ] {
        assert_refused(&run(q, &flow, NOW), 400, "login_bad_callback");
    }
    // RFC 9207: another issuer is a mix-up.
    let r = run(
        &format!("code=x&state={state}&iss=https%3A%2F%2Fother.test"),
        &flow,
        NOW,
    );
    assert_refused(&r, 400, "login_wrong_issuer");
    let ok = callback(
        &c,
        &l,
        refresh(&c),
        &format!("code=x&state={state}&iss={}", query_encode(ISS)),
        &flow,
        false,
        NOW,
    );
    assert!(ok.is_ok());

    // No flow cookie (never started here, or replayed after completion).
    let r = run(&format!("code=x&state={state}"), "other=1", NOW);
    assert_refused(&r, 400, "login_flow_missing");
    assert!(cleared_names(&r).is_empty());
    // Another flow's cookie under this state's name: the state check catches it.
    let (_, other_state, _) = started(&c, &l, "/", 7, NOW);
    let forged = format!(
        "{}={}",
        l.flow_cookie_name(&other_state),
        flow.split_once('=').unwrap().1
    );
    let r = run(
        &format!("code=x&state={}", query_encode(&other_state)),
        &forged,
        NOW,
    );
    assert_refused(&r, 400, "login_state_mismatch");
    assert_eq!(cleared_names(&r), vec![l.flow_cookie_name(&other_state)]);
    // Expired, and unreadable.
    let r = run(
        &format!("code=x&state={state}"),
        &flow,
        NOW + FLOW_MAX_AGE_S,
    );
    assert_refused(&r, 400, "login_flow_expired");
    assert_eq!(cleared_names(&r), vec![flow_name.clone()]);
    let r = run(
        &format!("code=x&state={state}"),
        &format!("{flow_name}=garbage"),
        NOW,
    );
    assert_refused(&r, 400, "login_flow_invalid");
    // A session cookie is never a flow.
    let s = session::seal(
        &refresh(&c).session_keys,
        &Session {
            rt: "rt".into(),
            exp: None,
            id_token: None,
        },
        [1; 12],
    );
    let r = run(
        &format!("code=x&state={state}"),
        &format!("{flow_name}={s}"),
        NOW,
    );
    assert_refused(&r, 400, "login_flow_invalid");
}

#[test]
fn replayed_callback_finds_no_flow() {
    let c = config(json!({}));
    let l = login(&c);
    let (_, state, flow) = started(&c, &l, "/back", 1, NOW);
    let q = format!("code=x&state={state}");
    let (_, pending) = callback(&c, &l, refresh(&c), &q, &flow, false, NOW).unwrap();
    let id_token = testkit::sign(&id_claims(&nonce_of(&random(1))));
    let r = finish(
        &c,
        &l,
        &pending,
        Some(200),
        &token_body(Some(&id_token), Some("rt")),
    );
    assert!(cleared_names(&r).contains(&pending.flow_cookie));
    // The browser now holds the session but no flow: the same callback again is refused.
    let after = jar(&r);
    assert!(!after.contains("relay-flow"));
    let r = callback(&c, &l, refresh(&c), &q, &after, false, NOW + 1).unwrap_err();
    assert_refused(&r, 400, "login_flow_missing");
}

#[test]
fn callback_errors_after_the_exchange() {
    let c = config(json!({}));
    let l = login(&c);
    let (_, pending) = exchange(&c, &l, "");
    let nonce = nonce_of(&random(1));
    let good_id = testkit::sign(&id_claims(&nonce));
    let mut wrong_aud = id_claims(&nonce);
    wrong_aud["aud"] = json!("another-client");
    let mut expired_id = id_claims(&nonce);
    expired_id["exp"] = json!(NOW - 100);
    let mut no_nonce = id_claims(&nonce);
    no_nonce.as_object_mut().unwrap().remove("nonce");
    let mut bad_at = testkit::claims();
    bad_at["token_use"] = json!("id");
    let at_body = |at: &str, id: &str| {
        json!({"access_token": at, "id_token": id, "refresh_token": "rt", "token_type": "Bearer"})
            .to_string()
            .into_bytes()
    };
    let cases: Vec<(Option<u32>, Vec<u8>, u32, &str)> = vec![
        (Some(500), b"oops".to_vec(), 503, "login_idp_unavailable"),
        (Some(503), b"".to_vec(), 503, "login_idp_unavailable"),
        (None, b"".to_vec(), 503, "login_idp_unavailable"),
        (
            Some(400),
            br#"{"error":"invalid_grant"}"#.to_vec(),
            400,
            "login_code_rejected",
        ),
        (
            Some(401),
            br#"{"error":"invalid_client"}"#.to_vec(),
            502,
            "login_exchange_failed",
        ),
        (Some(200), b"<html>".to_vec(), 502, "login_exchange_failed"),
        (
            Some(200),
            token_body(None, Some("rt")),
            401,
            "login_id_token_missing",
        ),
        (
            Some(200),
            token_body(
                Some(&testkit::sign(&id_claims("another-nonce"))),
                Some("rt"),
            ),
            401,
            "login_nonce_mismatch",
        ),
        (
            Some(200),
            token_body(Some(&testkit::sign(&no_nonce)), Some("rt")),
            401,
            "login_nonce_mismatch",
        ),
        (
            Some(200),
            token_body(Some(&testkit::sign(&wrong_aud)), Some("rt")),
            401,
            "login_id_token_invalid",
        ),
        (
            Some(200),
            token_body(Some(&testkit::sign(&expired_id)), Some("rt")),
            401,
            "login_id_token_invalid",
        ),
        (
            Some(200),
            token_body(Some("not.a.jwt"), Some("rt")),
            401,
            "login_id_token_invalid",
        ),
        (
            Some(200),
            at_body(&testkit::sign(&bad_at), &good_id),
            401,
            "login_access_token_invalid",
        ),
        (
            Some(200),
            at_body("opaque-token", &good_id),
            401,
            "login_access_token_invalid",
        ),
    ];
    for (status, body, want_status, reason) in cases {
        let r = finish(&c, &l, &pending, status, &body);
        assert_refused(&r, want_status, reason);
        assert_eq!(
            cleared_names(&r),
            vec![pending.flow_cookie.clone()],
            "{reason}"
        );
        if want_status == 503 {
            assert_eq!(header(&r, "retry-after"), Some("5"));
            assert_eq!(json_body(&r)["error"], "temporarily_unavailable");
        }
    }
    let r = finish(
        &c,
        &l,
        &pending,
        Some(200),
        &token_body(Some(&good_id), Some("rt")),
    );
    assert_eq!(r.status, 200);

    // Keys: none loaded yet, or a kid the set lacks.
    let body = token_body(Some(&good_id), Some("rt"));
    match finish_callback(
        &LoginContext {
            config: &c,
            login: &l,
            keys: None,
        },
        &pending,
        Some(200),
        &body,
        NOW,
        &Random::fixed(1),
        true,
    ) {
        CallbackOutcome::Respond(r) => assert_refused(&r, 503, "login_keys_not_ready"),
        CallbackOutcome::UnknownKid => panic!("no keys is not an unknown kid"),
    }
    let rotated = testkit::sign_with_kid(&id_claims(&nonce), "new-kid");
    let body = token_body(Some(&rotated), Some("rt"));
    let keys = testkit::inline_keys(&c);
    assert!(matches!(
        finish_callback(
            &LoginContext {
                config: &c,
                login: &l,
                keys: Some(keys)
            },
            &pending,
            Some(200),
            &body,
            NOW,
            &Random::fixed(1),
            true
        ),
        CallbackOutcome::UnknownKid
    ));
    match finish_callback(
        &LoginContext {
            config: &c,
            login: &l,
            keys: Some(keys),
        },
        &pending,
        Some(200),
        &body,
        NOW,
        &Random::fixed(1),
        false,
    ) {
        CallbackOutcome::Respond(r) => assert_refused(&r, 401, "login_id_token_invalid"),
        CallbackOutcome::UnknownKid => panic!("refetch not allowed"),
    }
}

#[test]
fn separate_id_token_issuer() {
    const V2: &str = "https://login.example.com/v2.0";
    let c = config(json!({}));
    let l = try_login(&c, json!({ "id_token_issuer": V2 })).unwrap();
    let (_, state, flow) = started(&c, &l, "/", 1, NOW);
    let with_iss = |iss: &str| format!("code=x&state={state}&iss={}", query_encode(iss));
    let r = callback(&c, &l, refresh(&c), &with_iss(ISS), &flow, false, NOW).unwrap_err();
    assert_refused(&r, 400, "login_wrong_issuer");
    let (_, pending) = callback(&c, &l, refresh(&c), &with_iss(V2), &flow, false, NOW).unwrap();
    let mut claims = id_claims(&nonce_of(&random(1)));
    claims["iss"] = json!(V2);
    let body = token_body(Some(&testkit::sign(&claims)), Some("rt"));
    assert_eq!(finish(&c, &l, &pending, Some(200), &body).status, 200);
    // The access-token issuer is no longer accepted on ID tokens.
    let body = token_body(
        Some(&testkit::sign(&id_claims(&nonce_of(&random(1))))),
        Some("rt"),
    );
    let r = finish(&c, &l, &pending, Some(200), &body);
    assert_refused(&r, 401, "login_id_token_invalid");
}

#[test]
fn errors_are_html_or_json_by_accept() {
    let accept_cases: &[(Option<&str>, bool)] = &[
        (
            Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            true,
        ),
        (Some("text/html"), true),
        (Some("TEXT/HTML; q=0.5, application/json; q=0.4"), true),
        (Some("application/json, text/html;q=0.9"), false),
        (Some("text/html, application/json"), false),
        (Some("text/html;q=0"), false),
        (Some("text/html;q=abc"), false),
        (Some("*/*"), false),
        (Some("application/json"), false),
        (Some(""), false),
        (None, false),
    ];
    for (accept, html) in accept_cases {
        assert_eq!(wants_html(*accept), *html, "{accept:?}");
    }
    assert!(prefers_json(Some("application/json")));
    assert!(prefers_json(Some("application/json, text/plain, */*")));
    assert!(!prefers_json(Some("*/*")));
    assert!(!prefers_json(Some("text/html,*/*;q=0.8")));
    assert!(!prefers_json(None));

    let c = config(json!({}));
    let l = login(&c);
    let (_, state, flow) = started(&c, &l, "/back?a=1&b=<2>", 1, NOW);
    let q = format!("error=access_denied&state={state}");
    let html = callback(&c, &l, refresh(&c), &q, &flow, true, NOW).unwrap_err();
    assert_refused(&html, 400, "login_idp_error");
    assert_eq!(
        header(&html, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(header(&html, "content-security-policy").is_some());
    assert!(html.body.starts_with("<!DOCTYPE html>"));
    assert!(
        html.body.contains("did not sign you in (access_denied)"),
        "{}",
        html.body
    );
    // "Try again" starts a new login back to the (proven) return path, escaped.
    assert!(
        html.body.contains(
            "<a href=\"/auth/login?return_to=%2Fback%3Fa%3D1%26b%3D%253C2%253E\">Try again</a>"
        ),
        "{}",
        html.body
    );
    assert!(!html.body.contains("<2>"));
    let json = callback(&c, &l, refresh(&c), &q, &flow, false, NOW).unwrap_err();
    assert_eq!(header(&json, "content-type"), Some("application/json"));
    let body = json_body(&json);
    assert_eq!(body["error"], "access_denied");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("did not sign you in"));
    // 401s and 503s too.
    let (_, pending) = callback(
        &c,
        &l,
        refresh(&c),
        &format!("code=x&state={state}"),
        &flow,
        true,
        NOW,
    )
    .unwrap();
    let r = finish(&c, &l, &pending, Some(502), b"");
    assert_eq!(
        (r.status, header(&r, "content-type")),
        (503, Some("text/html; charset=utf-8"))
    );
    assert!(r.body.contains("Try again"));
}

#[test]
fn html_is_escaped() {
    assert_eq!(
        html_escape("<a href=\"x\">'&'</a>"),
        "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
    );
}

// ---- logout ----

fn session_cookie(c: &Config, id_token: Option<&str>, exp: Option<u64>) -> String {
    let s = Session {
        rt: "rt-to-revoke".into(),
        exp,
        id_token: id_token.map(str::to_string),
    };
    format!(
        "{SESSION}={}",
        session::seal(&refresh(c).session_keys, &s, [4; 12])
    )
}

#[test]
fn logout_with_end_session_and_session() {
    let c = config(json!({}));
    let l = login(&c);
    let (_, _, flow) = started(&c, &l, "/", 1, NOW);
    let cookies = format!(
        "{AT}=x; {}; {CSRF}=t; {flow}; app=1",
        session_cookie(&c, Some("the.id.token"), Some(NOW + 60))
    );
    let out = logout(&c, &l, &cookies, false, NOW);

    let rev = out.revocation.expect("revocation");
    let h = |n: &str| {
        rev.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h(":path"), Some("/oauth2/revoke"));
    assert_eq!(h(":method"), Some("POST"));
    assert_eq!(h(":authority"), Some("idp.example.com"));
    assert!(h("authorization").unwrap().starts_with("Basic "));
    assert_eq!(rev.body, "token=rt-to-revoke&token_type_hint=refresh_token");

    let r = out.reply;
    assert_eq!(r.status, 302);
    assert_eq!(r.reason, "logout");
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    let location = header(&r, "location").unwrap();
    assert!(
        location.starts_with("https://auth.example.com/logout?client_id="),
        "{location}"
    );
    let p = location_params(location);
    assert_eq!(param(&p, "client_id"), AUD);
    assert_eq!(param(&p, "id_token_hint"), "the.id.token");
    assert_eq!(
        param(&p, "post_logout_redirect_uri"),
        "https://app.example.com/"
    );
    let mut cleared = cleared_names(&r);
    cleared.sort();
    let mut want = vec![
        AT.to_string(),
        SESSION.to_string(),
        CSRF.to_string(),
        flow.split_once('=').unwrap().0.to_string(),
    ];
    want.sort();
    assert_eq!(cleared, want);
    assert!(set_names(&r).is_empty());

    // A fetch that asks for JSON gets the URL to go to, without the ID token: a JSON body is
    // readable by JavaScript.
    let r = logout(&c, &l, &cookies, true, NOW).reply;
    assert_eq!(r.status, 200);
    let to = json_body(&r)["redirect_to"].as_str().unwrap().to_string();
    assert!(!to.contains("id_token_hint"), "{to}");
    assert!(to.contains("client_id=") && to.contains("post_logout_redirect_uri="));
    assert_eq!(cleared_names(&r).len(), 4);
}

#[test]
fn logout_without_session_or_end_session_endpoint() {
    let c = config(json!({}));
    let l = login(&c);
    // No session, an expired one, or garbage: no revocation, no hint, cookies still cleared.
    for cookies in [
        String::new(),
        format!("{AT}=x"),
        session_cookie(&c, Some("idt"), Some(NOW)),
        format!("{SESSION}=garbage"),
    ] {
        let out = logout(&c, &l, &cookies, false, NOW);
        assert!(out.revocation.is_none(), "{cookies}");
        let location = header(&out.reply, "location").unwrap();
        assert!(!location.contains("id_token_hint"), "{location}");
        assert!(location.contains("post_logout_redirect_uri=https%3A%2F%2Fapp.example.com%2F"));
        let cleared = cleared_names(&out.reply);
        assert!(
            cleared.contains(&AT.to_string())
                && cleared.contains(&SESSION.to_string())
                && cleared.contains(&CSRF.to_string())
        );
    }
    // A session without an ID token: revoked, no hint.
    let out = logout(&c, &l, &session_cookie(&c, None, None), false, NOW);
    assert!(out.revocation.is_some());
    assert!(!header(&out.reply, "location")
        .unwrap()
        .contains("id_token_hint"));

    // Without end_session_endpoint (nor revocation): straight to post_logout_redirect.
    let l = try_login(&c, json!({"end_session_endpoint": null, "revocation_path": null, "post_logout_redirect": "/goodbye"})).unwrap();
    let out = logout(&c, &l, &session_cookie(&c, Some("idt"), None), false, NOW);
    assert!(out.revocation.is_none());
    assert_eq!(header(&out.reply, "location"), Some("/goodbye"));
    let l = try_login(
        &c,
        json!({"end_session_endpoint": null, "post_logout_redirect": "https://www.example.com/"}),
    )
    .unwrap();
    let out = logout(&c, &l, "", false, NOW);
    assert_eq!(
        header(&out.reply, "location"),
        Some("https://www.example.com/")
    );
}

// ---- dispatch ----

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":method".to_string(), method.as_bytes().to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
    ];
    for (n, v) in extra {
        h.push((n.to_string(), v.as_bytes().to_vec()));
    }
    h
}

fn step(c: &Config, l: &LoginConfig, headers: &[(String, Vec<u8>)]) -> Option<LoginStep> {
    handle(c, l, &RequestView::new(headers), NOW, &random(1))
}

#[test]
fn handle_routes_and_methods() {
    let c = config(json!({}));
    let l = login(&c);
    assert!(step(&c, &l, &request("GET", "/api/x", &[])).is_none());
    assert!(step(&c, &l, &request("GET", "/auth/login-not", &[])).is_none());

    let Some(LoginStep::Respond(r)) =
        step(&c, &l, &request("GET", "/auth/login?return_to=%2Fa", &[]))
    else {
        panic!("login start")
    };
    assert_eq!(r.status, 302);
    let state = param(&location_params(header(&r, "location").unwrap()), "state").to_string();
    let flow = jar(&r);

    let Some(LoginStep::Exchange {
        request: req,
        pending,
    }) = step(
        &c,
        &l,
        &request(
            "GET",
            &format!("/auth/callback?code=c&state={state}"),
            &[("cookie", &flow), ("accept", "text/html")],
        ),
    )
    else {
        panic!("exchange")
    };
    assert!(req
        .body
        .starts_with("grant_type=authorization_code&code=c&"));
    assert!(pending.html);
    assert_eq!(pending.return_to(), "/a");

    let Some(LoginStep::Respond(r)) = step(
        &c,
        &l,
        &request("GET", "/auth/callback?error=access_denied", &[]),
    ) else {
        panic!("callback error")
    };
    assert_eq!(r.status, 400);

    let Some(LoginStep::Logout(out)) = step(
        &c,
        &l,
        &request(
            "POST",
            "/auth/logout",
            &[
                ("cookie", &session_cookie(&c, None, None)),
                ("accept", "application/json"),
            ],
        ),
    ) else {
        panic!("logout")
    };
    assert!(out.revocation.is_some());
    assert_eq!(out.reply.status, 200);

    for (method, path, allow) in [
        ("GET", "/auth/logout", "POST"),
        ("HEAD", "/auth/logout", "POST"),
        ("POST", "/auth/login", "GET"),
        ("POST", "/auth/callback", "GET"),
        ("DELETE", "/auth/callback?code=1", "GET"),
        ("POST", "/auth/userinfo", "GET"),
    ] {
        let Some(LoginStep::Respond(r)) = step(&c, &l, &request(method, path, &[])) else {
            panic!("{method} {path}")
        };
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(header(&r, "allow"), Some(allow));
        assert!(set_cookies(&r).is_empty());
    }
}

// ---- userinfo ----

fn userinfo_at(c: &Config, l: &LoginConfig, cookie: &str, now: u64) -> Reply {
    let h = request("GET", "/auth/userinfo", &[("cookie", cookie)]);
    match handle(c, l, &RequestView::new(&h), now, &random(1)) {
        Some(LoginStep::Respond(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn userinfo_answers_the_id_token_claims_and_never_a_token() {
    let c = config(json!({}));
    let l = login(&c);
    let mut claims = id_claims("n-1");
    claims["name"] = json!("Alice Example");
    claims["email"] = json!("alice@example.test");
    claims["at_hash"] = json!("h");
    let id_token = testkit::sign(&claims);
    let cookie = format!(
        "{AT}=the-access-token; {}",
        session_cookie(&c, Some(&id_token), Some(NOW + 3600))
    );
    // Long after the ID token's own exp: the session's lifetime is what counts.
    let r = userinfo_at(&c, &l, &cookie, NOW + 1000);
    assert_eq!((r.status, r.reason), (200, "userinfo"));
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert!(set_cookies(&r).is_empty());
    let body = json_body(&r);
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["name"], "Alice Example");
    assert_eq!(body["email"], "alice@example.test");
    assert_eq!(body["iss"], ISS);
    assert!(body.get("nonce").is_none() && body.get("at_hash").is_none());
    for secret in [id_token.as_str(), "the-access-token", "rt-to-revoke"] {
        assert!(!r.body.contains(secret));
    }
    // A custom path is honoured.
    let l2 = try_login(&c, json!({"userinfo_path": "/me"})).unwrap();
    assert_eq!(l2.route("/me?x=1"), Some(Route::UserInfo));
    assert_eq!(l2.route("/auth/userinfo"), None);
}

#[test]
fn userinfo_without_a_valid_session_is_401_json() {
    let c = config(json!({}));
    let l = login(&c);
    let id_token = testkit::sign(&id_claims("n"));
    let expired = session_cookie(&c, Some(&id_token), Some(NOW + 10));
    let foreign = format!("{SESSION}=eyJhbGciOiJkaXIifQ..AAAA.BBBB.CCCC");
    for cookie in ["", "other=1", foreign.as_str(), expired.as_str()] {
        let r = userinfo_at(&c, &l, cookie, NOW + 60);
        assert_eq!(
            (r.status, r.reason),
            (401, "userinfo_no_session"),
            "{cookie}"
        );
        assert_eq!(json_body(&r)["error"], "login_required");
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
    }
    // A session without an ID token (made by a token exchange, not the login).
    let r = userinfo_at(&c, &l, &session_cookie(&c, None, None), NOW);
    assert_eq!((r.status, r.reason), (404, "userinfo_no_id_token"));
}

#[test]
fn userinfo_path_must_not_collide() {
    let c = config(json!({}));
    for (extra, field) in [
        (
            json!({"userinfo_path": "/auth/login"}),
            "login.userinfo_path",
        ),
        (
            json!({"userinfo_path": "/auth/callback"}),
            "login.userinfo_path",
        ),
        (json!({"userinfo_path": "me"}), "login.userinfo_path"),
    ] {
        assert_eq!(try_login(&c, extra).unwrap_err().field, field);
    }
}

#[test]
fn query_helpers() {
    assert_eq!(
        parse_query("a=1&b=x+y%20z&c&=v&&d=%zz%4&e=%C3%BC"),
        vec![
            ("a".into(), "1".into()),
            ("b".into(), "x y z".into()),
            ("c".into(), "".into()),
            ("".into(), "v".into()),
            ("d".into(), "%zz%4".into()),
            ("e".into(), "ü".into()),
        ]
    );
    assert_eq!(parse_query(&"a=1&".repeat(100)).len(), MAX_QUERY_PARAMS);
    assert_eq!(query_encode("a b+c/~é"), "a%20b%2Bc%2F~%C3%A9");
    assert_eq!(
        with_query("/x", &[("a", "1"), ("b", "2 3")]),
        "/x?a=1&b=2%203"
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn return_to_is_always_a_local_path(raw in "\\PC{0,40}|/[%/\\\\a-z0-9.:]{0,20}") {
            let out = safe_return_to(&raw);
            prop_assert!(out.starts_with('/'));
            prop_assert!(!out.starts_with("//"));
            prop_assert!(!out.contains('\\'));
            prop_assert!(out.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            prop_assert!(out.len() <= MAX_RETURN_TO_LEN);
            let decoded = percent_decode_bytes(out.as_bytes());
            prop_assert!(!decoded.starts_with(b"//") && !decoded.starts_with(b"/\\"));
            // Idempotent.
            prop_assert_eq!(safe_return_to(&out), out.clone());
        }

        #[test]
        fn query_parsing_never_panics(q in "\\PC{0,80}", accept in "\\PC{0,40}") {
            let _ = parse_query(&q);
            let _ = wants_html(Some(&accept));
            let _ = prefers_json(Some(&accept));
            let _ = is_navigation("GET", None, Some(&accept));
        }
    }
}
