//! Rendering one log entry: a readable block for a person, one JSON line for a program.
//!
//! The human form is for looking, not parsing: long values are cut with an ellipsis and control
//! characters are escaped, so a hostile or huge record cannot wreck a terminal. The JSON form carries the
//! record's bytes unchanged (only insignificant line breaks removed). Neither may panic on bad data.

use std::borrow::Cow;
use std::io::{self, Write};

use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::log::Entry;
use crate::record::{Change, CommitKind, LogRecord, OutcomeRecord, Statement};

/// Widest a JSON value (a row image, a key) or a bind parameter is shown, in characters.
const VALUE_WIDTH: usize = 120;
/// Widest a statement's SQL is shown, in characters.
const SQL_WIDTH: usize = 1000;
/// Widest the SQL of a DDL change is shown on its line, in characters.
const DDL_WIDTH: usize = 200;
/// The parameters of a statement are cut after this many characters.
const PARAMS_WIDTH: usize = 400;

/// Writes a readable block for `entry`: its position and append time, then, when the payload is a waly
/// record, who committed what, each statement and each change on a line of its own.
pub fn render_human(entry: &Entry, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "position {}  appended {}",
        entry.position,
        rfc3339_micros(entry.timestamp_micros)
    )?;
    let record = match LogRecord::from_json(&entry.payload) {
        Ok(LogRecord::Transaction(record)) => record,
        Ok(LogRecord::Outcome(outcome)) => return write_outcome(out, &outcome),
        Err(e) => {
            let why = clean(&e.to_string(), DDL_WIDTH);
            let n = entry.payload.len();
            return writeln!(out, "  <{n} bytes, not a waly record: {why}>");
        }
    };
    writeln!(
        out,
        "  txid {}  committed {}  gid {}  commit {}",
        clean(&record.txid, VALUE_WIDTH),
        clean(&record.committed_at, VALUE_WIDTH),
        clean(&record.gid, VALUE_WIDTH),
        match record.commit {
            CommitKind::Prepared => "prepared",
            CommitKind::Direct => "direct",
            CommitKind::After => "after",
        }
    )?;
    let s = &record.session;
    write!(
        out,
        "  session {}@{}",
        clean(&s.user, VALUE_WIDTH),
        clean(&s.database, VALUE_WIDTH)
    )?;
    if let Some(role) = &s.role {
        write!(out, "  as role {}", clean(role, VALUE_WIDTH))?;
    }
    if let Some(app) = &s.application_name {
        write!(out, "  application {}", clean(app, VALUE_WIDTH))?;
    }
    writeln!(out, "  client {}", clean(&s.client_addr, VALUE_WIDTH))?;
    if !record.operations.is_empty() {
        writeln!(out, "  operations ({}):", record.operations.len())?;
        for call in &record.operations {
            let params = serde_json::Value::Object(call.params.clone()).to_string();
            writeln!(
                out,
                "    {} v{} {}",
                clean(&call.name, VALUE_WIDTH),
                call.version,
                clean(&params, DDL_WIDTH)
            )?;
        }
    }
    writeln!(out, "  statements ({}):", record.statements.len())?;
    for (i, statement) in record.statements.iter().enumerate() {
        write_statement(out, i + 1, statement)?;
    }
    writeln!(
        out,
        "  changes ({}, {} rows):",
        record.changes.len(),
        record.row_changes()
    )?;
    for change in &record.changes {
        writeln!(out, "    {}", change_line(change))?;
    }
    Ok(())
}

/// The lines of an outcome record: whose direct commits it decides, and which did not commit.
fn write_outcome(out: &mut impl Write, outcome: &OutcomeRecord) -> io::Result<()> {
    writeln!(
        out,
        "  outcome  writer {}  decided through {}",
        clean(&outcome.writer, VALUE_WIDTH),
        outcome.decided_through
    )?;
    for a in &outcome.aborted {
        writeln!(
            out,
            "    not committed: position {} (txid {})",
            a.position,
            clean(&a.txid, VALUE_WIDTH)
        )?;
    }
    Ok(())
}

/// Writes `entry` as one line of JSON: `{"position":..,"appended_at":"..","record":<payload>}`, the
/// payload as it is stored. A payload that is not JSON gives `"record":null` and an `"error"`.
pub fn render_json(entry: &Entry, out: &mut impl Write) -> io::Result<()> {
    render_json_with(entry, None, out)
}

/// [`render_json`], with an `"outcome"` (`"committed"`, `"not committed"`, `"undecided"`) when known.
pub fn render_json_with(
    entry: &Entry,
    outcome: Option<&str>,
    out: &mut impl Write,
) -> io::Result<()> {
    write!(
        out,
        "{{\"position\":{},\"appended_at\":\"{}\",\"record\":",
        entry.position,
        rfc3339_micros(entry.timestamp_micros)
    )?;
    match one_line_json(&entry.payload) {
        Ok(json) => out.write_all(&json)?,
        Err(why) => {
            let why = serde_json::to_string(&why).map_err(io::Error::other)?;
            write!(out, "null,\"error\":{why}")?;
        }
    }
    if let Some(outcome) = outcome {
        write!(out, ",\"outcome\":\"{outcome}\"")?;
    }
    out.write_all(b"}\n")
}

