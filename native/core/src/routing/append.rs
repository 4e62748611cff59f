//! A slice shared between successive snapshots that grows at its end.
//!
//! A snapshot's dense arrays (the hot cells, the live slots, a capability's
//! slots) mostly change by growing: registrations take new slots at the end.
//! An [`AppendVec`] is a view of the first `len` elements of a buffer with
//! room to spare; the newest view appends in place, past what every older
//! view sees, so a registration writes its own entries instead of copying
//! the whole array (10 000 hot cells, 80 KB). A view that is not the newest,
//! or a full buffer, copies into a new buffer of twice the length.
//!
//! Soundness: elements are written once, by the table's single writer (it
//! holds the writer lock), before the snapshot that sees them is published
//! (`ArcSwap`'s store and load order the writes before any read); readers
//! only read within their view's length, which no later write touches.

use std::cell::UnsafeCell;
use std::fmt;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Buf<T> {
    data: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// Elements written: the length of the longest view. Only a view of
    /// exactly this length appends in place.
    written: AtomicUsize,
}

// SAFETY: shared access only reads elements written before the view that
// reads them was published (see the module doc); `T` itself is shared.
unsafe impl<T: Send + Sync> Sync for Buf<T> {}
unsafe impl<T: Send + Sync> Send for Buf<T> {}

impl<T> Buf<T> {
    fn with_capacity(cap: usize) -> Arc<Buf<T>> {
        // elements are never dropped: only types without drop glue
        const { assert!(!std::mem::needs_drop::<T>()) };
        Arc::new(Buf {
            data: (0..cap)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
            written: AtomicUsize::new(0),
        })
    }

    /// # Safety
    /// `i` is past every published view, and only the table's writer writes.
    unsafe fn write(&self, i: usize, value: T) {
        // SAFETY: no view reads index `i` yet (the caller's contract).
        unsafe { (*self.data[i].get()).write(value) };
    }
}

/// The first `len` elements of a shared buffer.
pub struct AppendVec<T> {
    buf: Arc<Buf<T>>,
    len: usize,
}

impl<T> AppendVec<T> {
    pub fn new() -> Self {
        AppendVec {
            buf: Buf::with_capacity(0),
            len: 0,
        }
    }

    /// A view of `items`, in a buffer of exactly their number.
    pub fn from_iter_exact(items: impl ExactSizeIterator<Item = T>) -> Self {
        Self::from_iter_with_room(items, 0)
    }

    /// A view of `items`, in a buffer with room for `room` more.
    pub fn from_iter_with_room(items: impl ExactSizeIterator<Item = T>, room: usize) -> Self {
        let n = items.len();
        let buf = Buf::with_capacity(n + room);
        let mut len = 0;
        for (i, item) in items.take(n).enumerate() {
            // SAFETY: a new buffer, no view of it yet.
            unsafe { buf.write(i, item) };
            len = i + 1;
        }
        buf.written.store(len, Ordering::Release);
        AppendVec { buf, len }
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the first `len` elements were written before this view
        // existed, and are never written again.
        unsafe { std::slice::from_raw_parts(self.buf.data.as_ptr().cast::<T>(), self.len) }
    }

    /// Elements the buffer has room for (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.data.len()
    }

    /// This view followed by `items`: written in place when this is the
    /// newest view of its buffer and there is room, else into a new buffer
    /// of twice the length, this view's elements copied with `dup`.
    ///
    /// `items.len()` is only a hint: an iterator may yield fewer items than
    /// it claimed (a safe `ExactSizeIterator` can lie), and the view returned
    /// covers exactly the items written, never a slot left unwritten. Items
    /// past the claimed length are not taken.
    pub fn extended(&self, items: impl ExactSizeIterator<Item = T>, dup: impl Fn(&T) -> T) -> Self {
        let k = items.len();
        let end = self.len.saturating_add(k);
        if end <= self.buf.data.len()
            && self
                .buf
                .written
                .compare_exchange(self.len, end, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let mut n = 0;
            for item in items.take(k) {
                // SAFETY: `self.len + n < end`, past every view of this
                // buffer (we claimed `len..end` above, so no other call
                // writes there), and no view reads it before we publish one.
                unsafe { self.buf.write(self.len + n, item) };
                n += 1;
            }
            // Slots `len + n..end` stay claimed and unwritten when the
            // iterator yielded less: no view covers them (this one stops at
            // `len + n`, and a later in-place append from it fails the
            // exchange, since `written` is `end`, and copies instead).
            return AppendVec {
                buf: Arc::clone(&self.buf),
                len: self.len + n,
            };
        }
        let buf = Buf::with_capacity(end.saturating_mul(2).max(16));
        for (i, x) in self.as_slice().iter().enumerate() {
            // SAFETY: a new buffer, no view of it yet.
            unsafe { buf.write(i, dup(x)) };
        }
        let mut n = 0;
        for item in items.take(k) {
            // SAFETY: as above; `self.len + n < end <= capacity`.
            unsafe { buf.write(self.len + n, item) };
            n += 1;
        }
        let len = self.len + n;
        buf.written.store(len, Ordering::Release);
        AppendVec { buf, len }
    }
}

