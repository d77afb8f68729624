//! The I/O thread of the tiered KV cache: one thread owns the [`DiskTier`] and serves reads,
//! writes and reservations sent over a channel, so block writes happen behind the computation
//! (write-behind) and prefetch reads overlap it.
//!
//! Invariants:
//! - a request's buffer is owned by the thread from the moment it is sent until its completion
//!   comes back: a read's buffer is unique (`Arc::get_mut` succeeds; a shared buffer is refused
//!   as a misuse, never written), a write's buffer may be shared read-only with the attention
//!   pass (sealed blocks never change);
//! - every `Read` and `Write` produces exactly one [`IoDone`], in no particular order; the
//!   thread drops its handle on a write's buffer *before* sending the completion;
//! - requests are taken in batches of up to [`IO_BATCH`]: writes and reservations in arrival
//!   order, then all reads of the batch in one `read_blocks_each` call (io_uring queue depth).

use super::disk::{AlignedBuf, DiskError, DiskTier, ReadReq};
use super::policy::{BlockId, FrameId};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Requests taken per batch (and the largest read batch).
pub const IO_BATCH: usize = 32;

/// Where a read lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A frame of the arena.
    Frame(FrameId),
    /// A staging buffer outside the arena (the RAM tier had no frame to give).
    Staging(usize),
}

/// A request to the I/O thread.
#[derive(Debug)]
pub enum IoReq {
    /// Read and verify `slot` into `buf` (slot-sized, unique).
    Read {
        /// Where the block goes when done.
        target: Target,
        /// The block.
        id: BlockId,
        /// Its slot.
        slot: u64,
        /// Destination.
        buf: Arc<AlignedBuf>,
        /// A demand read (the pass waits for it) rather than a prefetch.
        demand: bool,
    },
    /// Write the first `payload` bytes of `buf` to `slot`.
    Write {
        /// The frame holding the block (`None`: written from the tail buffer, synchronously).
        frame: Option<FrameId>,
        /// The block.
        id: BlockId,
        /// Its slot.
        slot: u64,
        /// The block's bytes.
        buf: Arc<AlignedBuf>,
        /// Bytes of payload.
        payload: usize,
    },
    /// Reserve room for at least `slots` slots; replies with the capacity.
    Reserve {
        /// Slots wanted.
        slots: u64,
        /// Where the answer goes.
        reply: Sender<Result<u64, DiskError>>,
    },
    /// Make completed writes durable.
    Sync {
        /// Where the answer goes.
        reply: Sender<Result<(), DiskError>>,
    },
}

/// A completion from the I/O thread.
#[derive(Debug)]
pub enum IoDone {
    /// A read finished (verified, or failed with `res`).
    Read {
        /// Where it was going.
        target: Target,
        /// The block.
        id: BlockId,
        /// The buffer, back to its owner.
        buf: Arc<AlignedBuf>,
        /// Verified, or why not.
        res: Result<(), DiskError>,
        /// Whether it was a demand read.
        demand: bool,
        /// Bytes read.
        bytes: u64,
    },
    /// A write finished.
    Write {
        /// The frame of the block.
        frame: Option<FrameId>,
        /// The block.
        id: BlockId,
        /// Durable in the file (not yet fsynced), or why not.
        res: Result<(), DiskError>,
        /// Bytes written.
        bytes: u64,
    },
}

/// Start the I/O thread on `disk`.
pub fn spawn(disk: DiskTier) -> std::io::Result<(Sender<IoReq>, Receiver<IoDone>, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded::<IoReq>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<IoDone>();
    let h = std::thread::Builder::new()
        .name("kvspool-io".into())
        .spawn(move || run(disk, rx, done_tx))?;
    Ok((tx, done_rx, h))
}

struct PendingRead {
    target: Target,
    id: BlockId,
    slot: u64,
    buf: Arc<AlignedBuf>,
    demand: bool,
}

fn run(mut disk: DiskTier, rx: Receiver<IoReq>, done: Sender<IoDone>) {
    let slot_bytes = disk.geometry().slot_bytes();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < IO_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut reads = Vec::new();
        for req in batch {
            match req {
                IoReq::Write {
                    frame,
                    id,
                    slot,
                    buf,
                    payload,
                } => {
                    let res = match buf.get(..payload) {
                        Some(p) => disk.write_block(slot, p),
                        None => Err(DiskError::Contract(format!(
                            "write of {payload} bytes from a buffer of {}",
                            buf.len()
                        ))),
                    };
                    drop(buf);
                    let ok = res.is_ok();
                    let _ = done.send(IoDone::Write {
                        frame,
                        id,
                        res,
                        bytes: if ok { slot_bytes } else { 0 },
                    });
                }
                IoReq::Reserve { slots, reply } => {
                    let _ = reply.send(disk.reserve(slots).map(|_| disk.capacity()));
                }
                IoReq::Sync { reply } => {
                    let _ = reply.send(disk.sync());
                }
                IoReq::Read {
                    target,
                    id,
                    slot,
                    buf,
                    demand,
                } => reads.push(PendingRead {
                    target,
                    id,
                    slot,
                    buf,
                    demand,
                }),
            }
        }
        if reads.is_empty() {
            continue;
        }
        // mmap: let the kernel start reading the prefetched slots while the demand ones run.
        let ahead: Vec<u64> = reads.iter().filter(|r| !r.demand).map(|r| r.slot).collect();
        if !ahead.is_empty() {
            disk.prefetch(&ahead);
        }
        // Only unique buffers are read into; a shared one is a misuse, answered as such.
        let mut results: Vec<Option<Result<(), DiskError>>> = Vec::with_capacity(reads.len());
        {
            let mut reqs: Vec<ReadReq<'_>> = Vec::with_capacity(reads.len());
            let mut idx = Vec::with_capacity(reads.len());
            for (i, r) in reads.iter_mut().enumerate() {
                let slot = r.slot;
                match Arc::get_mut(&mut r.buf) {
                    Some(buf) => {
                        reqs.push(ReadReq { slot, buf });
                        idx.push(i);
                        results.push(None);
                    }
                    None => results.push(Some(Err(DiskError::Contract(format!(
                        "read of slot {slot} into a shared buffer"
                    ))))),
                }
            }
            match disk.read_blocks_each(&mut reqs) {
                Ok(each) => {
                    for (i, res) in idx.into_iter().zip(each) {
                        results[i] = Some(res);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for i in idx {
                        results[i] = Some(Err(DiskError::Contract(msg.clone())));
                    }
                }
            }
        }
        for (r, res) in reads.into_iter().zip(results) {
            let res = res.unwrap_or_else(|| Err(DiskError::Contract("read not run".into())));
            let bytes = if res.is_ok() { slot_bytes } else { 0 };
            let _ = done.send(IoDone::Read {
                target: r.target,
                id: r.id,
                buf: r.buf,
                res,
                demand: r.demand,
                bytes,
            });
        }
    }
}
