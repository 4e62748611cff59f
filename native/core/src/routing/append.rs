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
    pub fn extended(&self, items: impl ExactSizeIterator<Item = T>, dup: impl Fn(&T) -> T) -> Self {
        let k = items.len();
        let end = self.len + k;
        if end <= self.buf.data.len()
            && self
                .buf
                .written
                .compare_exchange(self.len, end, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            for (i, item) in items.take(k).enumerate() {
                // SAFETY: past every view of this buffer (we claimed
                // `len..end`), and the caller is the table's writer.
                unsafe { self.buf.write(self.len + i, item) };
            }
            return AppendVec {
                buf: Arc::clone(&self.buf),
                len: end,
            };
        }
        let buf = Buf::with_capacity((end * 2).max(16));
        for (i, x) in self.as_slice().iter().enumerate() {
            // SAFETY: a new buffer, no view of it yet.
            unsafe { buf.write(i, dup(x)) };
        }
        for (i, item) in items.take(k).enumerate() {
            // SAFETY: as above.
            unsafe { buf.write(self.len + i, item) };
        }
        buf.written.store(end, Ordering::Release);
        AppendVec { buf, len: end }
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
