//! What replay knows about one target table: its columns from the catalog and the statements that apply
//! row images to it, prepared once and cached until DDL may have changed the table.
//!
//! Images become rows through `json_populate_record(set)` over the table's own row type, so every value
//! goes through its type's input function from the exact text Postgres rendered. Generated columns are
//! never written (the target computes them); identity columns are inserted with `OVERRIDING SYSTEM VALUE`.
//! An update or delete finds its row by primary key, or, without one, by the whole old image compared with
//! `*=` (binary equality, defined for every type), one row by `ctid`. A table with a primary key also gets
//! set statements that update or delete many rows at once, each found by the key of its old image.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::{Client, Statement};

use super::keys::Image;

/// One table, ready to take images.
pub struct Table {
    /// `"schema"."table"`.
    pub name: String,
    pub partitioned: bool,
    /// `$1`: a JSON array of new images.
    pub insert: Statement,
    /// `$1`: old image, `$2`: new image.
    pub update: Statement,
    /// `$1`: old image.
    pub delete: Statement,
    /// With a primary key only: the statements that change many rows at once, and what they need.
    pub sets: Option<Sets>,
}

/// Set statements of a table with a primary key. Their old images are *old keys*: JSON objects of the
/// key columns and the GENERATED ALWAYS identity columns of the old image ([`Sets::old_key`]).
pub struct Sets {
    /// `$1`: old keys, `$2`: new images (text arrays, the same length).
    pub update: Statement,
    /// `$1`: old keys (a text array).
    pub delete: Statement,
    /// The primary-key columns, then the GENERATED ALWAYS identity columns that are not in the key.
    old_key_columns: Vec<String>,
    /// How many of `old_key_columns` are the key.
    key_len: usize,
}

impl Sets {
    /// What a set statement needs of a change's old image: the row's identity (its key columns as JSON)
    /// and its old key. `None` when the image is not a JSON object.
    pub fn old_key(&self, old: &str) -> Option<(String, String)> {
        let image = Image::parse(old)?;
        let row = image.pick(&self.old_key_columns[..self.key_len]);
        let key = if self.key_len == self.old_key_columns.len() {
            row.clone()
        } else {
            image.pick(&self.old_key_columns)
        };
        Some((row, key))
    }

    /// The identity of the row a new image describes: its key columns as JSON.
    pub fn row(&self, new: &str) -> Option<String> {
        Some(Image::parse(new)?.pick(&self.old_key_columns[..self.key_len]))
    }
}

/// Tables by (schema, name). Must be cleared after any DDL: a prepared statement knows the old columns.
#[derive(Default)]
pub struct Tables {
    known: HashMap<(String, String), Arc<Table>>,
}

struct Column {
    name: String,
    generated: bool,
    always_identity: bool,
    key: bool,
}

impl Tables {
    pub fn clear(&mut self) {
        self.known.clear();
    }

    pub async fn get(
        &mut self,
        target: &Client,
        schema: &str,
        table: &str,
    ) -> Result<Arc<Table>, tokio_postgres::Error> {
        let key = (schema.to_owned(), table.to_owned());
        if let Some(t) = self.known.get(&key) {
            return Ok(t.clone());
        }
        let t = Arc::new(load(target, schema, table).await?);
        self.known.insert(key, t.clone());
        Ok(t)
    }
}

