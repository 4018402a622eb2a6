//! The scheduler: which sequences run in the next forward pass, and how many of their tokens.
//!
//! A pure function of the engine's state ([`schedule`]): it sees numbers (tokens known and
//! computed, blocks free, priorities, arrival order), never the model or the cache, so every
//! rule is tested on its own. The rules, in order:
//! 1. every running sequence that decodes gets its one token first (decoding never waits for
//!    a prompt), in service order (higher priority first, then earlier admission);
//! 2. when a decoding sequence needs a block and none is free, the lowest-priority, most
//!    recently admitted running sequence is preempted (its blocks given back; it is computed
//!    again later) — unless preemption is off, when admission reserved room for its worst case;
//! 3. prompts being prefilled get chunks from what is left of the token budget, in service
//!    order, each as long as free blocks allow; while sequences decode, the prompt tokens of
//!    a step are held to `chunk_tokens` (or as many as sequences decode, if more), so that a
//!    long prompt never stalls everyone's next token for long;
//! 4. waiting requests are admitted in (priority, arrival) order while a slot, blocks for their
//!    whole prompt (and, without preemption, their whole generation) and budget remain; a
//!    waiting request of higher priority than a running one may preempt it.
//!
//! It decides; it runs nothing and holds no state between steps.

/// A running sequence as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    pub id: u64,
    pub priority: i32,
    /// Admission order (smaller: admitted earlier).
    pub admitted: u64,
    /// Positions in the KV cache.
    pub computed: usize,
    /// Tokens known (prompt and generated); `total - computed == 1` means decoding.
    pub total: usize,
    /// Positions the sequence may reach (prompt plus its token limit).
    pub worst: usize,
    /// Blocks that would become free if it were preempted (those no other sequence shares).
    pub frees: usize,
}

/// A request waiting for admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub id: u64,
    pub priority: i32,
    /// Arrival order (a preempted sequence keeps its original place).
    pub arrival: u64,
    /// Tokens to hold (prompt, plus what it generated before a preemption).
    pub tokens: usize,
    /// Positions the prefix cache would give it.
    pub cached: usize,
    /// Positions it may reach.
    pub worst: usize,
}

/// The limits of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most running sequences (`--batch-size`).
    pub max_running: usize,
    /// Most tokens in one forward pass (`--batch-tokens`).
    pub batch_tokens: usize,
    /// Most prompt tokens in a step in which sequences decode, unless more sequences decode
    /// than this (`--chunk-tokens`; 0: only `batch_tokens` limits them). A step's time grows
    /// with its tokens, so this bounds how long a prompt can hold back the next token of
    /// every decoding sequence.
    pub chunk_tokens: usize,
    pub block_size: usize,
    pub free_blocks: usize,
    pub preemption: bool,
}

/// What the next step does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Running sequences to stop and give back their blocks (computed again later).
    pub preempt: Vec<u64>,
    /// Waiting requests to start.
    pub admit: Vec<u64>,
    /// (sequence, tokens to compute) for the forward pass.
    pub work: Vec<(u64, usize)>,
}

fn blocks(len: usize, bs: usize) -> usize {
    len.div_ceil(bs.max(1))
}

