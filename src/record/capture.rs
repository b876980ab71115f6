//! From the rows of `waly.read_changes(true)` to a record's [`Change`]s.
//!
//! Owns the mapping from the capture's columns (see `migrations/0002_capture.sql` and
//! `migrations/0006_capture_buffer.sql`) to changes, for rows read through tokio-postgres and for the same
//! columns read as text through the raw protocol; both share one mapping. A row of kind `lines` carries
//! the capture buffer: one JSON array per row change, `[kind, schema, table, key columns, old, new]`.
//! Images are taken as the JSON text Postgres rendered and must never be parsed into numbers: that would
//! round them.

use std::collections::HashMap;

use serde_json::value::RawValue;

use super::{Change, ChangeFields, Json, RecordError};

/// The select list both variants expect, in this order: `select {CAPTURE_COLUMNS} from waly.read_changes(true)`.
pub const CAPTURE_COLUMNS: &str = "seq, kind, schema_name, table_name, pk::text, old_row::text, \
                                   new_row::text, ddl_tag, ddl_object, ddl_query";

/// The changes of capture rows selected with [`CAPTURE_COLUMNS`] (rows already in `seq` order).
pub fn changes_from_capture(rows: &[tokio_postgres::Row]) -> Result<Vec<Change>, RecordError> {
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let seq = row
            .try_get::<_, i64>(0)
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "?".into());
        let mut columns: [Option<&str>; 9] = [None; 9];
        for (i, column) in columns.iter_mut().enumerate() {
            *column = row
                .try_get::<_, Option<&str>>(i + 1)
                .map_err(|e| invalid(&seq, format!("column {}: {e}", i + 1)))?;
        }
        push_changes(&seq, &columns, &mut changes)?;
    }
    Ok(changes)
}

/// The same as [`changes_from_capture`], for rows whose columns arrived as text (`None` for SQL NULL), as
/// the raw protocol delivers them.
pub fn changes_from_capture_text(rows: &[Vec<Option<String>>]) -> Result<Vec<Change>, RecordError> {
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        if row.len() != 10 {
            return Err(invalid("?", format!("{} columns, expected 10", row.len())));
        }
        let seq = row[0].as_deref().unwrap_or("?");
        let mut columns: [Option<&str>; 9] = [None; 9];
        for (column, value) in columns.iter_mut().zip(&row[1..]) {
            *column = value.as_deref();
        }
        push_changes(seq, &columns, &mut changes)?;
    }
    Ok(changes)
}

/// The changes of a transaction whose capture stayed in its buffer: `lines` (the buffer, as
/// `current_setting('waly.capture')` gives it) and `sequences` (`waly.sequence_positions()`: a JSON array of
/// `{schema, name, last_value, is_called}`, or `None`).
pub fn changes_from_buffer(
    lines: &str,
    sequences: Option<&str>,
) -> Result<Vec<Change>, RecordError> {
    let mut changes = Vec::new();
    push_lines("buffer", lines, &mut changes)?;
    if let Some(sequences) = sequences {
        let positions: Vec<NamedPosition> = serde_json::from_str(sequences)
            .map_err(|e| invalid("sequences", format!("not a list of positions: {e}")))?;
        for p in positions {
            let fields = ChangeFields {
                kind: "sequence".into(),
                schema: Some(p.schema),
                table: None,
                pk: None,
                old: None,
                new: None,
                tag: None,
                object: None,
                sql: None,
                search_path: None,
                column: None,
                rows: None,
                name: Some(p.name),
                last_value: Some(p.last_value),
                is_called: Some(p.is_called),
            };
            changes.push(Change::try_from(fields).map_err(|r| invalid("sequences", r))?);
        }
    }
    Ok(changes)
}

#[derive(serde::Deserialize)]
struct NamedPosition {
    schema: String,
    name: String,
    last_value: i64,
    is_called: bool,
}

/// One capture row's changes: many for a row of kind `lines`, one otherwise.
fn push_changes(
    seq: &str,
    columns: &[Option<&str>; 9],
    changes: &mut Vec<Change>,
) -> Result<(), RecordError> {
    if columns[0] != Some("lines") {
        changes.push(change(seq, columns)?);
        return Ok(());
    }
    push_lines(seq, columns[8].unwrap_or_default(), changes)
}

fn push_lines(seq: &str, lines: &str, changes: &mut Vec<Change>) -> Result<(), RecordError> {
    for (n, line) in lines.split('\n').filter(|l| !l.is_empty()).enumerate() {
        let at = format!("{seq}, line {}", n + 1);
        changes.push(line_change(&at, line)?);
    }
    Ok(())
}

/// One line of the capture buffer: `[kind, schema, table, key columns or null, old image, new image]`.
type Line<'a> = (
    String,
    String,
    String,
    Option<Vec<String>>,
    Option<&'a RawValue>,
    Option<&'a RawValue>,
);

