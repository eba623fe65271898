//! Pure accounting: latency histograms, per-pair sequence tracking, loss.
//!
//! No I/O and no clock here, so every rule that decides a published number
//! (what counts as lost, duplicated, out of order, which samples are inside the
//! measured window) is unit-tested in isolation.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Significant digits kept by every histogram: 0.1 % relative error.
const SIGFIGS: u8 = 3;

/// A latency histogram in nanoseconds that grows as needed, so an unexpectedly
/// slow broker is recorded rather than clamped.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGFIGS).expect("3 significant figures is a valid histogram precision")
}

/// Records `value`, growing the histogram if needed. (`saturating_record`
/// would clamp to the current top instead of growing.)
pub fn record(h: &mut Histogram<u64>, value: u64) {
    h.record(value)
        .expect("an auto-resizing u64 histogram takes any u64 on 64-bit targets");
}

/// End-to-end latency measured from the *intended* send time: an open-loop
/// publisher that is held up by a stalled broker still stamps the time it
/// should have sent, so the stall shows as latency (no coordinated omission).
pub fn latency_ns(intended_ns: u64, received_ns: u64) -> u64 {
    received_ns.saturating_sub(intended_ns)
}

/// The open-loop schedule: message `k` of a publisher is due at
/// `start + k / rate`, whatever happened to message `k - 1`, rounded up to the
/// timer's grain. Putting the grain into the *intended* time keeps the timer's
/// wake-up granularity out of the measured latency, while the long-run rate
/// and the independence from the broker (what makes it open loop) stay intact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub start_ns: u64,
    pub period_ns: f64,
    pub grain_ns: u64,
}

impl Schedule {
    /// An exact schedule (grain of 1 ns).
    pub fn new(start_ns: u64, rate_per_s: f64) -> Schedule {
        Schedule {
            start_ns,
            period_ns: 1e9 / rate_per_s,
            grain_ns: 1,
        }
    }

    /// The same schedule on a coarser time grid.
    pub fn with_grain(self, grain_ns: u64) -> Schedule {
        Schedule {
            grain_ns: grain_ns.max(1),
            ..self
        }
    }

    /// Intended send time of message `k`.
    pub fn due(&self, k: u64) -> u64 {
        let exact = self.start_ns + (k as f64 * self.period_ns) as u64;
        exact.div_ceil(self.grain_ns) * self.grain_ns
    }
}

/// The measured window `[start, end)` in nanoseconds on the shared clock:
/// warm-up and drain fall outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    pub fn contains(&self, t_ns: u64) -> bool {
        t_ns >= self.start_ns && t_ns < self.end_ns
    }

    pub fn seconds(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

/// Percentiles of one histogram, in milliseconds (µs precision when printed).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Percentiles {
    /// `None` for an empty histogram: "no samples" must not print as 0 ms.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(Percentiles {
            count: h.len(),
            mean: h.mean() / 1e6,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            p99_99: ms(h.value_at_quantile(0.9999)),
            max: ms(h.max()),
        })
    }
}

/// Adds `from` into `into`; both are auto-resizing so this cannot fail on range.
pub fn merge_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from)
        .expect("auto-resizing histograms of equal precision always merge");
}

/// How one message relates to those already seen from the same publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// A sequence number higher than any seen before (gaps are remembered).
    InOrder,
    /// Fills an earlier gap: arrived after a later message.
    OutOfOrder,
    /// Already received once.
    Duplicate,
}

/// The sequence numbers one subscriber has received from one publisher.
///
/// Memory is proportional to the number of *gaps*, not of messages: a correct
/// broker leaves none, and a lossy one costs one map entry per run of losses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// One past the highest sequence number seen.
    next: u64,
    /// Missing ranges below `next`: start -> end (exclusive).
    gaps: BTreeMap<u64, u64>,
    pub distinct: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                self.gaps.insert(self.next, seq);
            }
            self.next = seq + 1;
            self.distinct += 1;
            return Arrival::InOrder;
        }
        if self.fill_gap(seq) {
            self.distinct += 1;
            self.out_of_order += 1;
            Arrival::OutOfOrder
        } else {
            self.duplicates += 1;
            Arrival::Duplicate
        }
    }

    /// Removes `seq` from the gap that holds it, splitting the gap in two.
    fn fill_gap(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.gaps.range(..=seq).next_back() else {
            return false;
        };
        if seq >= end {
            return false;
        }
        self.gaps.remove(&start);
        if start < seq {
            self.gaps.insert(start, seq);
        }
        if seq + 1 < end {
            self.gaps.insert(seq + 1, end);
        }
        true
    }

    /// Messages of `0..sent` never received: gaps plus the missing tail.
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.distinct)
    }
}

