//! Which blocks to send and which to write: the decisions of an incremental push
//! and an incremental pull, from block states alone. Pure.
//!
//! Push: a full snapshot sends every non-zero block and skips zero blocks (an
//! unwritten block of a new snapshot reads as zero). A child sends exactly the
//! blocks whose content differs from its parent, including blocks that became
//! zero: an unwritten block of a child reads as the parent's data.
//!
//! Pull: a full pull writes every non-zero block into a destination that starts
//! as holes; an incremental pull over a destination holding the base writes the
//! blocks whose content differs and turns blocks that became zero into holes.

use super::block::{BlockHash, BlockState};
use super::index::BlockIndex;
use std::iter::Peekable;

/// What a push does with one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushAction {
    /// Nothing to send: the snapshot already reads this content.
    Skip,
    /// Send the block's data.
    Put(BlockHash),
    /// Send an all-zero block (a child whose parent had data here).
    PutZero,
}

/// Decides one block of a push. `parent` is `None` for a full snapshot.
pub fn push_action(parent: Option<BlockState>, now: BlockState) -> PushAction {
    match (parent, now) {
        (_, BlockState::Data(h)) if parent != Some(now) => PushAction::Put(h),
        (Some(BlockState::Data(_)), BlockState::Zero) => PushAction::PutZero,
        _ => PushAction::Skip,
    }
}

/// What a pull does with one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullAction {
    /// Fetch the block and write it; its data must hash to this.
    Write(BlockHash),
    /// The block became zero since the base: make it a hole.
    Zero,
}

/// The blocks a pull touches, ascending. `base` is what the destination holds
/// now (`None`: a fresh destination made of holes).
pub fn pull_plan<'a>(
    base: Option<&'a BlockIndex>,
    target: &'a BlockIndex,
) -> impl Iterator<Item = (u64, PullAction)> + 'a {
    let base_blocks = base
        .into_iter()
        .flat_map(|b| b.data_blocks().map(|(i, _)| i));
    let target_blocks = target.data_blocks().map(|(i, _)| i);
    merge_ascending(base_blocks, target_blocks).filter_map(move |i| {
        let was = base.map_or(BlockState::Zero, |b| b.state(i));
        match (was, target.state(i)) {
            (w, t) if w == t => None,
            (_, BlockState::Data(h)) => Some((i, PullAction::Write(h))),
            (_, BlockState::Zero) => Some((i, PullAction::Zero)),
        }
    })
}

/// Merges two ascending sequences of block indexes, each index once.
pub fn merge_ascending<A, B>(a: A, b: B) -> MergeAscending<A, B>
where
    A: Iterator<Item = u64>,
    B: Iterator<Item = u64>,
{
    MergeAscending {
        a: a.peekable(),
        b: b.peekable(),
        last: None,
    }
}

pub struct MergeAscending<A: Iterator<Item = u64>, B: Iterator<Item = u64>> {
    a: Peekable<A>,
    b: Peekable<B>,
    last: Option<u64>,
}

impl<A: Iterator<Item = u64>, B: Iterator<Item = u64>> Iterator for MergeAscending<A, B> {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        loop {
            let next = match (self.a.peek(), self.b.peek()) {
                (None, None) => return None,
                (Some(&x), None) => {
                    self.a.next();
                    x
                }
                (None, Some(&y)) => {
                    self.b.next();
                    y
                }
                (Some(&x), Some(&y)) => {
                    if x <= y {
                        self.a.next();
                        x
                    } else {
                        self.b.next();
                        y
                    }
                }
            };
            if self.last != Some(next) {
                self.last = Some(next);
                return Some(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BlockState::{Data, Zero};

    fn h(s: &str) -> BlockHash {
        BlockHash::of(s.as_bytes())
    }

    #[test]
    fn full_push_skips_zero_blocks() {
        assert_eq!(push_action(None, Zero), PushAction::Skip);
        assert_eq!(push_action(None, Data(h("a"))), PushAction::Put(h("a")));
    }

    #[test]
    fn child_push_sends_exactly_the_changes() {
        assert_eq!(
            push_action(Some(Data(h("a"))), Data(h("a"))),
            PushAction::Skip
        );
        assert_eq!(push_action(Some(Zero), Zero), PushAction::Skip);
        assert_eq!(
            push_action(Some(Data(h("a"))), Data(h("b"))),
            PushAction::Put(h("b"))
        );
        assert_eq!(
            push_action(Some(Zero), Data(h("b"))),
            PushAction::Put(h("b"))
        );
        // Became zero: must be written, or the parent's data shows through.
        assert_eq!(push_action(Some(Data(h("a"))), Zero), PushAction::PutZero);
    }

    #[test]
    fn pull_plans() {
        let mut base = BlockIndex::new("snap-b", None, 1, 1 << 30);
        base.push_data(1, h("1")).unwrap();
        base.push_data(2, h("2")).unwrap();
        base.push_data(5, h("5")).unwrap();
        let mut target = BlockIndex::new("snap-t", Some("snap-b"), 1, 1 << 30);
        target.push_data(1, h("1")).unwrap(); // same
        target.push_data(3, h("3")).unwrap(); // new
        target.push_data(5, h("5b")).unwrap(); // changed
        // 2 became zero.
        let inc: Vec<_> = pull_plan(Some(&base), &target).collect();
        assert_eq!(
            inc,
            vec![
                (2, PullAction::Zero),
                (3, PullAction::Write(h("3"))),
                (5, PullAction::Write(h("5b"))),
            ]
        );
        let full: Vec<_> = pull_plan(None, &target).collect();
        assert_eq!(
            full,
            vec![
                (1, PullAction::Write(h("1"))),
                (3, PullAction::Write(h("3"))),
                (5, PullAction::Write(h("5b"))),
            ]
        );
    }

    #[test]
    fn merge_dedups_and_orders() {
        let m: Vec<_> = merge_ascending([1, 3, 3, 7].into_iter(), [0, 3, 8].into_iter()).collect();
        assert_eq!(m, vec![0, 1, 3, 7, 8]);
    }
}
