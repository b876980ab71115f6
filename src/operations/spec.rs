//! The operations file as written: the YAML shape of `operations.yaml`, before it is checked.
//!
//! Only the serde shape lives here; [`super::catalog`] turns it into a checked [`super::Catalog`].
//! The file is parsed through [`crate::config::parse_yaml`], the one place that calls the YAML parser.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// The file format; 1.
    #[serde(default = "one")]
    pub format: u32,
    #[serde(default)]
    pub policy: PolicySpec,
    #[serde(default)]
    pub operations: Vec<OperationSpec>,
}

fn one() -> u32 {
    1
}

/// What an unmatched write to a table gets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// `record` (default) or `reject`.
    #[serde(default)]
    pub default: Option<String>,
    /// Per table (`table` for `public.table`, or `schema.table`): `record` or `reject`.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationSpec {
    pub name: String,
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default)]
    pub description: Option<String>,
    /// Parameters in declaration order.
    #[serde(default)]
    pub params: ordered::OrderedParams,
    /// The SQL shapes recorded as this operation.
    #[serde(default)]
    pub matches: Vec<ShapeSpec>,
    /// The statement run when the operation is invoked directly or replayed in operations mode, with
    /// `:name` placeholders.
    #[serde(default)]
    pub sql: Option<String>,
    /// How records of older versions read as this version, one step per older version.
    #[serde(default)]
    pub upcasters: Vec<UpcasterSpec>,
}

/// One typed parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub min: Option<serde_json::Value>,
    #[serde(default)]
    pub max: Option<serde_json::Value>,
    #[serde(default)]
    pub min_length: Option<usize>,
    #[serde(default)]
    pub max_length: Option<usize>,
    /// For `enum`: the allowed values.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// For `array`: the element type.
    #[serde(default)]
    pub items: Option<Box<ParamSpec>>,
    /// `table.column` (or `schema.table.column`): the value is taken from the row image Postgres
    /// produced, such as a generated id.
    #[serde(default)]
    pub from_row: Option<String>,
}

/// A SQL shape: a table and kind with a column mapping, or statement templates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeSpec {
    #[serde(default)]
    pub table: Option<String>,
    /// insert, update or delete.
    #[serde(default)]
    pub kind: Option<String>,
    /// column → parameter.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// One statement template with `:name` placeholders.
    #[serde(default)]
    pub statement: Option<String>,
    /// Several templates that one transaction runs in this order.
    #[serde(default)]
    pub statements: Vec<String>,
}

/// How a record of version `from` becomes version `from + 1`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpcasterSpec {
    pub from: u32,
    /// old name → new name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Parameters the old version did not have, with their value.
    #[serde(default)]
    pub default: BTreeMap<String, serde_json::Value>,
    /// Parameters computed from the old ones: a SQL expression with `:name` placeholders (old names,
    /// after renames), evaluated by the target Postgres.
    #[serde(default)]
    pub compute: BTreeMap<String, String>,
    /// Parameters the new version no longer has.
    #[serde(default)]
    pub drop: Vec<String>,
}

/// Keeps the parameters in the order the file declares them (a YAML mapping).
pub mod ordered {
    use serde::de::{Deserializer, MapAccess, Visitor};

    use super::ParamSpec;

    #[derive(Debug, Default)]
    pub struct OrderedParams(pub Vec<(String, ParamSpec)>);

    impl<'de> serde::Deserialize<'de> for OrderedParams {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = OrderedParams;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a mapping of parameter names to their definitions")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedParams, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = m.next_entry::<String, ParamSpec>()? {
                        if out.iter().any(|(n, _)| n == &k) {
                            return Err(serde::de::Error::custom(format!(
                                "parameter {k:?} is declared twice"
                            )));
                        }
                        out.push((k, v));
                    }
                    Ok(OrderedParams(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}
