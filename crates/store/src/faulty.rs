//! A wrapper that makes any [`Backend`] fail on purpose, for testing the code above the store.
//!
//! Writes (create, update, delete) can fail before they reach the backend (nothing written) or
//! after it applied them (written, but the caller sees an error, as with a lost reply). Reads and
//! watches can be made to fail too. Failures are injected as [`Error::Backend`] with
//! [`InjectedFault`], so tests can tell them from real ones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{Backend, Error, KeyValue, ListPage, Result, Revision, WatchStream};

/// The error put inside [`Error::Backend`] by [`Faulty`].
#[derive(Debug, thiserror::Error)]
pub enum InjectedFault {
    /// The write was refused before reaching the backend.
    #[error("injected fault: write not applied")]
    BeforeWrite,
    /// The write was applied by the backend, then reported as failed.
    #[error("injected fault: write applied, reply lost")]
    AfterWrite,
    /// A read or a watch was refused.
    #[error("injected fault: read refused")]
    Read,
}

/// Wraps a backend and injects failures. All settings can be changed while it is in use.
pub struct Faulty<B> {
    inner: B,
    /// Fail every Nth write before applying it (0 = never).
    fail_before_every: AtomicU64,
    /// Fail every Nth write after applying it (0 = never).
    fail_after_every: AtomicU64,
    fail_reads: AtomicBool,
    writes: AtomicU64,
}

impl<B: Backend> Faulty<B> {
    /// Wraps `inner` with no failures configured.
    pub fn new(inner: B) -> Self {
        Faulty {
            inner,
            fail_before_every: AtomicU64::new(0),
            fail_after_every: AtomicU64::new(0),
            fail_reads: AtomicBool::new(false),
            writes: AtomicU64::new(0),
        }
    }

    /// Makes every `n`th write (counting all writes, from now) fail without being applied;
    /// 0 turns this off, 1 fails all writes.
    pub fn fail_writes_every(&self, n: u64) {
        self.writes.store(0, Ordering::SeqCst);
        self.fail_before_every.store(n, Ordering::SeqCst);
    }

    /// Makes every `n`th write (counting all writes, from now) be applied and then reported as
    /// failed; 0 turns this off.
    pub fn fail_after_write_every(&self, n: u64) {
        self.writes.store(0, Ordering::SeqCst);
        self.fail_after_every.store(n, Ordering::SeqCst);
    }

    /// Makes every read and new watch fail (true) or work (false).
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn read_check(&self) -> Result<()> {
        if self.fail_reads.load(Ordering::SeqCst) {
            Err(Error::Backend(Box::new(InjectedFault::Read)))
        } else {
            Ok(())
        }
    }

    /// Counts a write; Err if it must fail before, Ok(true) if it must fail after.
    fn write_check(&self) -> Result<bool> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let before = self.fail_before_every.load(Ordering::SeqCst);
        if before > 0 && n.is_multiple_of(before) {
            return Err(Error::Backend(Box::new(InjectedFault::BeforeWrite)));
        }
        let after = self.fail_after_every.load(Ordering::SeqCst);
        Ok(after > 0 && n.is_multiple_of(after))
    }

    async fn write<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        let fail_after = self.write_check()?;
        let out = f.await?;
        if fail_after {
            return Err(Error::Backend(Box::new(InjectedFault::AfterWrite)));
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl<B: Backend> Backend for Faulty<B> {
    async fn current_revision(&self) -> Result<Revision> {
        self.read_check()?;
        self.inner.current_revision().await
    }

    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Revision, Option<KeyValue>)> {
        self.read_check()?;
        self.inner.get(key, revision).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListPage> {
        self.read_check()?;
        self.inner.list(prefix, start_after, limit, revision).await
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        self.read_check()?;
        self.inner.count(prefix).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        self.write(self.inner.create(key, value)).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        self.write(self.inner.update(key, value, expected)).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        self.write(self.inner.delete(key, expected)).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.read_check()?;
        self.inner.watch(prefix, after).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::memory::Memory;

    #[tokio::test]
    async fn fails_before_and_after_writes() {
        let f = Faulty::new(Memory::new());
        f.fail_writes_every(2);
        f.create("a", vec![]).await.unwrap();
        let e = f.create("b", vec![]).await.unwrap_err();
        assert!(e.to_string().contains("storage backend failed"));
        assert_eq!(
            f.get("b", None).await.unwrap().1,
            None,
            "refused write not applied"
        );
        f.create("c", vec![]).await.unwrap();

        f.fail_writes_every(0);
        f.fail_after_write_every(1);
        assert!(f.create("d", vec![]).await.is_err());
        assert!(
            f.get("d", None).await.unwrap().1.is_some(),
            "write applied despite error"
        );

        f.fail_after_write_every(0);
        f.fail_reads(true);
        assert!(f.get("d", None).await.is_err());
        assert!(f.watch("", 0).await.is_err());
        f.fail_reads(false);
        assert_eq!(f.count("").await.unwrap(), 3);
    }
}
