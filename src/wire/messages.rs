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

/// The function OID a FunctionCall message's body starts with.
pub fn function_call_oid(body: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(body.get(..4)?.try_into().ok()?))
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

/// `Parse`: the parameter type OIDs the client declared (0: let Postgres infer).
pub fn parse_param_types(body: &[u8]) -> Vec<u32> {
    let mut pos = 0;
    if cstr(body, &mut pos).is_none() || cstr(body, &mut pos).is_none() {
        return Vec::new();
    }
    let Some(n) = i16_at(body, &mut pos) else {
        return Vec::new();
    };
    (0..n.max(0))
        .map_while(|_| i32_at(body, &mut pos).map(|t| t as u32))
        .collect()
}

/// `Describe`: `b'S'` or `b'P'`, and the name.
pub fn describe_message(body: &[u8]) -> Option<(u8, &str)> {
    close_message(body)
}

/// `ParameterDescription`: the type OID of each parameter.
pub fn parameter_description(body: &[u8]) -> Vec<u32> {
    let mut pos = 0;
    let Some(n) = i16_at(body, &mut pos) else {
        return Vec::new();
    };
    (0..n.max(0))
        .map_while(|_| i32_at(body, &mut pos).map(|t| t as u32))
        .collect()
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

/// `ParameterStatus`: the parameter's name and its new value.
pub fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut at = 0;
    Some((cstr(body, &mut at)?, cstr(body, &mut at)?))
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

/// `Bind`: the parameter values in text form: `None` for NULL, text-format values as sent, binary-format
/// values in their text form when `types` (by parameter) names a type waly decodes ([`super::binary`]),
/// otherwise as `b64:` and their base64.
pub fn bind_params(body: &[u8], types: &[u32]) -> Option<Vec<Option<String>>> {
    let mut pos = 0;
    cstr(body, &mut pos)?;
    cstr(body, &mut pos)?;
    let n_formats = i16_at(body, &mut pos)?;
    let mut formats = Vec::with_capacity(n_formats.max(0) as usize);
    for _ in 0..n_formats {
        formats.push(i16_at(body, &mut pos)?);
    }
    let n_params = i16_at(body, &mut pos)?;
    let mut params = Vec::with_capacity(n_params.max(0) as usize);
    for i in 0..n_params.max(0) as usize {
        let len = i32_at(body, &mut pos)?;
        if len < 0 {
            params.push(None);
            continue;
        }
        let value = body.get(pos..pos + len as usize)?;
        pos += len as usize;
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i).copied()? == 1,
        };
        let decoded = match types.get(i) {
            Some(&oid) if binary && oid != 0 => super::binary::to_text(oid, value),
            _ => None,
        };
        params.push(Some(match (binary, std::str::from_utf8(value)) {
            _ if decoded.is_some() => decoded.expect("checked"),
            (false, Ok(text)) => text.to_owned(),
            _ => {
                use base64::Engine;
                format!(
                    "b64:{}",
                    base64::engine::general_purpose::STANDARD.encode(value)
                )
            }
        }));
    }
    Some(params)
}

/// `DataRow`: the column values as text (`None` for NULL); only for text-format results.
pub fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let mut pos = 0;
    let n = i16_at(body, &mut pos)?;
    let mut columns = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32_at(body, &mut pos)?;
        if len < 0 {
            columns.push(None);
            continue;
        }
        let value = body.get(pos..pos + len as usize)?;
        pos += len as usize;
        columns.push(Some(String::from_utf8_lossy(value).into_owned()));
    }
    Some(columns)
}

/// `CommandComplete`: the command tag.
pub fn command_tag(body: &[u8]) -> Option<&str> {
    cstr(body, &mut 0)
}

fn i16_at(body: &[u8], pos: &mut usize) -> Option<i16> {
    let bytes = body.get(*pos..*pos + 2)?;
    *pos += 2;
    Some(i16::from_be_bytes([bytes[0], bytes[1]]))
}

fn i32_at(body: &[u8], pos: &mut usize) -> Option<i32> {
    let bytes = body.get(*pos..*pos + 4)?;
    *pos += 4;
    Some(i32::from_be_bytes(bytes.try_into().ok()?))
}

/// Encoders for the messages waly itself sends.
pub mod encode {
    use bytes::{BufMut, BytesMut};

    fn message(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
        let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        out.reserve(1 + len);
        out.put_u8(tag);
        out.put_u32(len as u32);
        for part in parts {
            out.put_slice(part);
        }
    }

    /// `Query` (frontend).
    pub fn query(out: &mut BytesMut, sql: &str) {
        message(out, b'Q', &[sql.as_bytes(), b"\0"]);
    }

    /// `Sync` (frontend).
    pub fn sync(out: &mut BytesMut) {
        message(out, b'S', &[]);
    }

    /// `Parse` (frontend) with a replaced SQL text, keeping the name and the parameter types of `body`.
    pub fn parse_replacing_sql(out: &mut BytesMut, body: &[u8], sql: &str) -> Option<()> {
        let mut pos = 0;
        let name = super::cstr(body, &mut pos)?;
        super::cstr(body, &mut pos)?;
        let types = &body[pos..];
        message(
            out,
            b'P',
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", types],
        );
        Some(())
    }

    /// `CommandComplete` (backend).
    pub fn command_complete(out: &mut BytesMut, tag: &str) {
        message(out, b'C', &[tag.as_bytes(), b"\0"]);
    }

    /// `ReadyForQuery` (backend).
    pub fn ready_for_query(out: &mut BytesMut, status: u8) {
        message(out, b'Z', &[&[status]]);
    }
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
        // Bind "" to "s1": one text format code, two parameters ('42' and NULL), no result formats.
        let bind = b"\0s1\0\0\x01\0\0\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\0";
        assert_eq!(bind_params(bind, &[]), Some(vec![Some("42".into()), None]));
        let row = b"\0\x02\0\0\0\x01x\xff\xff\xff\xff";
        assert_eq!(data_row(row), Some(vec![Some("x".into()), None]));
        let mut out = bytes::BytesMut::new();
        encode::ready_for_query(&mut out, b'I');
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
        let err = b"SFATAL\0VFATAL\0C57P01\0Mterminating\0\0";
        assert_eq!(error_field(err, b'S'), Some("FATAL"));
        assert_eq!(error_field(err, b'C'), Some("57P01"));
        assert_eq!(error_field(err, b'D'), None);
    }
}
