//! Rows of published tables as the reader sees them: the relation cache fed by Relation
//! messages, tuples matched to column names, unchanged TOAST values restored from the old
//! row, and text values parsed into Rust types.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, NaiveDateTime};
use collect_pgoutput::{OldTuple, RelationBody, TupleData, TupleValue};

/// Why a row cannot become an event. Such rows go to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The relation has no such column (a schema change dropped or renamed it).
    #[error("column {0} is missing from the relation")]
    MissingColumn(String),
    /// The column holds an unchanged TOAST value and no old row carries it.
    #[error(
        "column {0} is an unchanged TOAST value and the old row does not carry it (is REPLICA IDENTITY FULL?)"
    )]
    UnchangedToast(String),
    /// The column is NULL where a value is required.
    #[error("column {0} is NULL")]
    Null(String),
    /// The value does not parse as its type.
    #[error("column {column}: {problem}")]
    Invalid {
        /// Column name.
        column: String,
        /// What is wrong.
        problem: String,
    },
    /// A row message for a relation never described.
    #[error("no Relation message was seen for relation {0}")]
    UnknownRelation(u32),
}

/// A relation as last described by the server.
#[derive(Debug, Clone)]
pub struct Relation {
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Column names in tuple order.
    pub columns: Vec<String>,
}

impl Relation {
    /// Position of a column (a linear scan: tables have a dozen columns, and comparing a few
    /// short strings is cheaper than hashing one).
    fn position(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == column)
    }
}

impl From<&RelationBody> for Relation {
    fn from(r: &RelationBody) -> Self {
        Self {
            namespace: if r.namespace.is_empty() {
                "pg_catalog".into()
            } else {
                r.namespace.clone()
            },
            name: r.name.clone(),
            columns: r.columns.iter().map(|c| c.name.clone()).collect(),
        }
    }
}

/// Relations by OID, replaced whenever a Relation message arrives (schema changes included).
#[derive(Debug, Default)]
pub struct Relations(HashMap<u32, Relation>);

impl Relations {
    /// Records a Relation message.
    pub fn update(&mut self, body: &RelationBody) {
        self.0.insert(body.oid, Relation::from(body));
    }

    /// The relation with OID `oid`.
    pub fn get(&self, oid: u32) -> Result<&Relation, RowError> {
        self.0.get(&oid).ok_or(RowError::UnknownRelation(oid))
    }
}

/// One row: column values by name.
#[derive(Debug, Clone)]
pub struct Row<'r> {
    relation: &'r Relation,
    values: Vec<TupleValue>,
}

impl<'r> Row<'r> {
    /// The row of a tuple. For the new row of an update, pass the old row: unchanged TOAST
    /// values are taken from it when it is a full row (REPLICA IDENTITY FULL); otherwise
    /// they stay unknown and reading them is an error, never a wrong value.
    pub fn new(relation: &'r Relation, tuple: &TupleData, old: Option<&OldTuple>) -> Self {
        let mut values = tuple.0.clone();
        if let Some(OldTuple::Full(old)) = old {
            for (i, v) in values.iter_mut().enumerate() {
                if *v == TupleValue::UnchangedToast
                    && let Some(o) = old.0.get(i)
                    && *o != TupleValue::UnchangedToast
                {
                    *v = o.clone();
                }
            }
        }
        Self { relation, values }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.relation.name
    }

    /// A column's text, `None` for NULL.
    pub fn text(&self, column: &str) -> Result<Option<&str>, RowError> {
        let i = self
            .relation
            .position(column)
            .ok_or_else(|| RowError::MissingColumn(column.into()))?;
        match self.values.get(i) {
            None => Err(RowError::MissingColumn(column.into())),
            Some(TupleValue::Null) => Ok(None),
            Some(TupleValue::UnchangedToast) => Err(RowError::UnchangedToast(column.into())),
            Some(TupleValue::Text(b)) => {
                std::str::from_utf8(b)
                    .map(Some)
                    .map_err(|_| RowError::Invalid {
                        column: column.into(),
                        problem: "not UTF-8".into(),
                    })
            }
            Some(TupleValue::Binary(_)) => Err(RowError::Invalid {
                column: column.into(),
                problem: "binary format is not requested by this reader".into(),
            }),
        }
    }

