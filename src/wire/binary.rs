//! Binary-format bind parameters turned into Postgres' text form, for the record and for operation
//! matching: a value that reads `42` in psql should read `42` in the log whichever format the driver
//! used. Only types whose text form is unambiguous are decoded; anything else stays base64.
//!
//! Pure functions: no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fallible_iterator::FallibleIterator;
use postgres_protocol::types;

/// Seconds from the Unix epoch to Postgres' (2000-01-01 UTC).
const PG_EPOCH_SECS: u64 = 946_684_800;

/// The text form of a binary value of type `oid`, when waly knows the type.
pub fn to_text(oid: u32, value: &[u8]) -> Option<String> {
    Some(match oid {
        16 => if types::bool_from_sql(value).ok()? {
            "t"
        } else {
            "f"
        }
        .to_owned(),
        21 => types::int2_from_sql(value).ok()?.to_string(),
        23 => types::int4_from_sql(value).ok()?.to_string(),
        20 => types::int8_from_sql(value).ok()?.to_string(),
        26 => types::oid_from_sql(value).ok()?.to_string(),
        700 => float_text(f64::from(types::float4_from_sql(value).ok()?)),
        701 => float_text(types::float8_from_sql(value).ok()?),
        // text, varchar, bpchar, name, json, unknown
        25 | 1043 | 1042 | 19 | 114 | 705 => types::text_from_sql(value).ok()?.to_owned(),
        3802 => {
            // jsonb: a version byte (1), then the text.
            let (&version, text) = value.split_first()?;
            (version == 1).then_some(())?;
            std::str::from_utf8(text).ok()?.to_owned()
        }
        2950 => uuid_text(types::uuid_from_sql(value).ok()?),
        1700 => numeric_text(value)?,
        1184 => timestamp_text(types::timestamp_from_sql(value).ok()?, true)?,
        1114 => timestamp_text(types::timestamp_from_sql(value).ok()?, false)?,
        1082 => date_text(types::date_from_sql(value).ok()?)?,
        _ => return array_text(oid, value),
    })
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        f.to_string()
    }
}

fn uuid_text(b: [u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    hyphenated_uuid(&hex)
}

/// A uuid's 32 lowercase hex digits in Postgres' text form, `8-4-4-4-12`.
pub fn hyphenated_uuid(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Postgres' binary numeric: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric_text(value: &[u8]) -> Option<String> {
    let word = |i: usize| {
        value
            .get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i32;
    let sign = word(2)?;
    let dscale = word(3)? as usize;
    let digits: Vec<u16> = (0..ndigits).map(|i| word(4 + i)).collect::<Option<_>>()?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let digit = |i: i32| {
        if i >= 0 {
            digits.get(i as usize).copied().unwrap_or(0)
        } else {
            0
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        out.push_str(&digit(0).to_string());
        for i in 1..=weight {
            out.push_str(&format!("{:04}", digit(i)));
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Some(out)
}

fn pg_time(micros: i64) -> Option<SystemTime> {
    let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_SECS);
    if micros >= 0 {
        epoch.checked_add(Duration::from_micros(micros as u64))
    } else {
        epoch.checked_sub(Duration::from_micros(micros.unsigned_abs()))
    }
}

fn timestamp_text(micros: i64, zoned: bool) -> Option<String> {
    match micros {
        i64::MAX => return Some("infinity".into()),
        i64::MIN => return Some("-infinity".into()),
        _ => {}
    }
    let t = pg_time(micros)?;
    // The formatter covers years 1970 to 9999; other times stay base64.
    let year_10000 = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
    (t >= UNIX_EPOCH && t < year_10000).then_some(())?;
    let text = humantime::format_rfc3339_micros(t).to_string();
    Some(if zoned {
        text.replace('Z', "+00:00")
    } else {
        text.trim_end_matches('Z').to_owned()
    })
}

fn date_text(days: i32) -> Option<String> {
    match days {
        i32::MAX => return Some("infinity".into()),
        i32::MIN => return Some("-infinity".into()),
        _ => {}
    }
    let text = timestamp_text(i64::from(days).checked_mul(86_400_000_000)?, false)?;
    Some(text[..10].to_owned())
}

/// One-dimensional arrays of the types above, as `{a,b,NULL}` with quoted elements.
fn array_text(oid: u32, value: &[u8]) -> Option<String> {
    let element_oid = match oid {
        1000 => 16,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1021 => 700,
        1022 => 701,
        1009 => 25,
        1015 => 1043,
        2951 => 2950,
        1231 => 1700,
        1185 => 1184,
        1182 => 1082,
        _ => return None,
    };
    let array = types::array_from_sql(value).ok()?;
    if array.dimensions().count().ok()? > 1 {
        return None;
    }
    let mut parts = Vec::new();
    let mut values = array.values();
    while let Some(v) = values.next().ok()? {
        parts.push(match v {
            None => "NULL".to_owned(),
            Some(bytes) => {
                let text = to_text(element_oid, bytes)?;
                format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
            }
        });
    }
    Some(format!("{{{}}}", parts.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_read_as_psql_shows_them() {
        assert_eq!(to_text(20, &42i64.to_be_bytes()).as_deref(), Some("42"));
        assert_eq!(to_text(23, &(-7i32).to_be_bytes()).as_deref(), Some("-7"));
        assert_eq!(to_text(16, &[1]).as_deref(), Some("t"));
        assert_eq!(to_text(25, b"hi").as_deref(), Some("hi"));
        assert_eq!(
            to_text(3802, b"\x01{\"a\":1}").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(
            to_text(
                2950,
                &[
                    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd,
                    0x38, 0x0a, 0x11
                ]
            )
            .as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(
            to_text(1184, &0i64.to_be_bytes()).as_deref(),
            Some("2000-01-01T00:00:00.000000+00:00")
        );
        assert_eq!(
            to_text(1082, &1i32.to_be_bytes()).as_deref(),
            Some("2000-01-02")
        );
        assert_eq!(to_text(600, &[0; 16]), None);
    }

    #[test]
    fn times_out_of_range_stay_undecoded() {
        assert_eq!(to_text(1082, &(i32::MAX - 1).to_be_bytes()), None);
        assert_eq!(to_text(1184, &(i64::MAX - 1).to_be_bytes()), None);
        assert_eq!(
            to_text(1184, &(-1_000_000_000_000_000i64).to_be_bytes()),
            None,
            "before 1970"
        );
        assert_eq!(
            to_text(1082, &i32::MAX.to_be_bytes()).as_deref(),
            Some("infinity")
        );
    }

    #[test]
    fn numerics_keep_their_scale() {
        // 12345.670 : ndigits 3 (1, 2345, 6700), weight 1, positive, dscale 3
        let v: Vec<u8> = [3u16, 1, 0, 3, 1, 2345, 6700]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(to_text(1700, &v).as_deref(), Some("12345.670"));
        // -0.05 : ndigits 1 (500), weight -1, negative, dscale 2
        let v: Vec<u8> = [1u16, 0xFFFF, 0x4000, 2, 500]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(to_text(1700, &v).as_deref(), Some("-0.05"));
        let zero: Vec<u8> = [0u16, 0, 0, 0]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(to_text(1700, &zero).as_deref(), Some("0"));
    }
}
