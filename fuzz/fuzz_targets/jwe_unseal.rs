//! `session::unseal` with fixed keys: on the input as a cookie value, then on values sealed
//! here from the input (round trip must succeed) and on those values with one character
//! changed (must fail: AES-GCM integrity).
#![no_main]

use edge_token_relay::http::cookie;
use edge_token_relay::session::{self, Session, SessionError};
use edge_token_relay_fuzz::{arbitrary::Unstructured, flag, one_char_changed, session_keys, text, time, NOW};
use libfuzzer_sys::fuzz_target;


fuzz_target!(|data: &[u8]| {
    let keys = session_keys(false);

    // 1. The raw input as a cookie value.
    let raw = String::from_utf8_lossy(data);
    for now in [NOW, 0, u64::MAX] {
        if let Err(e) = session::unseal(keys, &raw, now) {
            let _ = (e.code(), e.to_string());
        }
    }

    // 2. Seal a session built from the input, with either key; it must unseal to itself.
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let older = flag(u);
    let session = Session {
        rt: text(u),
        exp: if flag(u) { Some(time(u)) } else { None },
        id_token: if flag(u) { Some(text(u)) } else { None },
    };
    let iv: [u8; 12] = u.arbitrary().unwrap_or([0; 12]);
    let now = time(u);
    let sealed = session::seal(session_keys(older), &session, iv);
    let opened = session::unseal(keys, &sealed, now);
    if sealed.len() > session::MAX_SEALED_LEN {
        assert_eq!(opened, Err(SessionError::TooLarge));
    } else if session.rt.is_empty() {
        assert_eq!(opened, Err(SessionError::BadPayload));
    } else if session.exp.is_some_and(|exp| now >= exp) {
        assert_eq!(opened, Err(SessionError::Expired));
    } else {
        let opened = opened.expect("a freshly sealed session unseals");
        assert_eq!(opened.session, session);
        assert_eq!(opened.needs_reseal, older);
    }

    // 3. Change one character (to another base64url character or '.'): never accepted.
    if let Some(tampered) = one_char_changed(u, &sealed) {
        assert!(
            session::unseal(keys, &tampered, NOW).is_err(),
            "tampered session accepted: {sealed} -> {tampered}"
        );
    }

    // 4. Chunked into cookies and read back.
    if !sealed.is_empty() && sealed.len() <= session::MAX_SEALED_LEN {
        let written = cookie::chunk("__Host-relay-session", &sealed);
        let header = written
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        assert_eq!(
            cookie::read_chunked(&header, "__Host-relay-session").as_deref(),
            Some(sealed.as_str())
        );
    }
});
