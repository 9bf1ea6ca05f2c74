//! The publish-side deduplication window: the `message_id`s a queue accepted
//! recently.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::options::DeduplicationWindow;

/// Recently accepted ids, oldest first, with a count per id (an id may be
/// accepted again once it has left the window, and still be in the queue of
/// older entries).
#[derive(Debug)]
pub(super) struct RecentIds {
    window: DeduplicationWindow,
    order: VecDeque<(Box<str>, Instant)>,
    ids: HashMap<Box<str>, u32>,
}

impl RecentIds {
    pub(super) fn new(mut window: DeduplicationWindow) -> Self {
        // A window with only a duration is bounded all the same, so that a
        // high publish rate cannot grow it without limit.
        window.max_ids.get_or_insert(DeduplicationWindow::DEFAULT_MAX_IDS);
        RecentIds { window, order: VecDeque::new(), ids: HashMap::new() }
    }

    /// Whether the window needs the time (it has a duration).
    pub(super) fn timed(&self) -> bool {
        self.window.duration.is_some()
    }

    /// Whether `id` was accepted within the window ending at `now`.
    pub(super) fn contains(&mut self, id: &str, now: Option<Instant>) -> bool {
        self.evict(now);
        self.ids.contains_key(id)
    }

    /// Records `id` as accepted at `now`.
    pub(super) fn record(&mut self, id: &str, now: Option<Instant>) {
        *self.ids.entry(id.into()).or_default() += 1;
        self.order.push_back((id.into(), now.unwrap_or_else(Instant::now)));
        self.evict(now);
    }

    fn evict(&mut self, now: Option<Instant>) {
        while let Some((id, at)) = self.order.front() {
            let too_many = self.window.max_ids.is_some_and(|max| self.order.len() > max);
            let too_old = match (self.window.duration, now) {
                (Some(duration), Some(now)) => crate::clock::later(*at, duration) <= now,
                _ => false,
            };
            if !(too_many || too_old) {
                return;
            }
            if let Some(count) = self.ids.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    self.ids.remove(id);
                }
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_id_leaves_the_window_after_max_ids_newer_ones() {
        let mut recent = RecentIds::new(DeduplicationWindow { max_ids: Some(2), duration: None });
        recent.record("a", None);
        recent.record("b", None);
        assert!(recent.contains("a", None));
        recent.record("c", None);
        assert!(!recent.contains("a", None));
        assert!(recent.contains("b", None) && recent.contains("c", None));
    }

    #[test]
    fn an_id_leaves_the_window_when_its_duration_has_passed() {
        let start = Instant::now();
        let window = DeduplicationWindow { max_ids: None, duration: Some(Duration::from_secs(10)) };
        let mut recent = RecentIds::new(window);
        recent.record("a", Some(start));
        assert!(recent.contains("a", Some(start + Duration::from_millis(9_999))));
        assert!(!recent.contains("a", Some(start + Duration::from_secs(10))));
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn a_window_with_only_a_duration_is_bounded() {
        let window =
            DeduplicationWindow { max_ids: None, duration: Some(std::time::Duration::from_secs(3600)) };
        let mut recent = RecentIds::new(window);
        let now = Some(Instant::now());
        for n in 0..DeduplicationWindow::DEFAULT_MAX_IDS + 10 {
            recent.record(&n.to_string(), now);
        }
        assert_eq!(recent.order.len(), DeduplicationWindow::DEFAULT_MAX_IDS);
        assert!(!recent.contains("0", now), "the oldest ids were forgotten");
        assert!(recent.contains(&(DeduplicationWindow::DEFAULT_MAX_IDS + 9).to_string(), now));
    }
}
