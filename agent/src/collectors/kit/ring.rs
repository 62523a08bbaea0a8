//! One ring-buffer consumer for every collector that streams events.
//!
//! It waits for the kernel's wake-up (and, when asked, polls on an interval:
//! a producer that wakes us only per so many bytes leaves events waiting),
//! decodes each record as the collector's `Pod` event type (short records
//! are logged and skipped), and hands each batch to the collector in one
//! call, so a collector can take its locks once per batch. It also serves
//! drain-now requests: the caller is answered once the batch that was
//! queued when it asked has been applied.

use std::{marker::PhantomData, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::decode;
use crate::ebpf;

/// The records queued in the ring buffer, decoded.
pub struct Events<'a, T> {
    rb: &'a mut RingBuf<MapData>,
    collector: &'static str,
    _event: PhantomData<T>,
}

impl<T: aya::Pod> Iterator for Events<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            let item = self.rb.next()?;
            match decode::<T>(&item) {
                Some(ev) => return Some(ev),
                None => tracing::debug!(
                    collector = self.collector,
                    len = item.len(),
                    "short ring buffer record"
                ),
            }
        }
    }
}

/// A ring buffer of `T` records.
pub struct Ring<T> {
    fd: AsyncFd<RingBuf<MapData>>,
    collector: &'static str,
    poll: Option<Duration>,
    _event: PhantomData<T>,
}

impl<T: aya::Pod> Ring<T> {
    /// Registers the ring buffer with the runtime (so a failure is a
    /// start-up error, not a silent worker).
    pub fn new(collector: &'static str, rb: RingBuf<MapData>) -> std::io::Result<Self> {
        Ok(Self {
            fd: ebpf::async_fd(rb)?,
            collector,
            poll: None,
            _event: PhantomData,
        })
    }

    /// Also drain every `every`, for producers that do not wake us for each
    /// record.
    pub fn poll_every(self, every: Duration) -> Self {
        Self {
            poll: Some(every),
            ..self
        }
    }

    /// Hands every batch to `apply` until the ring buffer fails (the
    /// collector's token ends the task: run it with `Base::spawn`).
    pub async fn run(self, apply: impl FnMut(&mut Events<'_, T>) + Send) {
        let (_, never) = mpsc::channel::<()>(1);
        self.run_with_requests(never, |()| {}, apply).await;
    }

    /// Like [`Ring::run`], also draining on each request from `requests`,
    /// then passing it to `done`.
    pub async fn run_with_requests<R: Send>(
        self,
        mut requests: mpsc::Receiver<R>,
        done: impl Fn(R) + Send,
        mut apply: impl FnMut(&mut Events<'_, T>) + Send,
    ) {
        let collector = self.collector;
        let mut fd = self.fd;
        let mut tick = tokio::time::interval(self.poll.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let polling = self.poll.is_some();
        let mut requests_open = true;
        loop {
            tokio::select! {
                r = requests.recv(), if requests_open => match r {
                    Some(r) => {
                        apply(&mut events(fd.get_mut(), collector));
                        done(r);
                    }
                    None => requests_open = false,
                },
                _ = tick.tick(), if polling => apply(&mut events(fd.get_mut(), collector)),
                g = fd.readable_mut() => match g {
                    Ok(mut guard) => {
                        apply(&mut events(guard.get_inner_mut(), collector));
                        guard.clear_ready();
                    }
                    Err(e) => {
                        tracing::error!(collector, "ring buffer poll failed: {e}");
                        return;
                    }
                },
            }
        }
    }
}

fn events<'a, T>(rb: &'a mut RingBuf<MapData>, collector: &'static str) -> Events<'a, T> {
    Events {
        rb,
        collector,
        _event: PhantomData,
    }
}