fn line_change(at: &str, line: &str) -> Result<Change, RecordError> {
    let (kind, schema, table, key_columns, old, new): Line =
        serde_json::from_str(line).map_err(|e| invalid(at, format!("not a capture line: {e}")))?;
    let pk = match key_columns {
        None => None,
        Some(columns) => {
            // The key of the row as it is after the change: the new image's, or the old one's for a delete.
            let image = new
                .or(old)
                .ok_or_else(|| invalid(at, "a keyed change without an image".into()))?;
            Some(primary_key(at, image, &columns)?)
        }
    };
    let fields = ChangeFields {
        kind,
        schema: Some(schema),
        table: Some(table),
        pk,
        old: old.map(RawValue::to_owned),
        new: new.map(RawValue::to_owned),
        tag: None,
        object: None,
        sql: None,
        search_path: None,
        column: None,
        rows: None,
        name: None,
        last_value: None,
        is_called: None,
    };
    Change::try_from(fields).map_err(|reason| invalid(at, reason))
}

/// `{"col": value, ...}` of `columns`, in their order, with each value's text as the image has it.
fn primary_key(at: &str, image: &RawValue, columns: &[String]) -> Result<Json, RecordError> {
    let values: HashMap<String, &RawValue> = serde_json::from_str(image.get())
        .map_err(|e| invalid(at, format!("image is not a JSON object: {e}")))?;
    let mut key = String::from("{");
    for (i, column) in columns.iter().enumerate() {
        let value = values
            .get(column)
            .ok_or_else(|| invalid(at, format!("the image lacks key column {column}")))?;
        if i > 0 {
            key.push_str(", ");
        }
        key.push_str(&serde_json::to_string(column).expect("a string serialises"));
        key.push_str(": ");
        key.push_str(value.get());
    }
    key.push('}');
    RawValue::from_string(key).map_err(|e| invalid(at, format!("key is not JSON: {e}")))
}

/// How many inserts follow a `rewrite` row (`migrations/0010_ddl_values.sql`).
#[derive(serde::Deserialize)]
struct RewriteRows {
    rows: u64,
}

/// Where a sequence stands, as `waly.take_capture()` puts it in `new_row` of a row of kind `sequence`
/// (`migrations/0004_sequences.sql`).
#[derive(serde::Deserialize)]
struct SequencePosition {
    last_value: i64,
    is_called: bool,
}

/// `columns`: kind, schema_name, table_name, pk, old_row, new_row, ddl_tag, ddl_object, ddl_query. Which
/// of them a kind requires is decided by [`Change::try_from`], the same rule a stored record is read with.
/// A `sequence` row names the sequence in table_name and holds its position in new_row; a `fill` row
/// names its column in ddl_object; a `rewrite` row holds `{"rows": n}` in new_row.
fn change(seq: &str, columns: &[Option<&str>; 9]) -> Result<Change, RecordError> {
    let [
        kind,
        schema,
        mut table,
        pk,
        old,
        mut new,
        tag,
        object,
        query,
    ] = *columns;
    let (mut name, mut position, mut column, mut rows) = (None, None, None, None);
    let mut object = object;
    if kind == Some("fill") {
        column = object.take();
    }
    if kind == Some("rewrite") {
        rows = new
            .take()
            .map(|text| {
                serde_json::from_str::<RewriteRows>(text)
                    .map(|r| r.rows)
                    .map_err(|e| invalid(seq, format!("new_row is not a row count: {e}")))
            })
            .transpose()?;
    }
    if kind == Some("sequence") {
        name = table.take();
        position = new
            .take()
            .map(|text| {
                serde_json::from_str::<SequencePosition>(text)
                    .map_err(|e| invalid(seq, format!("new_row is not a sequence position: {e}")))
            })
            .transpose()?;
    }
    let image = |value: Option<&str>, what: &str| -> Result<Option<Json>, RecordError> {
        value
            .map(|text| {
                RawValue::from_string(text.to_owned())
                    .map_err(|e| invalid(seq, format!("{what} is not JSON: {e}")))
            })
            .transpose()
    };
    let fields = ChangeFields {
        kind: kind
            .ok_or_else(|| invalid(seq, "kind is missing".into()))?
            .to_owned(),
        schema: schema.map(str::to_owned),
        table: table.map(str::to_owned),
        pk: image(pk, "pk")?,
        old: image(old, "old_row")?,
        new: image(new, "new_row")?,
        tag: tag.map(str::to_owned),
        object: object.map(str::to_owned),
        sql: query.map(str::to_owned),
        search_path: None,
        column: column.map(str::to_owned),
        rows,
        name: name.map(str::to_owned),
        last_value: position.as_ref().map(|p| p.last_value),
        is_called: position.as_ref().map(|p| p.is_called),
    };
    Change::try_from(fields).map_err(|reason| invalid(seq, reason))
}

