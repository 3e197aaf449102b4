//! Spare read buffers, kept per thread. A proxied request needs two read buffers (the
//! client's and the machine's); allocating and freeing them per request made the allocator
//! hand memory back to the kernel and fault it in again. Buffers are taken here when bytes
//! arrive and given back when the request ends or the connection goes idle, so an idle
//! connection still holds none.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Room a fresh buffer has.
pub(crate) const SIZE: usize = 8 * 1024;
/// Buffers kept per thread; more are freed.
const KEEP: usize = 64;
/// Buffers grown beyond this (while a body streamed) are freed rather than kept.
const KEEP_LARGEST: usize = 16 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer that goes back to the thread's spares when dropped.
#[derive(Default)]
pub(crate) struct Buf(Vec<u8>);

impl Buf {
    /// An empty buffer with room for at least [`SIZE`] bytes.
    pub(crate) fn take() -> Buf {
        let spare = SPARE.with_borrow_mut(Vec::pop);
        Buf(spare.unwrap_or_else(|| Vec::with_capacity(SIZE)))
    }

    /// Makes sure the buffer has room, taking a spare when it has none (after [`Buf::release`]).
    pub(crate) fn ensure(&mut self) {
        if self.0.capacity() == 0 {
            *self = Buf::take();
        }
    }

    /// Gives the memory back, leaving an empty buffer without room.
    pub(crate) fn release(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

fn give(mut buf: Vec<u8>) {
    if buf.capacity() < SIZE || buf.capacity() > KEEP_LARGEST {
        return;
    }
    buf.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEEP {
            spare.push(buf);
        }
    });
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.release();
    }
}

impl Deref for Buf {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_large_ones_freed() {
        let mut a = Buf::take();
        a.extend_from_slice(b"hello");
        let ptr = a.as_ptr();
        drop(a);
        let b = Buf::take();
        assert_eq!(b.as_ptr(), ptr, "the spare was reused");
        assert!(b.is_empty(), "spares come back empty");
        let spares = || SPARE.with_borrow(Vec::len);
        let before = spares();
        let mut big = Buf::take();
        big.reserve(64 * 1024);
        drop(big);
        assert_eq!(spares(), before, "a grown buffer is freed, not kept");
        let mut released = Buf::take();
        released.release();
        assert_eq!(released.capacity(), 0);
        released.ensure();
        assert!(released.capacity() >= SIZE);
    }
}
