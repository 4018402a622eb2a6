//! The bookkeeping of the KV cache's blocks: reference counts, the free lists, and the prefix
//! index that lets sequences sharing a prefix share its blocks.
//!
//! A block is *used* while at least one sequence's table holds it (its reference count). A
//! full block can be *registered* under the hash of every token up to and including its own
//! (its parent's hash and its tokens, kept to verify a hit exactly): a later sequence whose
//! tokens begin the same way takes that block instead of recomputing it. A block nobody holds
//! is free: an unregistered one is handed out first; a registered one stays findable until
//! its space is needed, the least recently released first.
//!
//! This module counts and indexes block numbers; it holds no keys or values and knows
//! nothing of layers, heads or sequences.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The hash a chain of blocks starts from (the parent of a sequence's first block).
pub const ROOT: u64 = 0x7f4a_7c15_9e37_79b9;

/// The hash of a block holding `tokens` after the blocks whose chain hash is `parent`.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same value in every process and version of the program.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// What a registered block holds.
struct Content {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

/// The state of every block of a pool.
pub struct BlockPool {
    refs: Vec<u32>,
    content: Vec<Option<Content>>,
    /// Free blocks that hold nothing findable (popped from the end: ascending order).
    empty: Vec<u32>,
    /// Free registered blocks by the time they were released (oldest first), and each one's
    /// time.
    evictable: BTreeMap<u64, u32>,
    released_at: Vec<u64>,
    clock: u64,
    index: HashMap<u64, u32>,
    /// Whether blocks may be registered at all (`--no-prefix-cache` turns it off).
    pub prefix_caching: bool,
}

impl BlockPool {
    pub fn new(n_blocks: usize) -> BlockPool {
        BlockPool {
            refs: vec![0; n_blocks],
            content: (0..n_blocks).map(|_| None).collect(),
            empty: (0..n_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            released_at: vec![0; n_blocks],
            clock: 0,
            index: HashMap::new(),
            prefix_caching: true,
        }
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Blocks that can be handed out now (empty, or registered and held by nobody).
    pub fn available(&self) -> usize {
        self.empty.len() + self.evictable.len()
    }

    /// Blocks held by at least one sequence.
    pub fn used(&self) -> usize {
        self.len() - self.available()
    }

    /// Free blocks still findable by their prefix.
    pub fn cached(&self) -> usize {
        self.evictable.len()
    }

    pub fn refs(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    pub fn is_registered(&self, b: u32) -> bool {
        self.content[b as usize].is_some()
    }

    /// Takes a free block (an empty one first, else the least recently released registered
    /// one, which is forgotten), held once.
    pub fn alloc(&mut self) -> Option<u32> {
        let b = match self.empty.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                self.forget(b);
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// One more holder of a used block.
    pub fn share(&mut self, b: u32) {
        self.refs[b as usize] += 1;
    }

    /// One holder fewer; a block nobody holds becomes free.
    pub fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        if self.content[b as usize].is_some() {
            self.clock += 1;
            self.released_at[b as usize] = self.clock;
            self.evictable.insert(self.clock, b);
        } else {
            self.empty.push(b);
        }
    }

    /// The registered block holding `tokens` after chain `parent`, now held once more (taken
    /// off the free list if nobody held it).
    pub fn lookup(&mut self, parent: u64, tokens: &[u32]) -> Option<(u32, u64)> {
        let hash = chain_hash(parent, tokens);
        let &b = self.index.get(&hash)?;
        let c = self.content[b as usize].as_ref()?;
        if c.parent != parent || *c.tokens != *tokens {
            return None;
        }
        if self.refs[b as usize] == 0 {
            self.evictable.remove(&self.released_at[b as usize]);
        }
        self.refs[b as usize] += 1;
        Some((b, hash))
    }

    /// The chain hash of the registered block holding `tokens` after chain `parent`, if any
    /// (nothing is taken).
    pub fn peek(&self, parent: u64, tokens: &[u32]) -> Option<u64> {
        let hash = chain_hash(parent, tokens);
        let &b = self.index.get(&hash)?;
        let c = self.content[b as usize].as_ref()?;
        (c.parent == parent && *c.tokens == *tokens).then_some(hash)
    }

    /// Registers used block `b` as holding `tokens` after chain `parent`; returns the chain
    /// hash through it. Another block already registered with that content keeps the place
    /// (then `b` stays unregistered).
    pub fn register(&mut self, b: u32, parent: u64, tokens: &[u32]) -> u64 {
        let hash = chain_hash(parent, tokens);
        if self.prefix_caching && self.content[b as usize].is_none() {
            if let std::collections::hash_map::Entry::Vacant(e) = self.index.entry(hash) {
                e.insert(b);
                self.content[b as usize] = Some(Content {
                    hash,
                    parent,
                    tokens: tokens.into(),
                });
            }
        }
        hash
    }

    /// Makes used block `b` unfindable (its contents are about to change).
    pub fn unregister(&mut self, b: u32) {
        self.forget(b);
    }

    fn forget(&mut self, b: u32) {
        if let Some(c) = self.content[b as usize].take() {
            if self.index.get(&c.hash) == Some(&b) {
                self.index.remove(&c.hash);
            }
        }
    }

    /// Back to the start: every block free and unregistered.
    pub fn reset(&mut self) {
        let keep = self.prefix_caching;
        *self = BlockPool::new(self.len());
        self.prefix_caching = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_blocks_are_found_until_their_space_is_needed() {
        let mut p = BlockPool::new(3);
        let a = p.alloc().unwrap();
        let h = p.register(a, ROOT, &[1, 2]);
        assert_eq!(h, chain_hash(ROOT, &[1, 2]));
        p.release(a);
        assert_eq!((p.available(), p.cached(), p.used()), (3, 1, 0));
        // Found again (and held), with the exact tokens only.
        assert_eq!(p.lookup(ROOT, &[1, 3]), None);
        assert_eq!(p.lookup(h, &[1, 2]), None, "another parent");
        assert_eq!(p.lookup(ROOT, &[1, 2]), Some((a, h)));
        assert_eq!((p.refs(a), p.cached()), (1, 0));
        p.release(a);
        // Empty blocks go first; then the registered one is evicted and forgotten.
        let (b, c) = (p.alloc().unwrap(), p.alloc().unwrap());
        assert!(b != a && c != a);
        assert_eq!(p.alloc(), Some(a));
        assert!(!p.is_registered(a));
        assert_eq!(p.alloc(), None);
        p.release(a);
        assert_eq!(p.lookup(ROOT, &[1, 2]), None);
    }

    #[test]
    fn shared_blocks_free_with_their_last_holder_and_eviction_is_lru() {
        let mut p = BlockPool::new(2);
        let (a, b) = (p.alloc().unwrap(), p.alloc().unwrap());
        p.register(a, ROOT, &[1]);
        p.register(b, ROOT, &[2]);
        p.share(a);
        p.release(a);
        assert_eq!(p.available(), 0);
        p.release(b);
        p.release(a);
        // b was released first: evicted first.
        assert_eq!(p.alloc(), Some(b));
        assert!(p.is_registered(a));
        // A duplicate registration keeps the first block.
        p.release(b);
        assert_eq!(p.alloc(), Some(b), "an empty block before a findable one");
        let _ = p.register(b, ROOT, &[7]);
        assert_eq!(p.alloc(), Some(a), "evicted");
        p.register(a, ROOT, &[7]);
        assert!(!p.is_registered(a), "a duplicate of b's content");
        assert!(p.is_registered(b));
        p.prefix_caching = false;
        p.reset();
        assert_eq!((p.available(), p.cached()), (2, 0));
        assert!(!p.prefix_caching);
    }
}
