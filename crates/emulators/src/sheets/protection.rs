//! Protected ranges (`addProtectedRange`, `deleteProtectedRange`): a range of a sheet, or a
//! whole sheet, that only its editors and the spreadsheet's owner may change. Google refuses
//! a write by anyone else to a protected cell with 400 and "You are trying to edit a protected
//! cell or object. Please contact the spreadsheet owner to remove protection if you need to
//! edit."; the requesting user is always one of the editors of a range it protects. A
//! `warningOnly` range only warns in the Sheets UI: API writes go through.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::grid::GridRange;
use super::model::{GoogleError, Spreadsheet};
use super::oauth::Principal;

type Result<T> = std::result::Result<T, GoogleError>;

/// Google's answer to a write into a protected cell.
pub fn refused() -> GoogleError {
    GoogleError::invalid(
        "You are trying to edit a protected cell or object. Please contact the spreadsheet owner to remove protection if you need to edit.",
    )
}

/// A protected range.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProtectedRange {
    /// `protectedRangeId`.
    pub id: i64,
    /// The cells protected (a range with only `sheetId` protects the whole sheet).
    pub range: GridRange,
    /// Description.
    pub description: String,
    /// Warn only, do not refuse.
    pub warning_only: bool,
    /// E-mails of the users allowed to edit.
    pub editors: Vec<String>,
}

impl ProtectedRange {
    /// The `ProtectedRange` resource.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "protectedRangeId": self.id,
            "range": self.range.to_json(),
            "warningOnly": self.warning_only,
            "requestingUserCanEdit": true,
        });
        if !self.description.is_empty() {
            v["description"] = json!(self.description);
        }
        if !self.warning_only {
            v["editors"] = json!({"users": self.editors});
        }
        v
    }
}

impl Spreadsheet {
    /// Whether `who` is kept from changing the cell (row, col) of sheet `sheet_id`.
    pub fn protected_against(&self, who: &Principal, sheet_id: i64, row: u32, col: u32) -> bool {
        if self.owner.as_deref() == Some(who.email.as_str()) {
            return false;
        }
        self.protected.iter().any(|p| {
            !p.warning_only
                && p.range.sheet_id == sheet_id
                && p.range.contains(row, col)
                && !p.editors.contains(&who.email)
        })
    }

    /// Refuses when `who` may not change some cell of rows `rows` x columns `cols` of the
    /// sheet `sheet_id` (sorting, deleting or moving them).
    pub(crate) fn check_unprotected(
        &self,
        who: &Principal,
        sheet_id: i64,
        rows: (u32, u32),
        cols: (u32, u32),
    ) -> Result<()> {
        if self.owner.as_deref() == Some(who.email.as_str()) {
            return Ok(());
        }
        let blocked = self.protected.iter().any(|p| {
            !p.warning_only
                && p.range.sheet_id == sheet_id
                && p.range.intersects(rows, cols)
                && !p.editors.contains(&who.email)
        });
        if blocked { Err(refused()) } else { Ok(()) }
    }

    /// `addProtectedRange`.
    pub(crate) fn add_protected_range(&mut self, body: &Value, who: &Principal) -> Result<Value> {
        let p = &body["protectedRange"];
        let range = GridRange::parse(&p["range"])?;
        self.sheet_pos(range.sheet_id)?;
        if p.get("namedRangeId").is_some() {
            return Err(GoogleError::invalid(
                "namedRangeId is not supported by the emulator: give a range",
            ));
        }
        let warning_only = p["warningOnly"].as_bool().unwrap_or(false);
        let mut editors: Vec<String> = p["editors"]["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if warning_only && !editors.is_empty() {
            return Err(GoogleError::invalid(
                "Editors are not supported with warningOnly protection.",
            ));
        }
        if !editors.contains(&who.email) {
            editors.push(who.email.clone());
        }
        let id = match p["protectedRangeId"].as_i64() {
            Some(id) if self.protected.iter().any(|x| x.id == id) => {
                return Err(GoogleError::invalid(format!(
                    "A protected range with ID {id} already exists."
                )));
            }
            Some(id) => id,
            None => self.next_object(),
        };
        let added = ProtectedRange {
            id,
            range,
            description: p["description"].as_str().unwrap_or_default().to_string(),
            warning_only,
            editors: if warning_only { Vec::new() } else { editors },
        };
        let reply = json!({"addProtectedRange": {"protectedRange": added.to_json()}});
        self.protected.push(added);
        Ok(reply)
    }

    /// `deleteProtectedRange`.
    pub(crate) fn delete_protected_range(&mut self, body: &Value) -> Result<Value> {
        let id = body["protectedRangeId"].as_i64().unwrap_or(0);
        let before = self.protected.len();
        self.protected.retain(|p| p.id != id);
        if self.protected.len() == before {
            return Err(GoogleError::invalid(format!(
                "No protected range with id: {id}"
            )));
        }
        Ok(json!({}))
    }

    /// A fresh id for a protected range or developer metadata: positive, unused.
    pub(crate) fn next_object(&mut self) -> i64 {
        loop {
            self.next_object_id += 1;
            let id = self
                .next_object_id
                .wrapping_mul(7919)
                .rem_euclid(2_000_000_000)
                + 1;
            if !self.protected.iter().any(|p| p.id == id)
                && !self.metadata.iter().any(|m| m.id == id)
            {
                return id;
            }
        }
    }
}