/// The next step for `running` and `waiting` under `limits`.
pub fn schedule(running: &[Running], waiting: &[Waiting], limits: &Limits) -> Step {
    let bs = limits.block_size.max(1);
    let mut step = Step::default();
    let mut order: Vec<Running> = running.to_vec();
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.admitted.cmp(&b.admitted))
    });
    let mut free = limits.free_blocks;
    if !limits.preemption {
        // Room promised to running sequences for their worst case is not free.
        let promised: usize = order
            .iter()
            .map(|r| blocks(r.worst, bs).saturating_sub(blocks(r.computed, bs)))
            .sum();
        free = free.saturating_sub(promised);
    }
    let mut alive = order.len();
    let mut budget = limits.batch_tokens;

    // 1–2: decoding sequences, one token each.
    let mut i = 0;
    while i < alive {
        let r = order[i];
        if r.total.saturating_sub(r.computed) != 1 {
            i += 1;
            continue;
        }
        let need = if limits.preemption {
            blocks(r.computed + 1, bs) - blocks(r.computed, bs)
        } else {
            0
        };
        while need > free && alive > i + 1 {
            alive -= 1;
            free += order[alive].frees;
            step.preempt.push(order[alive].id);
        }
        if need > free {
            // Nobody left to preempt but itself.
            alive -= 1;
            step.preempt.push(r.id);
            free += r.frees;
            break;
        }
        free -= need;
        budget = budget.saturating_sub(1);
        step.work.push((r.id, 1));
        i += 1;
    }

    let decodes = step.work.len();
    if decodes > 0 && limits.chunk_tokens > 0 {
        budget = budget.min(limits.chunk_tokens.max(decodes));
    }

    // 3: chunks of prompts being prefilled.
    for r in &order[..alive] {
        let left = r.total.saturating_sub(r.computed);
        if left <= 1 || budget == 0 {
            continue;
        }
        let k = fit(
            r.computed,
            left.min(budget),
            &mut free,
            bs,
            limits.preemption,
        );
        if k > 0 {
            budget -= k;
            step.work.push((r.id, k));
        }
    }

    // 4: admissions.
    let mut queue: Vec<Waiting> = waiting.to_vec();
    queue.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.arrival.cmp(&b.arrival)));
    let mut running_now = alive;
    for w in queue {
        if budget == 0 {
            break;
        }
        let reach = if limits.preemption { w.tokens } else { w.worst };
        let need = blocks(reach, bs).saturating_sub(blocks(w.cached, bs));
        // A higher-priority request may take the place of lower-priority running ones.
        // Its work in this step, if any, is taken back: tokens to the budget, blocks to the pool.
        while limits.preemption
            && (running_now >= limits.max_running || need > free)
            && alive > 0
            && order[alive - 1].priority < w.priority
        {
            alive -= 1;
            running_now -= 1;
            let r = order[alive];
            if let Some(at) = step.work.iter().position(|&(id, _)| id == r.id) {
                let (_, k) = step.work.remove(at);
                budget += k;
                free += blocks(r.computed + k, bs) - blocks(r.computed, bs);
            }
            free += r.frees;
            step.preempt.push(r.id);
        }
        if running_now >= limits.max_running || need > free {
            // First come, first served: nobody overtakes the head of the queue.
            break;
        }
        free -= need;
        running_now += 1;
        step.admit.push(w.id);
        let k = (w.tokens - w.cached.min(w.tokens - 1)).min(budget);
        budget -= k;
        step.work.push((w.id, k));
    }
    step
}

