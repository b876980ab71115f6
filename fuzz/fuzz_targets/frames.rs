//! Fuzz target `frames`: the protocol frame scanner and the message decoders behind it.
//!
//! Input layout:
//!
//! ```text
//! [n] [n control bytes] [stream ...]
//! ```
//!
//! The stream is scanned twice, as frontend and as backend traffic, and reaches the scanner the way
//! the relay sees a socket: a window that grows by chunks, so messages arrive in pieces. The control
//! bytes, used in turn and round again, pick each chunk size and what `inspect` answers. Every whole
//! message goes through the `messages` decoders, and the whole input is decoded as a startup packet.
//!
//! Besides "never panics", the target checks the scanner against a small model of the framing: the
//! bytes reported (`Pass` + `Message`) cut the stream exactly at the header lengths, `NeedMore` is only
//! answered when the window really lacks bytes, and an error only names a header the rules refuse.
//! Nothing here allocates in proportion to a length field: the window is always a slice of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;

// The decoder files are compiled straight from src/wire: they use no other waly module.
#[allow(dead_code)]
#[path = "../../src/wire/frame.rs"]
mod frame;
#[allow(dead_code)]
#[path = "../../src/wire/messages.rs"]
mod messages;

#[path = "../../src/wire/binary.rs"]
mod binary;
#[allow(dead_code)]
#[path = "../../src/wire/startup.rs"]
mod startup;

use frame::{FrameError, FrameScanner, HEADER_LEN, MAX_MESSAGE_LEN, Origin, Scan, frontend_limit};
use startup::StartupPacket;

fuzz_target!(|data: &[u8]| {
    let (control, stream) = split(data);
    for origin in [Origin::Frontend, Origin::Backend] {
        scan(origin, stream, Control::new(control));
    }
    check_startup(data);
});

/// `[n] [n control bytes] [stream]`; a short input just has fewer control bytes or an empty stream.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n).min(rest.len())),
        None => (&[], &[]),
    }
}

/// The control bytes, handed out in a cycle. Without any, every answer is 0xff: inspect every
/// message and deliver the whole stream at once.
struct Control<'a> {
    bytes: &'a [u8],
    next: usize,
}

impl<'a> Control<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, next: 0 }
    }

    fn byte(&mut self) -> u8 {
        let Some(&b) = self.bytes.get(self.next) else {
            return 0xff;
        };
        self.next = (self.next + 1) % self.bytes.len();
        b
    }
}

/// What `inspect(tag)` answers for control byte `c`: never, always, or by one bit of the tag.
fn wants_whole(c: u8, tag: u8) -> bool {
    match c & 3 {
        0 => false,
        3 => true,
        _ => (tag >> ((c >> 2) & 7)) & 1 == 1,
    }
}

/// How many more stream bytes arrive for control byte `c`: a few, up to 64, up to 8 KB, or all the rest.
fn chunk_len(c: u8) -> usize {
    let low = usize::from(c & 0x3f);
    match c >> 6 {
        0 => 1 + (low & 7),
        1 => 1 + low,
        2 => 64 << (low & 7),
        _ => usize::MAX,
    }
}

/// Tag and declared length of the header at the start of `window` (which holds at least a header).
fn header(window: &[u8]) -> (u8, i32) {
    (
        window[0],
        i32::from_be_bytes([window[1], window[2], window[3], window[4]]),
    )
}

/// Whether the framing rules accept a header: Postgres' length bounds, and for frontend traffic a
/// known type within its own limit.
fn header_ok(origin: Origin, tag: u8, len: i32) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    (4..=MAX_MESSAGE_LEN).contains(&len)
        && (origin == Origin::Backend || frontend_limit(tag).is_some_and(|limit| len <= limit))
}

