//! Decoding of the few messages waly must understand; everything else is forwarded as bytes.
//!
//! Decoders borrow from the frame body and never fail loudly: a message waly cannot decode is still
//! forwarded, and Postgres reports the protocol error in its own words.

/// Reads a NUL-terminated string at `*pos`, advancing past the terminator.
fn cstr<'a>(body: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    let rest = body.get(*pos..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    *pos += end + 1;
    std::str::from_utf8(&rest[..end]).ok()
}

/// `Query`: the SQL text.
pub fn query_text(body: &[u8]) -> Option<&str> {
    cstr(body, &mut 0)
}

/// `Parse`: statement name and SQL text.
pub fn parse_message(body: &[u8]) -> Option<(&str, &str)> {
    let mut pos = 0;
    let name = cstr(body, &mut pos)?;
    let sql = cstr(body, &mut pos)?;
    Some((name, sql))
}

/// `Bind`: portal name and statement name.
pub fn bind_message(body: &[u8]) -> Option<(&str, &str)> {
    let mut pos = 0;
    let portal = cstr(body, &mut pos)?;
    let statement = cstr(body, &mut pos)?;
    Some((portal, statement))
}

/// `Execute`: portal name.
pub fn execute_portal(body: &[u8]) -> Option<&str> {
    cstr(body, &mut 0)
}

/// `Close`: `b'S'` or `b'P'`, and the name.
pub fn close_message(body: &[u8]) -> Option<(u8, &str)> {
    let kind = *body.first()?;
    Some((kind, cstr(body, &mut 1)?))
}

/// `ReadyForQuery`: the transaction status byte (`I`, `T` or `E`).
pub fn ready_status(body: &[u8]) -> Option<u8> {
    body.first().copied()
}

/// `ErrorResponse` / `NoticeResponse`: the value of one field (`b'S'` severity, `b'C'` SQLSTATE, ...).
pub fn error_field(body: &[u8], field: u8) -> Option<&str> {
    let mut pos = 0;
    while let Some(&kind) = body.get(pos) {
        if kind == 0 {
            return None;
        }
        pos += 1;
        let value = cstr(body, &mut pos)?;
        if kind == field {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_extended_messages() {
        assert_eq!(
            parse_message(b"s1\0select $1\0\0\0"),
            Some(("s1", "select $1"))
        );
        assert_eq!(bind_message(b"\0s1\0\0\0"), Some(("", "s1")));
        assert_eq!(close_message(b"Ss1\0"), Some((b'S', "s1")));
        assert_eq!(query_text(b"select 1"), None);
        let err = b"SFATAL\0VFATAL\0C57P01\0Mterminating\0\0";
        assert_eq!(error_field(err, b'S'), Some("FATAL"));
        assert_eq!(error_field(err, b'C'), Some("57P01"));
        assert_eq!(error_field(err, b'D'), None);
    }
}
