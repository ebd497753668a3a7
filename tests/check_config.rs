//! The `check-config` binary on the shipped examples and on broken configurations, and the
//! committed JSON Schema against the one generated from the config types.
#![cfg(not(target_arch = "wasm32"))]
// A test crate: the helpers below fail the test on a setup error, like the tests themselves.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The examples' secrets, as Envoy's environment would hold them (`host_env_keys`); the
/// checker reads `{"env": ...}` secrets from its own environment. Test values only.
const SECRET_ENV: &[(&str, &str)] = &[
    (
        "RELAY_SESSION_KEY",
        "3ECRXkd9E3mBbmaqUc8uGq6IkA2X7N1wMVsP_4vNjVQ",
    ),
    ("RELAY_CLIENT_SECRET", "check-config-test-client-secret"),
];

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    run_with(args, stdin, SECRET_ENV, &[])
}

/// `check-config ARGS` with `set` added to its environment and `unset` removed.
fn run_with(args: &[&str], stdin: Option<&[u8]>, set: &[(&str, &str)], unset: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_check-config"));
    cmd.envs(set.iter().copied());
    for name in unset {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the checker on `input` (stdin) and expects exit 1 with one error line naming `field`.
fn refused(what: &str, input: &str, field: &str) {
    let out = run(&["-"], Some(input.as_bytes()));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    let expected = format!("edge-token-relay: invalid configuration: field `{field}`: ");
    assert!(err.contains(&expected), "{what}: {err}");
    assert!(out.stdout.is_empty(), "{what}");
}

const SHIPPED: &[&str] = &[
    "envoy/relay.yaml",
    "envoy/cognito.yaml",
    "envoy/oidc-generic.yaml",
    "istio/wasmplugin.yaml",
    "examples/nextjs/envoy.yaml",
];

#[test]
fn every_shipped_example_is_valid() {
    // Every envoy/*.yaml with the relay is in SHIPPED (the baseline has no relay).
    for entry in std::fs::read_dir(repo("envoy")).unwrap() {
        let path = entry.unwrap().path();
        let name = format!("envoy/{}", path.file_name().unwrap().to_string_lossy());
        let has_relay = std::fs::read_to_string(&path)
            .unwrap()
            .contains("root_id: edge_token_relay");
        assert_eq!(has_relay, SHIPPED.contains(&name.as_str()), "{name}");
    }
    for name in SHIPPED {
        let out = run(&[repo(name).to_str().unwrap()], None);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        assert!(stdout.starts_with("ok: "), "{name}: {stdout}");
        assert!(
            stdout.contains("1 edge-token-relay configuration valid"),
            "{name}: {stdout}"
        );
        assert_eq!(stdout.lines().count(), 1, "{name}: {stdout}");
    }
}

#[test]
fn secrets_are_read_from_the_environment_of_check_config() {
    for (name, field, missing) in [
        (
            "envoy/cognito.yaml",
            "session_keys[0].key",
            "RELAY_SESSION_KEY",
        ),
        (
            "envoy/oidc-generic.yaml",
            "client_secret",
            "RELAY_CLIENT_SECRET",
        ),
        (
            "istio/wasmplugin.yaml",
            "session_keys[0].key",
            "RELAY_SESSION_KEY",
        ),
    ] {
        let set: Vec<(&str, &str)> = SECRET_ENV
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let out = run_with(&[repo(name).to_str().unwrap()], None, &set, &[missing]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.contains(&format!(
                "field `{field}`: environment variable \"{missing}\" is not set"
            )),
            "{name}: {err}"
        );
        for (_, value) in SECRET_ENV {
            assert!(!err.contains(value), "{name}: {err}");
        }
    }
    // A weak key in the environment is refused like a weak key in the file.
    let out = run_with(
        &[repo("envoy/cognito.yaml").to_str().unwrap()],
        None,
        &[
            (
                "RELAY_SESSION_KEY",
                "REPLACE-WITH-32-RANDOM-BYTES-BASE64URL-0000",
            ),
            ("RELAY_CLIENT_SECRET", "x"),
        ],
        &[],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("field `session_keys[0].key`: is not a random key")
            && err.contains("(environment variable \"RELAY_SESSION_KEY\")"),
        "{err}"
    );
}

const MINIMAL: &str = r#"{"protected_prefixes": ["/api/"], "issuer": "https://idp.test",
  "audiences": ["app"], "jwks": {"cluster": "idp", "authority": "idp.test", "path": "/jwks"}}"#;

#[test]
fn plain_json_is_checked_as_the_filter_checks_it() {
    let out = run(&["-"], Some(MINIMAL.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("plugin configuration"));

    let folded = MINIMAL.replacen('{', r#"{"case_insensitive_prefixes": true, "#, 1);
    let out = run(&["-"], Some(folded.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let not_bool = MINIMAL.replacen('{', r#"{"case_insensitive_prefixes": "yes", "#, 1);
    refused("not a boolean", &not_bool, "case_insensitive_prefixes");

    let unknown = MINIMAL.replacen("\"issuer\"", "\"isser\": 1, \"issuer\"", 1);
    refused("unknown field", &unknown, "isser");
    let alg = MINIMAL.replacen('{', r#"{"algorithms": ["RS256", "HS256"], "#, 1);
    refused("bad algorithm", &alg, "algorithms[1]");
    let skew = MINIMAL.replacen('{', r#"{"clock_skew_s": 3600, "#, 1);
    refused("out of range", &skew, "clock_skew_s");
    let login = MINIMAL.replacen(
        '{',
        r#"{"login": {"authorization_endpoint": "https://idp.test/a", "redirect_uri": "https://app.test/cb", "scope": ["openid"]}, "#,
        1,
    );
    refused("unknown login field", &login, "login.scope");
    let scoped = MINIMAL.replacen(
        '{',
        r#"{"hosts": ["app.example.com", "*.apps.example.com"], "forward_relay_cookies_to_unprotected": true, "#,
        1,
    );
    let out = run(&["-"], Some(scoped.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let port = MINIMAL.replacen('{', r#"{"hosts": ["app.example.com:443"], "#, 1);
    refused("host with a port", &port, "hosts[0]");

    // Broken JSON: the filter's own parse error, line and column included.
    let out = run(&["-"], Some(b"{\"issuer\": "));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("edge-token-relay: invalid configuration: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_broken_relay_configuration_inside_yaml_is_found() {
    let relay = std::fs::read_to_string(repo("envoy/relay.yaml")).unwrap();
    let broken = relay.replacen(
        "\"clock_skew_s\": 30",
        "\"clock_skew_s\": 30, \"cookie\": {}",
        1,
    );
    assert_ne!(broken, relay);
    refused("envoy: unknown field", &broken, "cookie");
    let broken = relay.replacen("\"ES256\"", "\"HS512\"", 1);
    refused("envoy: bad algorithm", &broken, "algorithms[1]");

    let istio = std::fs::read_to_string(repo("istio/wasmplugin.yaml")).unwrap();
    let broken = istio.replacen("same_site: Strict", "same_site: strict", 1);
    assert_ne!(broken, istio);
    refused("istio: bad value", &broken, "cookies.same_site");
    let broken = istio.replacen("      login_path:", "      loginpath:", 1);
    refused("istio: unknown login field", &broken, "login.loginpath");

    // The same WasmPlugin inside a Kubernetes List, after another document.
    let body: String = istio.lines().map(|l| format!("  {l}\n")).collect();
    let list = format!(
        "kind: Namespace\n---\nkind: List\nitems:\n- {}",
        body.trim_start()
    );
    let out = run(&["-"], Some(list.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let broken = list.replacen("same_site: Strict", "same_site: strict", 1);
    refused("istio list: bad value", &broken, "cookies.same_site");
}

#[test]
fn yaml_merge_keys_are_resolved() {
    // Without the merge, the filter's config would have no root_id and no relay would be found.
    let yaml = r#"
x-relay: &relay
  root_id: edge_token_relay
  configuration:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: '{"protected_prefixes": ["/api/"], "issuer": "i", "audiences": ["a"], "clock_skew_s": 3600, "jwks": {"cluster": "idp", "authority": "idp.test", "path": "/jwks"}}'
static_resources:
  listeners:
  - filter_chains:
    - filters:
      - typed_config:
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              config:
                <<: *relay
                name: relay
"#;
    refused("merge key", yaml, "clock_skew_s");
}

#[test]
fn other_input_is_refused() {
    for (what, input, code) in [
        ("not YAML", "protected_prefixes: [\"/api/\"\n  : ][", 1),
        (
            "no relay in the Envoy file",
            "static_resources: {listeners: []}\n",
            1,
        ),
        ("text", "hello\n", 1),
    ] {
        let out = run(&["-"], Some(input.as_bytes()));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
    }
    let baseline = repo("envoy/jwt_authn_baseline.yaml");
    let out = run(&[baseline.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no edge-token-relay configuration found"));

    let out = run(&["/nonexistent/relay.json"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_relay_with_another_root_id_is_found_with_root_id() {
    let relay = std::fs::read_to_string(repo("envoy/relay.yaml")).unwrap();
    let renamed = relay.replace("edge_token_relay", "relay2");
    let out = run(&["-"], Some(renamed.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["--root-id", "relay2", "-"], Some(renamed.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// The committed schema is exactly what the config types generate: regenerate it with
/// `make schema` after changing a `Raw*` struct.
#[test]
fn the_committed_schema_is_up_to_date() {
    let out = run(&["--schema"], None);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(repo("schema/config.schema.json")).unwrap();
    assert!(
        text(&out.stdout) == committed,
        "schema/config.schema.json is stale: run `make schema`"
    );
}
