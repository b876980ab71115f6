//! Columns picked out of a row image without parsing their values: the primary key that identifies a row
//! in a set statement, and tells when two changes of a batch touch the same row.
//!
//! Values are carried as the JSON text Postgres rendered, never as numbers, so they stay exact. Two
//! renderings of one stored value are the same text, so equal texts mean the same row. The converse need
//! not hold (`1.0` and `1.00` are one numeric key): a set statement that meets such a pair changes fewer
//! rows than it has changes, and the batch is applied again row by row.

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A column name, borrowed from the image unless it holds escapes.
#[derive(Deserialize, PartialEq, Eq, Hash)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

impl Borrow<str> for Name<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A row image's columns, values unparsed.
pub struct Image<'a>(HashMap<Name<'a>, &'a RawValue>);

impl<'a> Image<'a> {
    /// `None` when `text` is not a JSON object.
    pub fn parse(text: &'a str) -> Option<Image<'a>> {
        serde_json::from_str(text).ok().map(Image)
    }

    /// A JSON object of `columns`, in that order, with their values as the image has them (`null` for a
    /// column the image lacks).
    pub fn pick(&self, columns: &[String]) -> String {
        let mut out = String::from("{");
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(column).expect("a string serialises"));
            out.push(':');
            out.push_str(self.0.get(column.as_str()).map_or("null", |v| v.get()));
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_exact_values_in_the_given_order() {
        let image =
            Image::parse(r#"{"v": "x", "id": 123456789012345678901234567890.5, "k\"q": [1]}"#)
                .unwrap();
        let columns = ["k\"q".to_string(), "id".to_string(), "gone".to_string()];
        assert_eq!(
            image.pick(&columns),
            r#"{"k\"q":[1],"id":123456789012345678901234567890.5,"gone":null}"#
        );
        assert!(Image::parse("[1]").is_none());
    }
}