/// How many of `want` tokens after `computed` fit in the free blocks (taking them from
/// `free`). Without preemption the room was counted at admission.
fn fit(computed: usize, want: usize, free: &mut usize, bs: usize, preemption: bool) -> usize {
    if !preemption {
        return want;
    }
    let room = (blocks(computed, bs) + *free) * bs - computed;
    let k = want.min(room);
    *free -= blocks(computed + k, bs) - blocks(computed, bs);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(free_blocks: usize) -> Limits {
        Limits {
            max_running: 4,
            batch_tokens: 64,
            chunk_tokens: 0,
            block_size: 16,
            free_blocks,
            preemption: true,
        }
    }

    fn decoding(id: u64, admitted: u64, computed: usize) -> Running {
        Running {
            id,
            priority: 0,
            admitted,
            computed,
            total: computed + 1,
            worst: computed + 100,
            frees: computed.div_ceil(16),
        }
    }

    fn waiting(id: u64, arrival: u64, tokens: usize) -> Waiting {
        Waiting {
            id,
            priority: 0,
            arrival,
            tokens,
            cached: 0,
            worst: tokens + 50,
        }
    }

    #[test]
    fn first_come_first_served_within_the_budget() {
        let w = [waiting(2, 1, 40), waiting(1, 0, 40), waiting(3, 2, 10)];
        let s = schedule(&[], &w, &limits(100));
        assert_eq!(s.admit, vec![1, 2]);
        // The second prompt gets what is left of the 64-token budget.
        assert_eq!(s.work, vec![(1, 40), (2, 24)]);
        assert!(s.preempt.is_empty());
    }

    #[test]
    fn decoding_goes_first_and_chunks_never_starve_it() {
        let mut prefill = decoding(9, 0, 0);
        prefill.total = 500;
        let run = [prefill, decoding(1, 1, 20), decoding(2, 2, 33)];
        let s = schedule(&run, &[waiting(5, 9, 10)], &limits(100));
        assert_eq!(s.work, vec![(1, 1), (2, 1), (9, 62)]);
        assert!(s.admit.is_empty(), "no budget left for admission");
    }

    #[test]
    fn prompt_chunks_are_held_short_while_others_decode() {
        let mut prefill = decoding(9, 0, 0);
        prefill.total = 500;
        let mut l = limits(100);
        l.chunk_tokens = 8;
        let run = [prefill, decoding(1, 1, 20), decoding(2, 2, 33)];
        let s = schedule(&run, &[], &l);
        assert_eq!(s.work, vec![(1, 1), (2, 1), (9, 8)]);
        // As many prompt tokens as decoding sequences when those are more.
        l.chunk_tokens = 1;
        let s = schedule(&run, &[waiting(5, 9, 10)], &l);
        assert_eq!(s.work, vec![(1, 1), (2, 1), (9, 2)]);
        // Admissions share the same allowance.
        let s = schedule(&run[1..], &[waiting(5, 9, 10)], &l);
        assert_eq!((s.admit, s.work), (vec![5], vec![(1, 1), (2, 1), (5, 2)]));
        // Alone, a prompt takes the whole budget.
        let s = schedule(&run[..1], &[], &l);
        assert_eq!(s.work, vec![(9, 64)]);
    }

    #[test]
    fn priorities_order_service_and_admission() {
        let mut hi = waiting(7, 5, 10);
        hi.priority = 3;
        let s = schedule(&[], &[waiting(1, 0, 10), hi], &limits(100));
        assert_eq!(s.admit, vec![7, 1]);
    }

    #[test]
    fn admission_waits_for_blocks_for_the_whole_prompt() {
        // 40 tokens need 3 blocks; 2 are free.
        let s = schedule(&[], &[waiting(1, 0, 40), waiting(2, 1, 10)], &limits(2));
        assert_eq!(s, Step::default(), "the head of the queue is not overtaken");
        // A prefix-cache hit lowers the need.
        let mut w = waiting(1, 0, 40);
        w.cached = 32;
        let s = schedule(&[], &[w], &limits(1));
        assert_eq!((s.admit, s.work), (vec![1], vec![(1, 8)]));
    }

    #[test]
    fn a_full_pool_preempts_the_latest_lowest_priority_sequence() {
        // Both sit at a block boundary and need a new block; none is free.
        let run = [decoding(1, 0, 32), decoding(2, 1, 48)];
        let s = schedule(&run, &[], &limits(0));
        assert_eq!(s.preempt, vec![2]);
        assert_eq!(s.work, vec![(1, 1)]);
        // A lone sequence with nowhere to grow gives way itself.
        let s = schedule(&[decoding(1, 0, 32)], &[], &limits(0));
        assert_eq!((s.preempt, s.work), (vec![1], vec![]));
    }

    #[test]
    fn a_higher_priority_request_preempts_a_lower_one() {
        let mut run = [
            decoding(1, 0, 5),
            decoding(2, 1, 5),
            decoding(3, 2, 5),
            decoding(4, 3, 5),
        ];
        run[0].priority = 1;
        let mut urgent = waiting(9, 10, 8);
        urgent.priority = 2;
        let mut l = limits(10);
        // Every slot is taken: the most recently admitted of the lowest priority yields, and the
        // token it was to decode goes back to the budget.
        let s = schedule(&run, &[urgent], &l);
        assert_eq!(s.preempt, vec![4]);
        assert_eq!(s.admit, vec![9]);
        assert_eq!(s.work, vec![(1, 1), (2, 1), (3, 1), (9, 8)]);
        // A request of the same priority waits for a free slot.
        urgent.priority = 0;
        let s = schedule(&run, &[urgent], &l);
        assert!(s.preempt.is_empty() && s.admit.is_empty());
        assert_eq!(s.work.len(), 4);
        // Decoding is never refused for a prompt: with a budget of four, all four decode and
        // nothing is left to admit with.
        urgent.priority = 2;
        l.max_running = 8;
        l.batch_tokens = 4;
        let s = schedule(&run, &[urgent], &l);
        assert_eq!(s.work.len(), 4);
        assert!(s.admit.is_empty() && s.preempt.is_empty());
    }

    #[test]
    fn without_preemption_admission_reserves_the_worst_case() {
        let mut l = limits(10);
        l.preemption = false;
        // worst = 40 + 50 = 90 positions = 6 blocks: fits in 10; the second does not.
        let s = schedule(&[], &[waiting(1, 0, 40), waiting(2, 1, 40)], &l);
        assert_eq!(s.admit, vec![1]);
        // A running one's promise is not free for others.
        let run = [decoding(1, 0, 40)];
        // It promised blocks(140) - blocks(40) = 9 - 3 = 6 of the 10.
        let s = schedule(&run, &[waiting(2, 1, 40)], &l);
        assert_eq!((s.admit, s.work), (vec![], vec![(1, 1)]));
        assert!(s.preempt.is_empty());
    }

    #[test]
    fn prefill_chunks_shrink_to_the_free_blocks() {
        let mut r = decoding(1, 0, 10);
        r.total = 100;
        // One free block: 6 positions left in the held block plus 16.
        let s = schedule(&[r], &[], &limits(1));
        assert_eq!(s.work, vec![(1, 22)]);
    }
}
