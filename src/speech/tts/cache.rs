//! Synthesized audio kept for reuse, keyed by what determines it (the voice, the normalized
//! text of one chunk, the voice's scales and the output rate) and bounded in bytes. Entries put
//! in by `Speaker::prewarm` (the script's fixed lines) are pinned: they are never pushed out by
//! other speech, so saying a fixed line stays a cache hit for as long as the script is active.
//! Everything else is evicted least recently used first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::vits::Scales;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub voice: String,
    pub text: String,
    scales: [u32; 3],
    pub rate: u32,
}

impl CacheKey {
    pub fn new(voice: &str, text: &str, scales: Scales, rate: u32) -> CacheKey {
        CacheKey {
            voice: voice.to_string(),
            text: text.to_string(),
            scales: [
                scales.noise_scale.to_bits(),
                scales.length_scale.to_bits(),
                scales.noise_w.to_bits(),
            ],
            rate,
        }
    }
}

struct Entry {
    samples: Arc<Vec<f32>>,
    pinned: bool,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<CacheKey, Entry>,
    bytes: usize,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// Counters of a cache, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
}

/// What `insert` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Stored,
    /// Larger than the room the pinned entries leave.
    TooLarge,
}

pub struct AudioCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

fn bytes_of(samples: &[f32]) -> usize {
    std::mem::size_of_val(samples)
}

impl AudioCache {
    pub fn new(capacity_bytes: usize) -> AudioCache {
        AudioCache {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent at every step, so a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Vec<f32>>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        match inner.entries.get_mut(key) {
            Some(entry) => {
                entry.last_used = now;
                let samples = entry.samples.clone();
                inner.hits += 1;
                Some(samples)
            }
            None => {
                inner.misses += 1;
                None
            }
        }
    }

    /// Whether `key` is cached, without counting a hit or a miss.
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// Stores samples, evicting unpinned entries (least recently used first) to make room.
    /// An entry already there keeps its audio and becomes pinned if `pinned`.
    pub fn insert(&self, key: CacheKey, samples: Arc<Vec<f32>>, pinned: bool) -> Inserted {
        let size = bytes_of(&samples);
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if let Some(entry) = inner.entries.get_mut(&key) {
            entry.pinned |= pinned;
            entry.last_used = now;
            return Inserted::Stored;
        }
        let pinned_bytes: usize = inner
            .entries
            .values()
            .filter(|e| e.pinned)
            .map(|e| bytes_of(&e.samples))
            .sum();
        if pinned_bytes + size > self.capacity {
            return Inserted::TooLarge;
        }
        while inner.bytes + size > self.capacity {
            let oldest = inner
                .entries
                .iter()
                .filter(|(_, e)| !e.pinned)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= bytes_of(&gone.samples);
            }
        }
        inner.bytes += size;
        inner.entries.insert(
            key,
            Entry {
                samples,
                pinned,
                last_used: now,
            },
        );
        Inserted::Stored
    }

    /// Drops every pinned mark (a new script replaces the old one's fixed lines).
    pub fn unpin_all(&self) {
        for entry in self.lock().entries.values_mut() {
            entry.pinned = false;
        }
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            entries: inner.entries.len(),
            bytes: inner.bytes,
            hits: inner.hits,
            misses: inner.misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCALES: Scales = Scales {
        noise_scale: 0.667,
        length_scale: 1.0,
        noise_w: 0.8,
    };

    fn key(text: &str) -> CacheKey {
        CacheKey::new("voice", text, SCALES, 16000)
    }

    fn audio(n: usize) -> Arc<Vec<f32>> {
        Arc::new(vec![0.5; n])
    }

    #[test]
    fn the_key_covers_voice_text_scales_and_rate() {
        let cache = AudioCache::new(1 << 20);
        cache.insert(key("hello"), audio(10), false);
        assert!(cache.get(&key("hello")).is_some());
        assert!(cache.get(&key("hello there")).is_none());
        assert!(cache
            .get(&CacheKey::new("other", "hello", SCALES, 16000))
            .is_none());
        let slower = Scales {
            length_scale: 1.2,
            ..SCALES
        };
        assert!(cache
            .get(&CacheKey::new("voice", "hello", slower, 16000))
            .is_none());
        assert!(cache
            .get(&CacheKey::new("voice", "hello", SCALES, 8000))
            .is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 4, 1));
        assert_eq!(stats.bytes, 40);
    }

    #[test]
    fn bounded_in_bytes_least_recently_used_first_pinned_kept() {
        // Room for 100 samples.
        let cache = AudioCache::new(400);
        assert_eq!(
            cache.insert(key("fixed"), audio(40), true),
            Inserted::Stored
        );
        cache.insert(key("a"), audio(30), false);
        cache.insert(key("b"), audio(30), false);
        cache.get(&key("a"));
        // 40 + 30 + 30 = 100 samples: full. "c" pushes out "b", the least recently used.
        cache.insert(key("c"), audio(30), false);
        assert!(cache.contains(&key("a")));
        assert!(!cache.contains(&key("b")));
        assert!(cache.contains(&key("c")));
        // A large unpinned entry pushes out everything but the pinned line.
        cache.insert(key("d"), audio(60), false);
        assert!(cache.contains(&key("fixed")) && cache.contains(&key("d")));
        assert!(!cache.contains(&key("a")) && !cache.contains(&key("c")));
        assert!(cache.stats().bytes <= cache.capacity());
        // What cannot fit beside the pinned lines is refused, and nothing is lost for it.
        assert_eq!(cache.insert(key("e"), audio(70), false), Inserted::TooLarge);
        assert!(cache.contains(&key("d")));
        cache.unpin_all();
        assert_eq!(cache.insert(key("e"), audio(70), false), Inserted::Stored);
        assert!(!cache.contains(&key("fixed")));
        assert!(cache.stats().bytes <= cache.capacity());
    }
}