async fn load(target: &Client, schema: &str, table: &str) -> Result<Table, tokio_postgres::Error> {
    let name = format!("{}.{}", ident(schema), ident(table));
    let relkind: i8 = target
        .query_one(
            "select relkind from pg_catalog.pg_class where oid = $1::text::regclass",
            &[&name],
        )
        .await?
        .get(0);
    let columns: Vec<Column> = target
        .query(
            "select a.attname::text, a.attgenerated <> '', a.attidentity = 'a',
                    exists (select from pg_catalog.pg_index i,
                                   unnest(i.indkey::int2[]) with ordinality as k(attnum, ord)
                            where i.indrelid = a.attrelid and i.indisprimary
                              and k.attnum = a.attnum and k.ord <= i.indnkeyatts)
             from pg_catalog.pg_attribute a
             where a.attrelid = $1::text::regclass and a.attnum > 0 and not a.attisdropped
             order by a.attnum",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            generated: r.get(1),
            always_identity: r.get(2),
            key: r.get(3),
        })
        .collect();

    let list = |alias: &str, keep: &dyn Fn(&Column) -> bool| -> Vec<String> {
        columns
            .iter()
            .filter(|c| keep(c))
            .map(|c| match alias {
                "" => ident(&c.name),
                a => format!("{a}.{}", ident(&c.name)),
            })
            .collect()
    };
    let writable = |c: &Column| !c.generated;
    let insert = format!(
        "insert into {name} ({}) overriding system value select {} \
         from json_populate_recordset(null::{name}, $1::text::json) as waly_r",
        list("", &writable).join(", "),
        list("waly_r", &writable).join(", "),
    );

    let mut settable: Vec<String> = columns
        .iter()
        .filter(|c| !c.generated && !c.always_identity)
        .map(|c| format!("{0} = waly_n.{0}", ident(&c.name)))
        .collect();
    if let (true, Some(first)) = (settable.is_empty(), columns.first()) {
        // Nothing an UPDATE may write: the statement still has to find (and count) its row.
        settable.push(format!("{0} = waly_t.{0}", ident(&first.name)));
    }
    let keys: Vec<String> = columns
        .iter()
        .filter(|c| c.key)
        .map(|c| format!("waly_t.{0} = waly_o.{0}", ident(&c.name)))
        .collect();
    // An UPDATE cannot write a GENERATED ALWAYS identity column, so an update that changed one (only
    // `SET col = DEFAULT` can) must match no row and stop the replay rather than diverge silently.
    let unchanged_identity: String = columns
        .iter()
        .filter(|c| c.always_identity)
        .map(|c| {
            format!(
                " and waly_o.{0} is not distinct from waly_n.{0}",
                ident(&c.name)
            )
        })
        .collect();
    let sets = if keys.is_empty() {
        None
    } else {
        let where_keys = keys.join(" and ");
        // Arrays, not JSON arrays: the planner knows unnest's row count from an array, so it finds the
        // rows by key instead of hashing the whole table.
        let update = format!(
            "update {name} as waly_t set {} \
             from unnest($1::text[], $2::text[]) as waly_e(old, new) \
             cross join lateral json_populate_record(null::{name}, waly_e.old::json) as waly_o \
             cross join lateral json_populate_record(null::{name}, waly_e.new::json) as waly_n \
             where {where_keys}{unchanged_identity}",
            settable.join(", ")
        );
        let delete = format!(
            "delete from {name} as waly_t \
             using pg_catalog.unnest($1::text[]) as waly_e(old) \
             cross join lateral json_populate_record(null::{name}, waly_e.old::json) as waly_o \
             where {where_keys}"
        );
        let mut old_key_columns: Vec<String> = columns
            .iter()
            .filter(|c| c.key)
            .map(|c| c.name.clone())
            .collect();
        let key_len = old_key_columns.len();
        old_key_columns.extend(
            columns
                .iter()
                .filter(|c| c.always_identity && !c.key)
                .map(|c| c.name.clone()),
        );
        Some(Sets {
            update: target.prepare(&update).await?,
            delete: target.prepare(&delete).await?,
            old_key_columns,
            key_len,
        })
    };
    let (update, delete) = if keys.is_empty() {
        // No primary key: the first row whose every column is binary-equal to the old image.
        let by_image = |p: &str| {
            format!(
                "waly_t.ctid = (select waly_x.ctid from {name} as waly_x \
                 where waly_x operator(pg_catalog.*=) json_populate_record(null::{name}, {p}::text::json) \
                 limit 1)"
            )
        };
        (
            format!(
                "update {name} as waly_t set {} \
                 from json_populate_record(null::{name}, $2::text::json) as waly_n, \
                      json_populate_record(null::{name}, $1::text::json) as waly_o \
                 where {}{unchanged_identity}",
                settable.join(", "),
                by_image("$1")
            ),
            format!("delete from {name} as waly_t where {}", by_image("$1")),
        )
    } else {
        let keys = keys.join(" and ");
        (
            format!(
                "update {name} as waly_t set {} \
                 from json_populate_record(null::{name}, $2::text::json) as waly_n, \
                      json_populate_record(null::{name}, $1::text::json) as waly_o \
                 where {keys}{unchanged_identity}",
                settable.join(", ")
            ),
            format!(
                "delete from {name} as waly_t \
                 using json_populate_record(null::{name}, $1::text::json) as waly_o where {keys}"
            ),
        )
    };
    Ok(Table {
        partitioned: relkind == b'p' as i8,
        insert: target.prepare(&insert).await?,
        update: target.prepare(&update).await?,
        delete: target.prepare(&delete).await?,
        sets,
        name,
    })
}

/// An identifier, always double-quoted.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