    /// A column that must not be NULL.
    pub fn required(&self, column: &str) -> Result<&str, RowError> {
        self.text(column)?
            .ok_or_else(|| RowError::Null(column.into()))
    }

    fn invalid(column: &str, problem: impl Into<String>) -> RowError {
        RowError::Invalid {
            column: column.into(),
            problem: problem.into(),
        }
    }

    /// An `integer` column.
    pub fn int(&self, column: &str) -> Result<i32, RowError> {
        let t = self.required(column)?;
        t.parse()
            .map_err(|_| Self::invalid(column, format!("'{t}' is not an integer")))
    }

    /// A `boolean` column.
    pub fn boolean(&self, column: &str) -> Result<bool, RowError> {
        // pgoutput sends the output function's `t`/`f`; a `::text` cast gives `true`/`false`.
        match self.required(column)? {
            "t" | "true" => Ok(true),
            "f" | "false" => Ok(false),
            t => Err(Self::invalid(column, format!("'{t}' is not a boolean"))),
        }
    }

    /// A `uuid` column, as canonical text.
    pub fn uuid(&self, column: &str) -> Result<String, RowError> {
        let t = self.required(column)?;
        uuid::Uuid::parse_str(t)
            .map(|u| u.to_string())
            .map_err(|_| Self::invalid(column, format!("'{t}' is not a UUID")))
    }

    /// A `timestamptz` column, in microseconds since the Unix epoch; `None` for NULL.
    pub fn timestamp(&self, column: &str) -> Result<Option<i64>, RowError> {
        self.text(column)?
            .map(|t| {
                parse_timestamptz(t)
                    .ok_or_else(|| Self::invalid(column, format!("'{t}' is not a timestamp")))
            })
            .transpose()
    }

    /// A `jsonb` column.
    pub fn json(&self, column: &str) -> Result<serde_json::Value, RowError> {
        self.decode_json(column)
    }

    /// A `jsonb` column decoded straight into `T` (no intermediate JSON tree).
    pub fn decode_json<T: serde::de::DeserializeOwned>(&self, column: &str) -> Result<T, RowError> {
        let t = self.required(column)?;
        serde_json::from_str(t).map_err(|e| Self::invalid(column, e.to_string()))
    }

    /// Every column as text (NULL as JSON null), for dead letters.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, v) in self.relation.columns.iter().zip(&self.values) {
            let value = match v {
                TupleValue::Null => serde_json::Value::Null,
                TupleValue::UnchangedToast => serde_json::Value::String("<unchanged toast>".into()),
                TupleValue::Text(b) => serde_json::Value::String(String::from_utf8_lossy(b).into()),
                TupleValue::Binary(b) => {
                    serde_json::Value::String(format!("<{} binary bytes>", b.len()))
                }
            };
            map.insert(name.clone(), value);
        }
        serde_json::Value::Object(map)
    }
}

/// Parses Postgres' ISO text of a `timestamptz` (`2026-11-23 01:02:03.123456+00`, any
/// offset, fractional seconds optional) into microseconds since the Unix epoch.
pub fn parse_timestamptz(t: &str) -> Option<i64> {
    fast_timestamptz(t.as_bytes()).or_else(|| slow_timestamptz(t))
}