impl<T> Default for AppendVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for AppendVec<T> {
    fn clone(&self) -> Self {
        AppendVec {
            buf: Arc::clone(&self.buf),
            len: self.len,
        }
    }
}

impl<T> std::ops::Deref for AppendVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: fmt::Debug> fmt::Debug for AppendVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keep_their_prefix_while_the_newest_grows_in_place() {
        let a = AppendVec::from_iter_exact([1u32, 2, 3].into_iter());
        // full: a new buffer with room
        let b = a.extended([4].into_iter(), |x| *x);
        let c = b.extended([5, 6].into_iter(), |x| *x);
        assert!(Arc::ptr_eq(&b.buf, &c.buf), "appended in place");
        assert_eq!(&*a, &[1, 2, 3]);
        assert_eq!(&*b, &[1, 2, 3, 4]);
        assert_eq!(&*c, &[1, 2, 3, 4, 5, 6]);
        // an older view cannot write over the newer one's elements: it copies
        let d = b.extended([7].into_iter(), |x| *x);
        assert!(!Arc::ptr_eq(&b.buf, &d.buf));
        assert_eq!(&*d, &[1, 2, 3, 4, 7]);
        assert_eq!(&*c, &[1, 2, 3, 4, 5, 6]);
        let e: AppendVec<u32> = AppendVec::new();
        assert!(e.is_empty());
        assert_eq!(&*e.extended(std::iter::empty(), |x| *x), &[] as &[u32]);
    }

    /// An iterator that claims more items than it yields (safe code may lie
    /// in `ExactSizeIterator::len`).
    struct Liar<I> {
        inner: I,
        claims: usize,
    }

    impl<I: Iterator> Iterator for Liar<I> {
        type Item = I::Item;
        fn next(&mut self) -> Option<I::Item> {
            self.inner.next()
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.claims, Some(self.claims))
        }
    }

    impl<I: Iterator> ExactSizeIterator for Liar<I> {}

    #[test]
    fn an_iterator_that_yields_less_than_it_claims_gives_a_view_of_what_it_wrote() {
        let liar = |items: Vec<u64>, claims| Liar {
            inner: items.into_iter(),
            claims,
        };
        // copying into a new buffer: claims 5, yields 1
        let a = AppendVec::from_iter_exact([1u64, 2].into_iter());
        let b = a.extended(liar(vec![3], 5), |x| *x);
        assert_eq!(&*b, &[1, 2, 3]);
        // in place (b's buffer has room): claims 5, yields 1
        let c = b.extended(liar(vec![4], 5), |x| *x);
        assert!(Arc::ptr_eq(&b.buf, &c.buf), "appended in place");
        assert_eq!(&*c, &[1, 2, 3, 4]);
        // the claimed, unwritten slots are never covered: the next append
        // from c copies rather than handing out a view over them
        let d = c.extended([5].into_iter(), |x| *x);
        assert!(!Arc::ptr_eq(&c.buf, &d.buf));
        assert_eq!(&*d, &[1, 2, 3, 4, 5]);
        // claims 0, yields 3: nothing is taken
        let e = d.extended(liar(vec![9, 9, 9], 0), |x| *x);
        assert_eq!(&*e, &[1, 2, 3, 4, 5]);
        // claims 1, yields 0: an empty extension
        let f = e.extended(liar(vec![], 1), |x| *x);
        assert_eq!(&*f, &[1, 2, 3, 4, 5]);
        assert_eq!(&*AppendVec::from_iter_exact(liar(vec![7], 4)), &[7]);
    }

    #[test]
    fn readers_on_other_threads_see_their_views_whole() {
        let mut v = AppendVec::from_iter_exact(std::iter::empty::<u64>());
        let mut views = Vec::new();
        for i in 0..2000u64 {
            v = v.extended([i].into_iter(), |x| *x);
            views.push(v.clone());
        }
        std::thread::scope(|s| {
            for t in 0..4 {
                let views = &views;
                s.spawn(move || {
                    for (n, view) in views.iter().enumerate().skip(t) {
                        assert_eq!(view.len(), n + 1);
                        assert!(view.iter().copied().eq(0..=n as u64));
                    }
                });
            }
        });
    }
}
