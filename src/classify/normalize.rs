//! Cache keys for statement text: the text with its numeric and string constants replaced by `?`.
//!
//! The class of a statement never depends on its constants (`... WHERE aid = 1` and `... WHERE aid = 2`
//! are both reads), so statements that differ only in constants share one cache entry and are parsed once.
//! The scanner follows Postgres' lexical rules for what it touches and gives up (returns `None`, so the
//! whole text is the key) on anything it does not fully understand: backslashes (escape strings or
//! `standard_conforming_strings = off`) and dollar quoting.

/// A numeric or string constant in a statement's text: its byte range (quotes included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constant {
    pub start: usize,
    pub end: usize,
    pub kind: ConstantKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstantKind {
    Number,
    String,
}

/// The normalized key of `sql`, or `None` when the text must be used as it is.
pub fn cache_key(sql: &str) -> Option<String> {
    let constants = constants(sql)?;
    if constants.is_empty() {
        return None;
    }
    let mut key = String::with_capacity(sql.len());
    let mut at = 0;
    for c in constants {
        key.push_str(&sql[at..c.start]);
        key.push('?');
        at = c.end;
    }
    key.push_str(&sql[at..]);
    Some(key)
}

/// Every numeric and string constant of `sql`, in order; `None` when the scanner cannot be sure of the
/// text's tokens (see the module header).
pub fn constants(sql: &str) -> Option<Vec<Constant>> {
    let bytes = sql.as_bytes();
    if bytes.contains(&b'\\') {
        return None;
    }
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' => {
                let end = find_closing(bytes, i + 1, b'\'')?;
                found.push(Constant {
                    start: i,
                    end: end + 1,
                    kind: ConstantKind::String,
                });
                i = end + 1;
            }
            b'"' => i = find_closing(bytes, i + 1, b'"')? + 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = block_comment_end(bytes, i)?,
            b'$' => {
                // $1 parameters are kept; $tag$ quoting is not handled.
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits == 0 {
                    return None;
                }
                i += 1 + digits;
            }
            b'0'..=b'9' | b'.' if c != b'.' || bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut j = i + 1;
                while j < bytes.len() {
                    let d = bytes[j];
                    let exponent_sign =
                        (d == b'+' || d == b'-') && matches!(bytes[j - 1], b'e' | b'E');
                    if d.is_ascii_alphanumeric() || d == b'_' || d == b'.' || exponent_sign {
                        j += 1;
                    } else {
                        break;
                    }
                }
                found.push(Constant {
                    start: i,
                    end: j,
                    kind: ConstantKind::Number,
                });
                i = j;
            }
            c if is_ident_start(c) => {
                i += 1;
                while i < bytes.len() && is_ident_char(bytes[i]) {
                    i += 1;
                }
            }
            _ => i += utf8_len(c),
        }
    }
    Some(found)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

fn find_closing(bytes: &[u8], from: usize, quote: u8) -> Option<usize> {
    let mut i = from;
    loop {
        match bytes.get(i) {
            None => return None,
            Some(&b) if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            Some(&b) if b == quote => return Some(i),
            Some(_) => i += 1,
        }
    }
}

/// End (exclusive) of the block comment starting at `start`; block comments nest in Postgres.
fn block_comment_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::cache_key;

    #[test]
    fn constants_are_replaced_and_structure_kept() {
        assert_eq!(
            cache_key("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_eq!(
            cache_key("select 'it''s', 1.5e-3, .5, x1 from t2").as_deref(),
            Some("select ?, ?, ?, x1 from t2")
        );
        assert_eq!(
            cache_key("select \"a 'b\" , 7 -- it's 8\n/* 9 /* 'x */ */ from t").as_deref(),
            Some("select \"a 'b\" , ? -- it's 8\n/* 9 /* 'x */ */ from t")
        );
        assert_eq!(
            cache_key("update t set a = $1 where id = 3").as_deref(),
            Some("update t set a = $1 where id = ?")
        );
        assert_eq!(cache_key("select 'é', 'ü'").as_deref(), Some("select ?, ?"));
    }

    #[test]
    fn gives_up_on_what_it_cannot_be_sure_of() {
        assert_eq!(cache_key("select E'\\''"), None);
        assert_eq!(cache_key("do $$ begin end $$"), None);
        assert_eq!(cache_key("select 'unterminated"), None);
        assert_eq!(
            cache_key("select a from t"),
            None,
            "nothing to replace: the text is its own key"
        );
    }

    #[test]
    fn different_statements_never_share_a_key() {
        let a = cache_key("select * from t where a = 1").unwrap();
        let b = cache_key("delete from t where a = 1").unwrap();
        assert_ne!(a, b);
        let c = cache_key("select '; delete from t; ' as x").unwrap();
        assert_eq!(c, "select ? as x");
    }
}