/// The common shape, parsed by hand: `YYYY-MM-DD HH:MM:SS[.f{1,6}]±HH[:MM[:SS]]`.
fn fast_timestamptz(b: &[u8]) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    if b.len() < 22
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let date =
        chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)? as u32, num(8..10)? as u32)?;
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 6 {
            return None;
        }
        micros = num(start..i)? * 10i64.pow((6 - digits) as u32);
    }
    let sign = match b.get(i)? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut offset = num(i + 1..i + 3)? * 3600;
    i += 3;
    for unit in [60, 1] {
        if b.get(i) == Some(&b':') {
            offset += num(i + 1..i + 3)? * unit;
            i += 3;
        }
    }
    if i != b.len() {
        return None;
    }
    let days = i64::from(date.num_days_from_ce() - 719_163);
    Some((days * 86_400 + h * 3600 + mi * 60 + s - sign * offset) * 1_000_000 + micros)
}

fn slow_timestamptz(t: &str) -> Option<i64> {
    let with_minutes = match t.rfind(['+', '-']) {
        // "+05" -> "+05:00"; offsets with minutes (or seconds) pass as they are.
        Some(i) if i > 10 && t.len() - i == 3 => format!("{t}:00"),
        _ => t.to_string(),
    };
    DateTime::parse_from_str(&with_minutes, "%Y-%m-%d %H:%M:%S%.f%:z")
        .ok()
        .map(|d| d.timestamp_micros())
        .or_else(|| {
            NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|d| d.and_utc().timestamp_micros())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use collect_pgoutput::{Column, ReplicaIdentity};

    fn rel() -> Relation {
        let body = RelationBody {
            xid: None,
            oid: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: ["id", "doc", "n"]
                .iter()
                .map(|n| Column {
                    key: false,
                    name: n.to_string(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        };
        Relation::from(&body)
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::from(s.to_string()))
    }

    #[test]
    fn unchanged_toast_comes_from_the_full_old_row_or_is_an_error() {
        let r = rel();
        let new = TupleData(vec![t("1"), TupleValue::UnchangedToast, TupleValue::Null]);
        let old = OldTuple::Full(TupleData(vec![t("1"), t("{\"big\": 1}"), TupleValue::Null]));
        let row = Row::new(&r, &new, Some(&old));
        assert_eq!(row.text("doc").unwrap(), Some("{\"big\": 1}"));
        assert_eq!(row.text("n").unwrap(), None);
        let key_only = OldTuple::Key(TupleData(vec![t("1"), TupleValue::Null, TupleValue::Null]));
        let row = Row::new(&r, &new, Some(&key_only));
        assert_eq!(
            row.text("doc").unwrap_err(),
            RowError::UnchangedToast("doc".into())
        );
        let row = Row::new(&r, &new, None);
        assert!(matches!(row.json("doc"), Err(RowError::UnchangedToast(_))));
        assert_eq!(
            row.text("nope").unwrap_err(),
            RowError::MissingColumn("nope".into())
        );
        assert_eq!(row.required("n").unwrap_err(), RowError::Null("n".into()));
    }

    #[test]
    fn timestamps_in_every_offset_form() {
        let utc = parse_timestamptz("2026-11-23 01:02:03.123456+00").unwrap();
        assert_eq!(utc, 1_795_395_723_123_456);
        assert_eq!(
            parse_timestamptz("2026-11-23 06:32:03.123456+05:30").unwrap(),
            utc
        );
        assert_eq!(
            parse_timestamptz("2026-11-22 20:02:03.123456-05").unwrap(),
            utc
        );
        assert_eq!(
            parse_timestamptz("2026-11-23 01:02:03+00").unwrap(),
            utc - 123_456
        );
        assert_eq!(
            parse_timestamptz("2026-11-23 01:02:03.1+00").unwrap(),
            utc - 23_456
        );
        assert_eq!(
            parse_timestamptz("1999-12-31 23:59:59.999999+05:30:15").unwrap(),
            {
                slow_timestamptz("1999-12-31 23:59:59.999999+05:30:15")
                    .unwrap_or(946_664_984_999_999)
            }
        );
        assert_eq!(parse_timestamptz("infinity"), None);
        assert_eq!(parse_timestamptz("garbage"), None);
    }
}
