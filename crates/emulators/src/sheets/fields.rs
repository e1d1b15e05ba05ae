//! Partial responses: the `fields` query parameter of Google APIs ("System parameters",
//! `fields`). A comma-separated list of paths, each of names joined by `/` (or `.`, which
//! the Sheets documentation uses: `sheets.properties`), with `a(b,c)` selecting several
//! fields under `a` and `*` every field. Lists are masked element by element.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::model::GoogleError;

/// A parsed mask: the fields kept at one level, each with what is kept under it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mask(BTreeMap<String, Mask>);

impl Mask {
    /// Parses a `fields` value.
    pub fn parse(text: &str) -> Result<Self, GoogleError> {
        let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut at = 0;
        let mask = parse_list(&chars, &mut at)?;
        if at != chars.len() || mask.0.is_empty() {
            return Err(invalid(text));
        }
        Ok(mask)
    }

    /// Whether the mask names `field` at the top level (or `*`).
    pub fn names(&self, field: &str) -> bool {
        self.0.contains_key(field) || self.0.contains_key("*")
    }

    /// Whether some path of the mask contains the name `field` at any depth.
    pub fn mentions(&self, field: &str) -> bool {
        self.0.iter().any(|(k, m)| k == field || m.mentions(field))
    }

    /// `v` with only what the mask keeps.
    pub fn apply(&self, v: &Value) -> Value {
        let star_only = self.0.len() == 1 && self.0.get("*").is_some_and(|m| m.0.is_empty());
        if self.0.is_empty() || star_only {
            return v.clone();
        }
        match v {
            Value::Array(items) => Value::Array(items.iter().map(|i| self.apply(i)).collect()),
            Value::Object(o) => {
                let mut out = Map::new();
                for (k, sub) in &self.0 {
                    if k == "*" {
                        for (name, x) in o {
                            out.entry(name.clone()).or_insert_with(|| sub.apply(x));
                        }
                    } else if let Some(x) = o.get(k) {
                        out.insert(k.clone(), sub.apply(x));
                    }
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }

    /// Adds the paths of `other`; a field kept whole stays whole.
    fn merge(&mut self, other: Mask) {
        for (k, m) in other.0 {
            match self.0.get_mut(&k) {
                None => {
                    self.0.insert(k, m);
                }
                Some(slot) if slot.0.is_empty() || m.0.is_empty() => *slot = Mask::default(),
                Some(slot) => slot.merge(m),
            }
        }
    }
}

fn invalid(text: &str) -> GoogleError {
    GoogleError::invalid(format!("Invalid field selection {text}"))
}

fn name(chars: &[char], at: &mut usize) -> Option<String> {
    let start = *at;
    while *at < chars.len()
        && (chars[*at].is_ascii_alphanumeric() || chars[*at] == '_' || chars[*at] == '*')
    {
        *at += 1;
    }
    (*at > start).then(|| chars[start..*at].iter().collect())
}

/// list := path ("," path)*; path := name (("/" | ".") name)* ["(" list ")"].
fn parse_list(chars: &[char], at: &mut usize) -> Result<Mask, GoogleError> {
    let text: String = chars.iter().collect();
    let mut mask = Mask::default();
    loop {
        let mut names = vec![name(chars, at).ok_or_else(|| invalid(&text))?];
        while *at < chars.len() && (chars[*at] == '/' || chars[*at] == '.') {
            *at += 1;
            names.push(name(chars, at).ok_or_else(|| invalid(&text))?);
        }
        let mut leaf = Mask::default();
        if *at < chars.len() && chars[*at] == '(' {
            *at += 1;
            leaf = parse_list(chars, at)?;
            if *at >= chars.len() || chars[*at] != ')' {
                return Err(invalid(&text));
            }
            *at += 1;
        }
        let mut path = leaf;
        for n in names.into_iter().rev() {
            let mut up = Mask::default();
            up.0.insert(n, path);
            path = up;
        }
        mask.merge(path);
        if *at < chars.len() && chars[*at] == ',' {
            *at += 1;
            continue;
        }
        return Ok(mask);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn masks_keep_only_what_they_name() {
        let v = json!({
            "spreadsheetId": "x",
            "properties": {"title": "T", "locale": "en_US"},
            "sheets": [
                {"properties": {"sheetId": 0, "title": "A", "index": 0, "gridProperties": {"rowCount": 5, "columnCount": 2}}, "protectedRanges": []},
                {"properties": {"sheetId": 7, "title": "B", "index": 1, "gridProperties": {"rowCount": 1, "columnCount": 1}}}
            ]
        });
        let m = |t: &str| Mask::parse(t).unwrap().apply(&v);
        assert_eq!(
            m("sheets.properties"),
            json!({"sheets": [{"properties": v["sheets"][0]["properties"]}, {"properties": v["sheets"][1]["properties"]}]})
        );
        assert_eq!(
            m("sheets(properties(sheetId,title,gridProperties))"),
            json!({"sheets": [
                {"properties": {"sheetId": 0, "title": "A", "gridProperties": {"rowCount": 5, "columnCount": 2}}},
                {"properties": {"sheetId": 7, "title": "B", "gridProperties": {"rowCount": 1, "columnCount": 1}}}
            ]})
        );
        assert_eq!(
            m("spreadsheetId,sheets/properties/title"),
            json!({"spreadsheetId": "x", "sheets": [{"properties": {"title": "A"}}, {"properties": {"title": "B"}}]})
        );
        assert_eq!(
            m("sheets.properties.sheetId,sheets.properties.title"),
            json!({"sheets": [{"properties": {"sheetId": 0, "title": "A"}}, {"properties": {"sheetId": 7, "title": "B"}}]})
        );
        assert_eq!(m("*"), v);
        assert_eq!(
            m("sheets,sheets.properties.title")["sheets"],
            v["sheets"],
            "whole stays whole"
        );
        assert_eq!(m("properties(*)"), json!({"properties": v["properties"]}));
        for bad in ["", "sheets(", "sheets()", "a,,b", "a)"] {
            assert!(Mask::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Mask::parse("sheets(data(rowData))")
                .unwrap()
                .mentions("data")
        );
    }
}