/// A subscriber and a publisher whose messages it should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub subscriber: u32,
    pub publisher: u32,
}

/// Which publisher -> subscriber pairs a scenario expects to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Publisher `i` to subscriber `i` only (point-to-point).
    Pairs,
    /// Every publisher to every subscriber (fan-out, fan-in).
    AllToAll,
    /// No messages (connection scenarios).
    None,
}

impl Routing {
    /// Subscribers each published message should reach.
    pub fn fanout(self, subscribers: u32) -> u64 {
        match self {
            Routing::Pairs => 1,
            Routing::AllToAll => u64::from(subscribers),
            Routing::None => 0,
        }
    }

    /// Every expected pair, for loss accounting.
    pub fn pairs(self, publishers: u32, subscribers: u32) -> Vec<PairKey> {
        match self {
            Routing::Pairs => (0..publishers.min(subscribers))
                .map(|i| PairKey {
                    subscriber: i,
                    publisher: i,
                })
                .collect(),
            Routing::AllToAll => (0..subscribers)
                .flat_map(|s| {
                    (0..publishers).map(move |p| PairKey {
                        subscriber: s,
                        publisher: p,
                    })
                })
                .collect(),
            Routing::None => Vec::new(),
        }
    }
}

/// Delivery counts over all expected pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Messages from pairs the routing did not expect (a misrouting broker).
    pub unexpected: u64,
}

/// Loss per expected pair from the publishers' sent counts and the
/// subscribers' trackers; a pair with no tracker received nothing.
pub fn delivery(
    routing: Routing,
    sent: &[u64],
    subscribers: u32,
    trackers: &HashMap<PairKey, SeqTracker>,
) -> Delivery {
    let expected = routing.pairs(sent.len() as u32, subscribers);
    let mut d = Delivery::default();
    for key in &expected {
        let sent = sent[key.publisher as usize];
        match trackers.get(key) {
            Some(t) => d.lost += t.lost(sent),
            None => d.lost += sent,
        }
    }
    for (key, t) in trackers {
        d.duplicated += t.duplicates;
        d.out_of_order += t.out_of_order;
        let known = (key.publisher as usize) < sent.len() && key.subscriber < subscribers;
        if !known || !expected_pair(routing, *key) {
            d.unexpected += t.distinct;
        }
    }
    d
}

fn expected_pair(routing: Routing, key: PairKey) -> bool {
    match routing {
        Routing::Pairs => key.publisher == key.subscriber,
        Routing::AllToAll => true,
        Routing::None => false,
    }
}

/// Everything one worker thread measured; merged across threads at the end.
pub struct ThreadStats {
    pub window: Window,
    /// End-to-end latency of messages intended inside the window.
    pub latency: Histogram<u64>,
    /// Latency since the last progress tick, all messages.
    pub interval: Histogram<u64>,
    /// Connect (TCP + CONNACK) latency.
    pub connect: Histogram<u64>,
    pub trackers: HashMap<PairKey, SeqTracker>,
    /// Messages sent by each publisher (its next sequence number).
    pub published: HashMap<u32, u64>,
    pub sent_in_window: u64,
    pub received_in_window: u64,
    pub connects_in_window: u64,
}

impl ThreadStats {
    pub fn new() -> ThreadStats {
        ThreadStats {
            window: Window::default(),
            latency: new_histogram(),
            interval: new_histogram(),
            connect: new_histogram(),
            trackers: HashMap::new(),
            published: HashMap::new(),
            sent_in_window: 0,
            received_in_window: 0,
            connects_in_window: 0,
        }
    }

    /// One delivered message; latency counts only when intended in the window.
    pub fn on_message(&mut self, key: PairKey, seq: u64, intended_ns: u64, now_ns: u64) -> Arrival {
        let arrival = self.trackers.entry(key).or_default().record(seq);
        let latency = latency_ns(intended_ns, now_ns);
        record(&mut self.interval, latency);
        if arrival != Arrival::Duplicate && self.window.contains(intended_ns) {
            record(&mut self.latency, latency);
            self.received_in_window += 1;
        }
        arrival
    }

