//! `oidc::open_flow`: the sealed login flow cookie. On the raw input as a cookie value; on a
//! flow sealed here from the input (with the current or the older session key) it must open
//! to itself while fresh and be `Expired` from `t + FLOW_MAX_AGE_S` on; one changed character
//! is always refused; a sealed session never opens as a flow.
#![no_main]

use edge_token_relay::oidc::{open_flow, Flow, FlowProblem, FLOW_MAX_AGE_S};
use edge_token_relay::session::{self, Session};
use edge_token_relay_fuzz::{arbitrary::Unstructured, flag, login_config, one_char_changed, pick, session_keys, text, time, NOW};
use libfuzzer_sys::fuzz_target;


fuzz_target!(|data: &[u8]| {
    let Some(refresh) = login_config().refresh.as_ref() else {
        panic!("fixture has refresh");
    };

    // 1. The raw input as a cookie value.
    let raw = String::from_utf8_lossy(data);
    for now in [NOW, 0, u64::MAX] {
        let _ = open_flow(refresh, &raw, now).map(|f| f.t);
    }

    // 2. A flow sealed from the input opens to itself, or is expired.
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let flow = Flow {
        v: text(u),
        s: text(u),
        n: text(u),
        r: text(u),
        t: time(u),
    };
    let older = flag(u);
    let iv: [u8; 12] = u.arbitrary().unwrap_or([0; 12]);
    let now = match pick(u, 3) {
        0 => flow.t,
        1 => flow.t.saturating_add(FLOW_MAX_AGE_S),
        _ => time(u),
    };
    let sealed = session::seal_json(session_keys(older), &flow, iv);
    assert!(!sealed.is_empty());
    match open_flow(refresh, &sealed, now) {
        Ok(opened) => {
            assert!(now < flow.t.saturating_add(FLOW_MAX_AGE_S), "expired flow opened");
            assert_eq!(
                (&opened.v, &opened.s, &opened.n, &opened.r, opened.t),
                (&flow.v, &flow.s, &flow.n, &flow.r, flow.t)
            );
        }
        Err(FlowProblem::Expired) => {
            assert!(now >= flow.t.saturating_add(FLOW_MAX_AGE_S));
        }
        Err(FlowProblem::Invalid) => {
            // Only a value too large for a cookie is refused as such.
            assert!(sealed.len() > session::MAX_SEALED_LEN, "fresh flow refused ({} bytes)", sealed.len());
        }
    }

    // 3. One changed character: never opens.
    if let Some(tampered) = one_char_changed(u, &sealed) {
        assert!(open_flow(refresh, &tampered, flow.t).is_err(), "tampered flow opened");
    }

    // 4. A session (member `rt`) is not a flow, nor a flow a session.
    let s = Session {
        rt: if flow.v.is_empty() { "rt".into() } else { flow.v.clone() },
        exp: None,
        id_token: None,
    };
    let sealed_session = session::seal(session_keys(older), &s, iv);
    assert!(open_flow(refresh, &sealed_session, flow.t).is_err(), "session opened as a flow");
    assert!(session::unseal(session_keys(false), &sealed, now).is_err(), "flow opened as a session");
});
