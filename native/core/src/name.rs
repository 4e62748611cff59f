//! [`Name`]: an immutable byte string shared by reference count behind one
//! thin pointer. An agent's id is one, and every span of its tasks holds a
//! copy of the pointer (8 bytes) rather than of the bytes, or of a fat
//! `Arc<[u8]>` (16 bytes): the correlation store keeps 100 000 of them.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A shared byte string, one word wide. Compares, orders and hashes as its
/// bytes do, so that a map keyed by names is looked up by `&[u8]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(Arc<Vec<u8>>);

impl Name {
    pub fn new(bytes: &[u8]) -> Name {
        Name(Arc::new(bytes.to_vec()))
    }

    /// Bytes on the heap for one name: the count, the vector and the bytes.
    pub fn heap_bytes(&self) -> usize {
        2 * std::mem::size_of::<usize>() + std::mem::size_of::<Vec<u8>>() + self.0.len()
    }
}

impl From<Vec<u8>> for Name {
    fn from(v: Vec<u8>) -> Name {
        Name(Arc::new(v))
    }
}

impl From<&[u8]> for Name {
    fn from(b: &[u8]) -> Name {
        Name::new(b)
    }
}

impl Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Name {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_slice().hash(state)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_name_is_one_word_and_looks_up_by_its_bytes() {
        assert_eq!(std::mem::size_of::<Name>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Option<Name>>(),
            std::mem::size_of::<usize>()
        );
        let mut m = HashMap::new();
        m.insert(Name::new(b"agent-1"), 1);
        assert_eq!(m.get(b"agent-1".as_slice()), Some(&1));
        let a = Name::from(b"b".to_vec());
        let b = a.clone();
        assert_eq!((&*a, a < Name::new(b"c")), (b"b".as_slice(), true));
        assert_eq!(format!("{b:?}"), "\"b\"");
        assert_eq!(a.heap_bytes(), 16 + 24 + 1);
    }
}
