//! Small bounded in-process caches for the submission hot path.
//!
//! Both are safe to be stale: a form definition is only used together with a statement that
//! checks its version, and an API key stays valid for at most the key cache's TTL after it is
//! revoked (documented in the README).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use collect_model::Question;
use uuid::Uuid;

/// What a submission needs to know about a form.
#[derive(Debug)]
pub(crate) struct FormDef {
    pub org_id: Uuid,
    pub version: i32,
    /// Live (not deleted) questions in display order.
    pub questions: Vec<Question>,
}

/// Form definitions by form id, at most `capacity` of them.
#[derive(Clone)]
pub(crate) struct FormCache {
    map: Arc<Mutex<HashMap<Uuid, Arc<FormDef>>>>,
    capacity: usize,
}

impl FormCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Arc::default(),
            capacity,
        }
    }

    pub fn get(&self, form_id: Uuid) -> Option<Arc<FormDef>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&form_id)
            .cloned()
    }

    pub fn put(&self, form_id: Uuid, def: Arc<FormDef>) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.capacity && !map.contains_key(&form_id) {
            map.clear();
        }
        map.insert(form_id, def);
    }

    pub fn invalidate(&self, form_id: Uuid) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&form_id);
    }
}

/// Organization id and the time it was looked up, by API key digest.
type KeyMap = HashMap<[u8; 32], (Uuid, Instant)>;

/// Organization ids by API key digest, each entry trusted for `ttl`.
#[derive(Clone)]
pub(crate) struct KeyCache {
    map: Arc<Mutex<KeyMap>>,
    capacity: usize,
    ttl: Duration,
}

impl KeyCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: Arc::default(),
            capacity,
            ttl,
        }
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Uuid> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(digest)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(org, _)| *org)
    }

    pub fn put(&self, digest: [u8; 32], org: Uuid) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(digest, (org, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_stay_bounded() {
        let forms = FormCache::new(2);
        for i in 0..5u128 {
            forms.put(
                Uuid::from_u128(i),
                Arc::new(FormDef {
                    org_id: Uuid::nil(),
                    version: 1,
                    questions: vec![],
                }),
            );
            assert!(forms.map.lock().unwrap().len() <= 2);
        }
        assert!(forms.get(Uuid::from_u128(4)).is_some());
        forms.invalidate(Uuid::from_u128(4));
        assert!(forms.get(Uuid::from_u128(4)).is_none());

        let keys = KeyCache::new(2, Duration::from_secs(60));
        for i in 0..5u8 {
            keys.put([i; 32], Uuid::from_u128(i.into()));
            assert!(keys.map.lock().unwrap().len() <= 2);
        }
        assert_eq!(keys.get(&[4; 32]), Some(Uuid::from_u128(4)));
        let expired = KeyCache::new(2, Duration::ZERO);
        expired.put([1; 32], Uuid::nil());
        assert_eq!(expired.get(&[1; 32]), None);
    }
}