fn scan(origin: Origin, stream: &[u8], mut control: Control) {
    let mut scanner = FrameScanner::new(origin);
    // The scanner sees `stream[consumed..received]`: what has arrived and not yet been reported.
    let mut consumed = 0;
    let mut received = 0;
    // The model: bytes of a passed-through message still to come (0 between messages).
    let mut to_come = 0usize;
    loop {
        assert!(consumed <= received && received <= stream.len());
        assert_eq!(
            scanner.at_boundary(),
            to_come == 0,
            "boundary mismatch at offset {consumed}"
        );
        let window = &stream[consumed..received];
        let c = control.byte();
        let mut asked = None;
        let result = scanner.next(window, |tag| {
            let whole = wants_whole(c, tag);
            asked = Some(whole);
            whole
        });
        match result {
            Ok(Scan::Pass(n)) => {
                assert!(
                    n > 0 && n <= window.len(),
                    "Pass({n}) with {} bytes at hand",
                    window.len()
                );
                if to_come > 0 {
                    assert_eq!(
                        n,
                        to_come.min(window.len()),
                        "a passed message must continue"
                    );
                    assert_eq!(asked, None, "inspect asked in the middle of a message");
                    to_come -= n;
                } else {
                    let (tag, len) = header(window);
                    assert!(
                        header_ok(origin, tag, len),
                        "passed a refused header {tag} {len}"
                    );
                    assert_eq!(
                        asked,
                        Some(false),
                        "passed a message without asking or that was wanted whole"
                    );
                    let total = 1 + len as usize;
                    assert_eq!(
                        n,
                        total.min(window.len()),
                        "Pass must stop at the message end"
                    );
                    to_come = total - n;
                }
                consumed += n;
            }
            Ok(Scan::Message { tag, body, len }) => {
                assert!(
                    len <= window.len(),
                    "Message of {len} bytes with {} at hand",
                    window.len()
                );
                assert_eq!(body.len() + HEADER_LEN, len);
                assert_eq!(to_come, 0, "a message returned in the middle of another");
                assert_eq!(asked, Some(true), "returned a message not asked for whole");
                let (first, declared) = header(window);
                assert!(
                    header_ok(origin, first, declared),
                    "returned a refused header {first} {declared}"
                );
                assert_eq!(tag, first);
                assert_eq!(len, 1 + declared as usize);
                assert_eq!(body, &window[HEADER_LEN..len]);
                decode_message(body, c);
                consumed += len;
            }
            Ok(Scan::NeedMore) => {
                if to_come > 0 {
                    assert!(
                        window.is_empty(),
                        "NeedMore mid-message with {} bytes at hand",
                        window.len()
                    );
                } else if window.len() >= HEADER_LEN {
                    let (tag, len) = header(window);
                    assert!(
                        header_ok(origin, tag, len),
                        "NeedMore for a refused header {tag} {len}"
                    );
                    assert_eq!(
                        asked,
                        Some(true),
                        "NeedMore for a message that may pass in pieces"
                    );
                    assert!(
                        window.len() < 1 + len as usize,
                        "NeedMore for a message already whole"
                    );
                }
                if received == stream.len() {
                    break;
                }
                received += chunk_len(control.byte()).min(stream.len() - received);
            }
            Err(error) => {
                // Errors stop the stream: the relay answers FATAL and closes the connection.
                assert_eq!(to_come, 0, "an error in the middle of a message");
                assert!(window.len() >= HEADER_LEN, "an error before a whole header");
                let (tag, len) = header(window);
                assert!(
                    !header_ok(origin, tag, len),
                    "refused a valid header {tag} {len}: {error}"
                );
                match error {
                    FrameError::InvalidLength { tag: t, len: l } => {
                        assert_eq!((t, l), (tag, i64::from(len)))
                    }
                    FrameError::UnknownFrontendType { tag: t } => {
                        assert_eq!(t, tag);
                        assert!(origin == Origin::Frontend && frontend_limit(tag).is_none());
                    }
                }
                break;
            }
        }
    }
    assert!(consumed <= stream.len());
}

/// Offset of `s` inside `body`; every string a decoder returns borrows from the body.
fn offset(body: &[u8], s: &str) -> usize {
    let start = (s.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    assert!(
        start <= body.len() && s.len() <= body.len() - start,
        "a string outside the body"
    );
    start
}

/// Asserts `s` is the NUL-terminated string at `at` in `body`.
fn assert_cstr(body: &[u8], at: usize, s: &str) {
    assert_eq!(offset(body, s), at);
    assert!(!s.as_bytes().contains(&0), "a string with a NUL inside");
    assert_eq!(
        body.get(at + s.len()),
        Some(&0),
        "a string without its terminator"
    );
}

/// Runs every `messages` decoder on a whole message body (whatever its tag: they must cope with anything).
fn decode_message(body: &[u8], c: u8) {
    if let Some(sql) = messages::query_text(body) {
        assert_cstr(body, 0, sql);
    }
    if let Some(portal) = messages::execute_portal(body) {
        assert_cstr(body, 0, portal);
    }
    if let Some((name, sql)) = messages::parse_message(body) {
        assert_cstr(body, 0, name);
        assert_cstr(body, name.len() + 1, sql);
    }
    if let Some((portal, statement)) = messages::bind_message(body) {
        assert_cstr(body, 0, portal);
        assert_cstr(body, portal.len() + 1, statement);
    }
    if let Some((kind, name)) = messages::close_message(body) {
        assert_eq!(Some(&kind), body.first());
        assert_cstr(body, 1, name);
    }
    if let Some(params) = messages::bind_params(body, &[]) {
        // Every value came from inside the body: never more values than bytes.
        assert!(params.len() <= body.len());
    }
    // Binary values read as every type waly decodes: bool, int2/4/8, float4/8, text, jsonb, uuid,
    // numeric, timestamptz, timestamp, date, and arrays of int4/int8/text/numeric.
    let types = [16, 21, 23, 20, 700, 701, 25, 3802, 2950, 1700, 1184, 1114, 1082, 1007, 1016, 1009, 1231];
    if let Some(params) = messages::bind_params(body, &types) {
        assert!(params.len() <= body.len());
    }
    for oid in types {
        let _ = binary::to_text(oid, body);
    }
    if let Some(columns) = messages::data_row(body) {
        assert!(columns.len() <= body.len());
    }
    if let Some(tag) = messages::command_tag(body) {
        assert_cstr(body, 0, tag);
    }
    assert_eq!(messages::ready_status(body), body.first().copied());
    for field in [b'C', c] {
        if let Some(value) = messages::error_field(body, field) {
            let at = offset(body, value);
            assert!(
                field != 0 && at > 0 && body[at - 1] == field,
                "a value under the wrong field"
            );
            assert_cstr(body, at, value);
        }
    }
}

/// Decodes the whole input as a startup packet body (what follows the length word).
fn check_startup(data: &[u8]) {
    match startup::decode(data) {
        Ok(StartupPacket::Cancel { secret, .. }) => assert_eq!(secret.len() + 8, data.len()),
        Ok(StartupPacket::Startup { major, params, .. }) => {
            assert_eq!(major, 3);
            assert_eq!(
                data.last(),
                Some(&0),
                "a startup packet without its terminator"
            );
            assert!(
                params.iter().all(|(k, _)| !k.is_empty()),
                "an empty parameter name"
            );
        }
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) | Err(_) => {}
    }
}