    pub fn on_sent(&mut self, intended_ns: u64) {
        if self.window.contains(intended_ns) {
            self.sent_in_window += 1;
        }
    }

    /// A finished connect attempt measured from `since_ns` (intended or actual start).
    pub fn on_connect(&mut self, since_ns: u64, now_ns: u64) {
        record(&mut self.connect, latency_ns(since_ns, now_ns));
        if self.window.contains(now_ns) {
            self.connects_in_window += 1;
        }
    }

    /// Hands over the interval histogram for the progress line.
    pub fn take_interval(&mut self) -> Histogram<u64> {
        std::mem::replace(&mut self.interval, new_histogram())
    }

    /// Sent counts indexed by publisher id, for [`delivery`].
    pub fn sent_by_publisher(&self, publishers: u32) -> Vec<u64> {
        (0..publishers)
            .map(|p| self.published.get(&p).copied().unwrap_or(0))
            .collect()
    }

    /// Adds another thread's stats; every subscriber and publisher lives on
    /// exactly one thread, so trackers and sent counts never overlap.
    pub fn merge(&mut self, other: ThreadStats) {
        merge_histogram(&mut self.latency, &other.latency);
        merge_histogram(&mut self.connect, &other.connect);
        self.trackers.extend(other.trackers);
        self.published.extend(other.published);
        self.sent_in_window += other.sent_in_window;
        self.received_in_window += other.received_in_window;
        self.connects_in_window += other.connects_in_window;
    }
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: u32, p: u32) -> PairKey {
        PairKey {
            subscriber: s,
            publisher: p,
        }
    }

    #[test]
    fn in_order_sequence_has_no_loss() {
        let mut t = SeqTracker::default();
        for seq in 0..100 {
            assert_eq!(t.record(seq), Arrival::InOrder);
        }
        assert_eq!((t.distinct, t.duplicates, t.out_of_order), (100, 0, 0));
        assert_eq!(t.lost(100), 0);
    }

    #[test]
    fn gap_counts_as_lost_and_missing_tail_too() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 4, 5] {
            t.record(seq);
        }
        // 2 and 3 are a gap; 6..8 never arrived.
        assert_eq!(t.lost(8), 4);
    }

    #[test]
    fn late_arrival_fills_gap_and_counts_out_of_order() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 4] {
            t.record(seq);
        }
        assert_eq!(t.record(3), Arrival::OutOfOrder);
        assert_eq!(t.record(2), Arrival::OutOfOrder);
        assert_eq!(t.lost(5), 0);
        assert_eq!(t.out_of_order, 2);
        assert!(t.gaps.is_empty());
    }

    #[test]
    fn late_arrival_in_middle_of_gap_splits_it() {
        let mut t = SeqTracker::default();
        t.record(0);
        t.record(10);
        assert_eq!(t.record(5), Arrival::OutOfOrder);
        assert_eq!(t.gaps.len(), 2);
        assert_eq!(t.record(5), Arrival::Duplicate);
        assert_eq!(t.lost(11), 8);
    }

    #[test]
    fn duplicates_are_counted_not_received_twice() {
        let mut t = SeqTracker::default();
        t.record(0);
        t.record(1);
        assert_eq!(t.record(1), Arrival::Duplicate);
        assert_eq!(t.record(0), Arrival::Duplicate);
        assert_eq!((t.distinct, t.duplicates), (2, 2));
        assert_eq!(t.lost(2), 0);
    }

    #[test]
    fn first_message_missing_is_a_gap() {
        let mut t = SeqTracker::default();
        t.record(2);
        assert_eq!(t.lost(3), 2);
        assert_eq!(t.record(0), Arrival::OutOfOrder);
        assert_eq!(t.lost(3), 1);
    }

    #[test]
    fn delivery_counts_pairs_that_received_nothing() {
        let mut trackers = HashMap::new();
        let mut t = SeqTracker::default();
        (0..10).for_each(|s| {
            t.record(s);
        });
        trackers.insert(key(0, 0), t);
        // Pair 1 -> 1 got nothing of its 10.
        let d = delivery(Routing::Pairs, &[10, 10], 2, &trackers);
        assert_eq!(d.lost, 10);
        assert_eq!(d.unexpected, 0);
    }

    #[test]
    fn all_to_all_expects_every_pair() {
        let mut trackers = HashMap::new();
        for s in 0..3 {
            for p in 0..2 {
                let mut t = SeqTracker::default();
                (0..5).for_each(|q| {
                    t.record(q);
                });
                trackers.insert(key(s, p), t);
            }
        }
        assert_eq!(Routing::AllToAll.pairs(2, 3).len(), 6);
        assert_eq!(Routing::AllToAll.fanout(3), 3);
        let d = delivery(Routing::AllToAll, &[5, 6], 3, &trackers);
        assert_eq!(
            d.lost, 3,
            "publisher 1 sent one more than each subscriber got"
        );
    }

    #[test]
    fn misrouted_messages_are_unexpected() {
        let mut trackers = HashMap::new();
        let mut t = SeqTracker::default();
        t.record(0);
        trackers.insert(key(1, 0), t);
        let d = delivery(Routing::Pairs, &[1, 0], 2, &trackers);
        assert_eq!(d.unexpected, 1);
        assert_eq!(d.lost, 1);
    }

    #[test]
    fn latency_is_measured_from_intended_time() {
        let s = Schedule::new(1_000, 1000.0);
        assert_eq!(s.due(0), 1_000);
        assert_eq!(s.due(3), 3_001_000);
        // The sender stalled: message 3 went out 5 ms late and arrived 50 µs later.
        let sent_late = s.due(3) + 5_000_000;
        assert_eq!(latency_ns(s.due(3), sent_late + 50_000), 5_050_000);
        // A clock that reads earlier than intended never yields a negative latency.
        assert_eq!(latency_ns(10, 5), 0);
    }

    #[test]
    fn grained_schedule_keeps_the_rate_and_is_never_early() {
        let exact = Schedule::new(12_345, 30_000.0);
        let grained = exact.with_grain(100_000);
        for k in 0..10_000 {
            let due = grained.due(k);
            assert_eq!(due % 100_000, 0);
            assert!(due >= exact.due(k) && due - exact.due(k) < 100_000);
        }
        // 30,000/s: one second later, exactly 30,000 messages are due.
        let one_second = grained.due(0) + 1_000_000_000;
        let due = (0..40_000).filter(|&k| grained.due(k) < one_second).count();
        assert!((29_999..=30_001).contains(&due), "{due}");
    }

    #[test]
    fn window_excludes_warmup_from_latency() {
        let mut st = ThreadStats::new();
        st.window = Window {
            start_ns: 1_000,
            end_ns: 2_000,
        };
        st.on_message(key(0, 0), 0, 500, 600); // warm-up
        st.on_message(key(0, 0), 1, 1_500, 201_500);
        st.on_message(key(0, 0), 1, 1_500, 301_800); // duplicate
        assert_eq!(st.latency.len(), 1);
        let p = Percentiles::of(&st.latency).unwrap();
        assert!(
            (p.p50 - 0.2).abs() < 0.001,
            "200 µs recorded as {} ms",
            p.p50
        );
        assert_eq!(st.received_in_window, 1);
        assert_eq!(st.interval.len(), 3);
        assert_eq!(st.trackers[&key(0, 0)].duplicates, 1);
    }

    #[test]
    fn histograms_merge_and_give_percentiles() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=500u64 {
            a.record(v * 1_000).unwrap();
        }
        for v in 501..=1000u64 {
            b.record(v * 1_000).unwrap();
        }
        merge_histogram(&mut a, &b);
        let p = Percentiles::of(&a).unwrap();
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 0.5).abs() < 0.001, "p50 {}", p.p50);
        assert!((p.p99 - 0.99).abs() < 0.001, "p99 {}", p.p99);
        assert!((p.max - 1.0).abs() < 0.001, "max {}", p.max);
        assert!(Percentiles::of(&new_histogram()).is_none());
    }

    #[test]
    fn thread_stats_merge_unions_trackers() {
        let mut a = ThreadStats::new();
        let mut b = ThreadStats::new();
        a.window = Window {
            start_ns: 0,
            end_ns: u64::MAX,
        };
        b.window = a.window;
        a.on_message(key(0, 0), 0, 10, 20);
        b.on_message(key(1, 1), 0, 10, 30);
        a.merge(b);
        assert_eq!(a.trackers.len(), 2);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.received_in_window, 2);
    }
}