/// The payload if it is JSON, on one line. Valid JSON holds line breaks only as whitespace between
/// tokens (inside strings they must be escaped), so they can be blanked without changing a thing.
fn one_line_json(payload: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    let n = payload.len();
    let text = std::str::from_utf8(payload).map_err(|e| format!("{n} bytes, not UTF-8: {e}"))?;
    serde_json::from_str::<IgnoredAny>(text)
        .map_err(|e| format!("{n} bytes, not valid JSON: {e}"))?;
    if !payload.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Ok(Cow::Borrowed(payload));
    }
    let blanked = payload
        .iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect();
    Ok(Cow::Owned(blanked))
}

fn write_statement(out: &mut impl Write, n: usize, statement: &Statement) -> io::Result<()> {
    let sql = cut(&statement.sql, SQL_WIDTH);
    let mut lines = sql.lines();
    let first = lines.next().unwrap_or("");
    writeln!(out, "    {n}. {}", clean(first, usize::MAX))?;
    let indent = " ".repeat(format!("    {n}. ").len());
    for line in lines {
        writeln!(out, "{indent}{}", clean(line, usize::MAX))?;
    }
    if !statement.params.is_empty() {
        writeln!(out, "{indent}params {}", params(&statement.params))?;
    }
    Ok(())
}

/// `$1='42' $2=NULL ...`, cut after [`PARAMS_WIDTH`] characters.
fn params(params: &[Option<String>]) -> String {
    let mut line = String::new();
    for (i, param) in params.iter().enumerate() {
        if line.chars().count() >= PARAMS_WIDTH {
            line.push_str(&format!(" … ({} more)", params.len() - i));
            break;
        }
        if i > 0 {
            line.push(' ');
        }
        match param {
            Some(text) => {
                let quoted = format!("'{}'", text.replace('\'', "''"));
                line.push_str(&format!("${}={}", i + 1, clean(&quoted, VALUE_WIDTH)));
            }
            None => line.push_str(&format!("${}=NULL", i + 1)),
        }
    }
    line
}

fn change_line(change: &Change) -> String {
    match change {
        Change::Insert {
            schema,
            table,
            pk,
            new,
        } => format!(
            "insert {}{} new={}",
            relation(schema, table),
            pk_part(pk),
            json(new)
        ),
        Change::Update {
            schema,
            table,
            pk,
            old,
            new,
        } => format!(
            "update {}{} old={} new={}",
            relation(schema, table),
            pk_part(pk),
            json(old),
            json(new)
        ),
        Change::Delete {
            schema,
            table,
            pk,
            old,
        } => format!(
            "delete {}{} old={}",
            relation(schema, table),
            pk_part(pk),
            json(old)
        ),
        Change::Truncate { schema, table } => format!("truncate {}", relation(schema, table)),
        Change::Rewrite {
            schema,
            table,
            rows,
        } => format!(
            "rewrite {} by the DDL: its {rows} rows after it follow",
            relation(schema, table)
        ),
        Change::Fill {
            schema,
            table,
            column,
            new,
        } => format!(
            "fill {}.{} on every row, as in {}",
            relation(schema, table),
            clean(column, VALUE_WIDTH),
            json(new)
        ),
        Change::Sequence {
            schema,
            name,
            last_value,
            is_called,
        } => format!(
            "sequence {} last_value={last_value} is_called={is_called}",
            relation(schema, name)
        ),
        Change::Ddl {
            tag, object, sql, ..
        } => {
            let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            let tag = clean(tag, VALUE_WIDTH);
            match object {
                Some(object) => format!(
                    "ddl {tag} {}: {}",
                    clean(object, VALUE_WIDTH),
                    clean(&sql, DDL_WIDTH)
                ),
                None => format!("ddl {tag}: {}", clean(&sql, DDL_WIDTH)),
            }
        }
    }
}

fn relation(schema: &str, table: &str) -> String {
    format!(
        "{}.{}",
        clean(schema, VALUE_WIDTH),
        clean(table, VALUE_WIDTH)
    )
}

fn pk_part(pk: &Option<Box<RawValue>>) -> String {
    match pk {
        Some(pk) if pk.get() != "null" => format!(" pk={}", json(pk)),
        _ => String::new(),
    }
}

/// A JSON value on one line, cut to [`VALUE_WIDTH`]. JSON escapes control characters itself.
fn json(value: &RawValue) -> String {
    cut(value.get(), VALUE_WIDTH).into_owned()
}

/// `text` cut to at most `width` characters, the last of them an ellipsis when anything was cut.
fn cut(text: &str, width: usize) -> Cow<'_, str> {
    match text.char_indices().nth(width) {
        None => Cow::Borrowed(text),
        Some(_) => {
            let keep = text
                .char_indices()
                .nth(width.saturating_sub(1))
                .map_or(text.len(), |(i, _)| i);
            Cow::Owned(format!("{}…", &text[..keep]))
        }
    }
}

/// `text` cut to `width` characters, with control characters (other than tab) escaped so they cannot
/// move the cursor or change colours.
fn clean(text: &str, width: usize) -> String {
    let cut = cut(text, width);
    if !cut.chars().any(|c| c.is_control() && c != '\t') {
        return cut.into_owned();
    }
    cut.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Microseconds since the Unix epoch as RFC 3339 in UTC with microseconds: `2026-11-23T10:00:00.123456Z`.
pub fn rfc3339_micros(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let (year, month, day) = civil_date(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01. Counts in 400-year cycles (146 097 days each)
/// of years that start on 1 March, so the leap day falls at the end of a year.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let since_0000_03_01 = days + 719_468;
    let cycle = since_0000_03_01.div_euclid(146_097);
    let day_of_cycle = since_0000_03_01.rem_euclid(146_097);
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_cycle + cycle * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}
