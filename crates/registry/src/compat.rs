//! Compatibility levels and checks (pure).

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

/// A subject's (or the global) compatibility level, as Confluent names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// No check.
    None,
    /// The new schema reads data written with the latest one.
    Backward,
    /// ... with every earlier one.
    BackwardTransitive,
    /// The latest schema reads data written with the new one.
    Forward,
    /// Every earlier schema reads data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier one.
    FullTransitive,
}

impl Level {
    /// Parses a level name (`BACKWARD`, ...).
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return None,
        })
    }

    /// The level's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the check runs against every earlier version, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }
}

/// Whether `reader` can read everything `writer` can write. Partial compatibility (an enum or
/// union that may fail to resolve for some values) counts as incompatible.
fn reads(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("only partially compatible: some values would not resolve".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Checks `new` against `existing` (oldest first) under `level`; returns the reasons it is
/// incompatible, empty when it is compatible.
pub fn check(level: Level, new: &Schema, existing: &[Schema]) -> Vec<String> {
    let against: &[Schema] = match (level, existing) {
        (Level::None, _) | (_, []) => return Vec::new(),
        (l, all) if l.transitive() => all,
        (_, all) => &all[all.len() - 1..],
    };
    let mut problems = Vec::new();
    for old in against {
        let backward = matches!(
            level,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        );
        let forward = matches!(
            level,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        );
        if backward && let Err(e) = reads(old, new) {
            problems.push(format!(
                "the new schema cannot read data written with an earlier one: {e}"
            ));
        }
        if forward && let Err(e) = reads(new, old) {
            problems.push(format!(
                "an earlier schema cannot read data written with the new one: {e}"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn backward_and_forward_rules() {
        let v1 = s(r#"{"name":"a","type":"string"}"#);
        let v2_default = s(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let v2_required = s(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        let v3_dropped = s(r#"{"name":"b","type":"int","default":0}"#);

        assert!(check(Level::Backward, &v2_default, std::slice::from_ref(&v1)).is_empty());
        assert_eq!(
            check(Level::Backward, &v2_required, std::slice::from_ref(&v1)).len(),
            1
        );
        // Adding a required field is forward compatible (old readers ignore it).
        assert!(check(Level::Forward, &v2_required, std::slice::from_ref(&v1)).is_empty());
        assert!(check(Level::Full, &v2_default, std::slice::from_ref(&v1)).is_empty());
        assert!(check(Level::None, &v2_required, std::slice::from_ref(&v1)).is_empty());
        // Dropping a field without default breaks forward compatibility with v1.
        assert!(!check(Level::Forward, &v3_dropped, std::slice::from_ref(&v1)).is_empty());
        // Transitive levels look further back than the latest.
        let history = [v1.clone(), v2_default.clone()];
        assert!(check(Level::Backward, &v3_dropped, &history).is_empty());
        assert!(!check(Level::FullTransitive, &v3_dropped, &history).is_empty());
        assert!(check(Level::Backward, &v1, &[]).is_empty());
    }

    #[test]
    fn names_round_trip() {
        for n in [
            "NONE",
            "BACKWARD",
            "BACKWARD_TRANSITIVE",
            "FORWARD",
            "FORWARD_TRANSITIVE",
            "FULL",
            "FULL_TRANSITIVE",
        ] {
            assert_eq!(Level::parse(n).unwrap().as_str(), n);
        }
        assert_eq!(Level::parse("backward"), None);
    }
}