fn invalid(seq: &str, reason: String) -> RecordError {
    RecordError::Capture {
        seq: seq.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(columns: &[Option<&str>]) -> Vec<Option<String>> {
        columns.iter().map(|c| c.map(str::to_owned)).collect()
    }

    #[test]
    fn text_rows_become_changes_with_exact_images() {
        let image = r#"{"id": 1, "x": 1e-30, "n": 123456789012345678901234567890.5}"#;
        let rows = vec![
            row(&[
                Some("1"),
                Some("ddl"),
                None,
                None,
                None,
                None,
                None,
                Some("CREATE TABLE"),
                Some("public.t"),
                Some("create table t (id int)"),
            ]),
            row(&[
                Some("2"),
                Some("insert"),
                Some("public"),
                Some("t"),
                Some(r#"{"id": 1}"#),
                None,
                Some(image),
                None,
                None,
                None,
            ]),
            row(&[
                Some("3"),
                Some("update"),
                Some("public"),
                Some("t"),
                None,
                Some(image),
                Some(image),
                None,
                None,
                None,
            ]),
            row(&[
                Some("4"),
                Some("delete"),
                Some("public"),
                Some("t"),
                None,
                Some(image),
                None,
                None,
                None,
                None,
            ]),
            row(&[
                Some("5"),
                Some("truncate"),
                Some("public"),
                Some("t"),
                None,
                None,
                None,
                None,
                None,
                Some("truncate t"),
            ]),
            row(&[
                Some("6"),
                Some("sequence"),
                Some("public"),
                Some("t_id_seq"),
                None,
                None,
                Some(r#"{"is_called": false, "last_value": 9223372036854775807}"#),
                None,
                None,
                None,
            ]),
        ];
        let changes = changes_from_capture_text(&rows).unwrap();
        assert_eq!(changes.len(), 6);
        assert!(matches!(&changes[0], Change::Ddl { tag, .. } if tag == "CREATE TABLE"));
        match &changes[1] {
            Change::Insert { pk, new, .. } => {
                assert_eq!(pk.as_ref().unwrap().get(), r#"{"id": 1}"#);
                assert_eq!(new.get(), image);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&changes[2], Change::Update { pk: None, .. }));
        assert!(matches!(&changes[4], Change::Truncate { table, .. } if table == "t"));
        assert_eq!(
            changes[5],
            Change::Sequence {
                schema: "public".into(),
                name: "t_id_seq".into(),
                last_value: i64::MAX,
                is_called: false,
            }
        );
    }

    #[test]
    fn rewrite_and_fill_rows_become_changes_and_mark_the_rows_ddl_wrote() {
        let image = r#"{"id": 1, "at": "2026-12-04T10:00:00+00:00"}"#;
        let rows = vec![
            row(&[
                Some("1"),
                Some("ddl"),
                None,
                None,
                None,
                None,
                None,
                Some("ALTER TABLE"),
                Some("public.t"),
                Some("alter table t ..."),
            ]),
            row(&[
                Some("2"),
                Some("rewrite"),
                Some("public"),
                Some("t"),
                None,
                None,
                Some(r#"{"rows": 1}"#),
                None,
                None,
                None,
            ]),
            row(&[
                Some("3"),
                Some("insert"),
                Some("public"),
                Some("t"),
                Some(r#"{"id": 1}"#),
                None,
                Some(image),
                None,
                None,
                None,
            ]),
            row(&[
                Some("4"),
                Some("fill"),
                Some("public"),
                Some("t"),
                None,
                None,
                Some(image),
                None,
                Some("at"),
                None,
            ]),
            row(&[
                Some("5"),
                Some("insert"),
                Some("public"),
                Some("t"),
                Some(r#"{"id": 2}"#),
                None,
                Some(image),
                None,
                None,
                None,
            ]),
        ];
        let changes = changes_from_capture_text(&rows).unwrap();
        assert!(matches!(&changes[1], Change::Rewrite { table, rows: 1, .. } if table == "t"));
        assert!(
            matches!(&changes[3], Change::Fill { column, new, .. } if column == "at" && new.get() == image)
        );
        // The insert the rewrite announced is the DDL's; the one after the fill is the transaction's.
        assert_eq!(
            crate::record::written_by_ddl(&changes),
            [false, false, true, false, false]
        );
        let bad = vec![row(&[
            Some("9"),
            Some("rewrite"),
            Some("public"),
            Some("t"),
            None,
            None,
            Some("{}"),
            None,
            None,
            None,
        ])];
        let e = changes_from_capture_text(&bad).unwrap_err().to_string();
        assert!(
            e.contains("capture row 9") && e.contains("row count"),
            "{e}"
        );
    }

    #[test]
    fn bad_rows_name_their_seq() {
        let bad = [
            row(&[
                Some("7"),
                Some("upsert"),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ]),
            row(&[
                Some("8"),
                Some("insert"),
                Some("s"),
                Some("t"),
                None,
                None,
                Some("{"),
                None,
                None,
                None,
            ]),
            row(&[
                Some("9"),
                Some("insert"),
                Some("s"),
                Some("t"),
                None,
                None,
                None,
                None,
                None,
                None,
            ]),
            row(&[Some("10")]),
            row(&[
                Some("11"),
                Some("sequence"),
                Some("s"),
                Some("q"),
                None,
                None,
                Some(r#"{"last_value": 1.5, "is_called": true}"#),
                None,
                None,
                None,
            ]),
            row(&[
                Some("12"),
                Some("sequence"),
                Some("s"),
                Some("q"),
                None,
                None,
                None,
                None,
                None,
                None,
            ]),
        ];
        for r in bad {
            let e = changes_from_capture_text(&[r]).unwrap_err();
            assert!(matches!(e, RecordError::Capture { .. }), "{e}");
        }
    }

    /// A capture row of kind `lines` carrying `lines`.
    fn lines_row(seq: &str, lines: &str) -> Vec<Option<String>> {
        let mut r = row(&[Some(seq), Some("lines")]);
        r.extend(std::iter::repeat_n(None, 7));
        r.push(Some(lines.to_owned()));
        r
    }

    #[test]
    fn buffer_lines_become_changes_with_keys_from_the_images() {
        let lines = concat!(
            r#"["insert","public","t",["id","k"],null,{"id":1,"x":1e-30,"k":"a\"b"}]"#,
            "\n",
            r#"["update","public","t",["id","k"],{"id":1,"x":1e-30,"k":"a\"b"},{"id":2,"x":123456789012345678901234567890.5,"k":"c"}]"#,
            "\n",
            r#"["delete","odd \"schema\"","t",["id","k"],{"id":2,"x":null,"k":"c"},null]"#,
            "\n",
            r#"["insert","public","nokey",null,null,{"a":[1,2],"j":{"z": 1,  "a": 2}}]"#,
            "\n",
        );
        let changes = changes_from_capture_text(&[lines_row("1", lines)]).unwrap();
        let json: Vec<serde_json::Value> = changes
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        assert_eq!(changes.len(), 4);
        let text = |c: &Change| serde_json::to_string(c).unwrap();
        // Keys in the key columns' order, values as the image wrote them.
        assert!(
            text(&changes[0]).contains(r#""pk":{"id": 1, "k": "a\"b"}"#),
            "{}",
            text(&changes[0])
        );
        assert!(
            text(&changes[1]).contains(r#""pk":{"id": 2, "k": "c"}"#),
            "{}",
            text(&changes[1])
        );
        assert!(text(&changes[1]).contains("123456789012345678901234567890.5"));
        assert!(
            text(&changes[2]).contains(r#""pk":{"id": 2, "k": "c"}"#),
            "{}",
            text(&changes[2])
        );
        assert_eq!(json[2]["schema"], "odd \"schema\"");
        assert!(json[3].get("pk").is_none_or(|p| p.is_null()), "{}", json[3]);
        // json values keep their text.
        assert!(
            text(&changes[3]).contains(r#"{"z": 1,  "a": 2}"#),
            "{}",
            text(&changes[3])
        );

        for bad in [
            "not json",
            r#"["insert","public","t",["id"],null,{"x":1}]"#,
            r#"["insert","public","t",["id"],null,null]"#,
            r#"["frobnicate","public","t",null,null,{"x":1}]"#,
        ] {
            let e = changes_from_capture_text(&[lines_row("7", bad)]).unwrap_err();
            assert!(e.to_string().contains("7, line 1"), "{e}");
        }
    }

    #[test]
    fn a_buffer_and_sequence_positions_become_changes() {
        let lines = "[\"insert\",\"public\",\"t\",[\"id\"],null,{\"id\":9,\"v\":\"x\"}]\n";
        let sequences =
            r#"[{"schema":"public","name":"t_id_seq","last_value":9,"is_called":true}]"#;
        let changes = changes_from_buffer(lines, Some(sequences)).unwrap();
        assert_eq!(changes.len(), 2);
        let last = serde_json::to_value(&changes[1]).unwrap();
        assert_eq!(last["kind"], "sequence");
        assert_eq!(last["name"], "t_id_seq");
        assert_eq!(last["last_value"], 9);
        assert!(changes_from_buffer("", None).unwrap().is_empty());
        assert!(changes_from_buffer(lines, Some("{}")).is_err());
    }
}
