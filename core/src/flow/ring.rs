//! The node's ring of recent flows. Every flow gets a sequence number; a reader (a `GetFlows`
//! follower, the metrics, the relay) keeps the next number it wants, and when the writer has
//! overwritten flows the reader never saw, the read says how many (`lost`): loss is reported to
//! each reader, never silent. Pure: the agent owns one behind a lock and wakes followers.

use std::collections::VecDeque;

use super::Flow;
use super::filter::FilterSet;

/// Hubble's default capacity.
pub const DEFAULT_CAPACITY: usize = 4095;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Query {
    /// The last N matching flows (oldest first), or with `first` the earliest N.
    pub number: Option<u64>,
    pub first: bool,
    /// Wall-clock bounds, nanoseconds since the epoch, inclusive.
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("since ({since_ns} ns) is after until ({until_ns} ns); accepted: since <= until")]
    SinceAfterUntil { since_ns: u64, until_ns: u64 },
}

impl Query {
    pub fn validate(&self) -> Result<(), QueryError> {
        match (self.since_ns, self.until_ns) {
            (Some(s), Some(u)) if s > u => Err(QueryError::SinceAfterUntil { since_ns: s, until_ns: u }),
            _ => Ok(()),
        }
    }

    fn in_range(&self, f: &Flow) -> bool {
        self.since_ns.is_none_or(|s| f.time_ns >= s) && self.until_ns.is_none_or(|u| f.time_ns <= u)
    }
}

/// What a follower read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Read {
    /// Matching flows, oldest first.
    pub flows: Vec<Flow>,
    /// Flows overwritten before this reader got to them (matching or not: unknown).
    pub lost: u64,
    /// The cursor for the next read.
    pub next: u64,
}

#[derive(Debug, Clone)]
pub struct FlowRing {
    capacity: usize,
    buf: VecDeque<Flow>,
    /// Sequence number of `buf[0]`.
    first_seq: u64,
    overwritten: u64,
}

impl FlowRing {
    /// `capacity` of at least 1 (the config validates the setting).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        FlowRing { capacity, buf: VecDeque::with_capacity(capacity), first_seq: 0, overwritten: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Flows ever pushed (Hubble's `seen_flows`).
    pub fn seen(&self) -> u64 {
        self.first_seq + self.buf.len() as u64
    }

    /// Flows pushed out by newer ones.
    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    /// The cursor a follower starts from to see only flows pushed from now on.
    pub fn tail(&self) -> u64 {
        self.seen()
    }

    pub fn push(&mut self, f: Flow) {
        if self.buf.len() == self.capacity {
            self.buf.pop_front();
            self.first_seq += 1;
            self.overwritten += 1;
        }
        self.buf.push_back(f);
    }

    /// The flows a non-following request gets, oldest first.
    pub fn query(&self, q: &Query, filters: &FilterSet) -> Vec<Flow> {
        let matching = self.buf.iter().filter(|f| q.in_range(f) && filters.admits(f));
        match (q.number, q.first) {
            (Some(n), true) => matching.take(n as usize).cloned().collect(),
            (Some(n), false) => {
                let mut last: Vec<Flow> = self
                    .buf
                    .iter()
                    .rev()
                    .filter(|f| q.in_range(f) && filters.admits(f))
                    .take(n as usize)
                    .cloned()
                    .collect();
                last.reverse();
                last
            }
            (None, _) => matching.cloned().collect(),
        }
    }

    /// A follower's read from `cursor`: what is new since, and what it lost.
    pub fn read_from(&self, cursor: u64, filters: &FilterSet, q: &Query) -> Read {
        let lost = self.first_seq.saturating_sub(cursor);
        let start = cursor.max(self.first_seq);
        let skip = (start - self.first_seq) as usize;
        let flows = self.buf.iter().skip(skip).filter(|f| q.in_range(f) && filters.admits(f)).cloned().collect();
        Read { flows, lost, next: self.seen() }
    }
}
