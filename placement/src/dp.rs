//! The cheapest sequence of sites over a sequence of periods, by dynamic
//! programming: each period costs what serving it from a site costs, and
//! each change of site costs what the move costs at that time. With an
//! optional cap on the number of moves (the state is then site x moves
//! used). The simulator's offline optimum runs it over the true demand; the
//! decision rule runs it over its forecast to see where it should go.

/// A solved plan: the site of every period and the total cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub cost: f64,
    pub path: Vec<usize>,
}

impl Plan {
    pub fn moves(&self, start: usize) -> usize {
        let mut prev = start;
        let mut n = 0;
        for &s in &self.path {
            if s != prev {
                n += 1;
            }
            prev = s;
        }
        n
    }
}

/// `cost[k][s]`: serving period k from site s. `move_cost(k, from, to)`:
/// moving so that period k is served from `to` (charged once). Starts at
/// `start`; at most `max_moves` moves if given. Ties keep the site (a plan
/// never moves for nothing).
pub fn solve(
    cost: &[Vec<f64>],
    start: usize,
    max_moves: Option<usize>,
    move_cost: &dyn Fn(usize, usize, usize) -> f64,
) -> Plan {
    let k_n = cost.len();
    if k_n == 0 {
        return Plan {
            cost: 0.0,
            path: Vec::new(),
        };
    }
    let s_n = cost[0].len();
    let m_n = max_moves.map_or(1, |m| m + 1);
    let capped = max_moves.is_some();
    let idx = |s: usize, m: usize| s * m_n + m;
    // (cost, moves): among equal costs the plan with fewer moves wins.
    let better = |a: (f64, usize), b: (f64, usize)| a.0 < b.0 || (a.0 == b.0 && a.1 < b.1);
    const NONE: (f64, usize) = (f64::INFINITY, usize::MAX);
    let mut best = vec![NONE; s_n * m_n];
    // back[k][state] = previous state
    let mut back = vec![vec![usize::MAX; s_n * m_n]; k_n];
    for (s, first) in cost[0].iter().enumerate() {
        let (c, m) = if s == start {
            (0.0, 0)
        } else {
            (move_cost(0, start, s), 1)
        };
        if capped && m >= m_n {
            continue;
        }
        let st = idx(s, if capped { m } else { 0 });
        best[st] = (c + first, m);
    }
    for k in 1..k_n {
        let mut next = vec![NONE; s_n * m_n];
        for (to, step) in cost[k].iter().enumerate() {
            for m in 0..m_n {
                // Staying first, so ties keep the site.
                let stay = idx(to, m);
                let mut b = best[stay];
                let mut from_state = stay;
                let used_before = if capped { m.checked_sub(1) } else { Some(0) };
                if let Some(mb) = used_before {
                    for from in (0..s_n).filter(|f| *f != to) {
                        let prev = best[idx(from, mb)];
                        let c = (prev.0 + move_cost(k, from, to), prev.1.saturating_add(1));
                        if better(c, b) {
                            b = c;
                            from_state = idx(from, mb);
                        }
                    }
                }
                if b.0.is_finite() {
                    next[stay] = (b.0 + step, b.1);
                    back[k][stay] = from_state;
                }
            }
        }
        best = next;
    }
    let (mut st, total) =
        best.iter().enumerate().fold(
            (0, NONE),
            |(bi, bv), (i, v)| if better(*v, bv) { (i, *v) } else { (bi, bv) },
        );
    let mut path = vec![0; k_n];
    for k in (0..k_n).rev() {
        path[k] = st / m_n;
        st = back[k][st];
    }
    Plan {
        cost: total.0,
        path,
    }
}

/// The cost of following `path` (for checks and for reporting).
pub fn path_cost(
    cost: &[Vec<f64>],
    start: usize,
    path: &[usize],
    move_cost: &dyn Fn(usize, usize, usize) -> f64,
) -> f64 {
    let mut prev = start;
    let mut total = 0.0;
    for (k, &s) in path.iter().enumerate() {
        if s != prev {
            total += move_cost(k, prev, s);
        }
        total += cost[k][s];
        prev = s;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every path, by enumeration.
    fn brute(
        cost: &[Vec<f64>],
        start: usize,
        max_moves: Option<usize>,
        mc: &dyn Fn(usize, usize, usize) -> f64,
    ) -> f64 {
        let (k_n, s_n) = (cost.len(), cost[0].len());
        let mut best = f64::INFINITY;
        let k_n = u32::try_from(k_n).expect("brute force runs on a handful of clients");
        for code in 0..s_n.pow(k_n) {
            let mut c = code;
            let path: Vec<usize> = (0..k_n)
                .map(|_| {
                    let s = c % s_n;
                    c /= s_n;
                    s
                })
                .collect();
            let plan = Plan {
                cost: 0.0,
                path: path.clone(),
            };
            if max_moves.is_some_and(|m| plan.moves(start) > m) {
                continue;
            }
            best = best.min(path_cost(cost, start, &path, mc));
        }
        best
    }

    proptest! {
        #[test]
        fn dp_equals_brute_force_on_small_cases(
            s_n in 1usize..4,
            k_n in 1usize..7,
            seed in proptest::collection::vec(0.0f64..100.0, 7 * 4),
            move_base in 0.0f64..80.0,
            start_pick in 0usize..4,
            cap in proptest::option::of(0usize..4),
        ) {
            let cost: Vec<Vec<f64>> = (0..k_n)
                .map(|k| (0..s_n).map(|s| seed[k * 4 + s]).collect())
                .collect();
            let start = start_pick % s_n;
            // Move costs that vary with time and direction.
            let mc = |k: usize, a: usize, b: usize| move_base * (1.0 + k as f64 * 0.1) + (a * 3 + b) as f64;
            let plan = solve(&cost, start, cap, &mc);
            let want = brute(&cost, start, cap, &mc);
            prop_assert!((plan.cost - want).abs() < 1e-6, "dp {} brute {}", plan.cost, want);
            prop_assert!((path_cost(&cost, start, &plan.path, &mc) - plan.cost).abs() < 1e-6);
            if let Some(m) = cap {
                prop_assert!(plan.moves(start) <= m);
            }
        }
    }

    #[test]
    fn ties_keep_the_site() {
        let cost = vec![vec![1.0, 1.0]; 5];
        let plan = solve(&cost, 1, None, &|_, _, _| 0.0);
        assert_eq!(plan.path, vec![1; 5]);
        assert_eq!(
            solve(&[], 0, None, &|_, _, _| 0.0).path,
            Vec::<usize>::new()
        );
    }
}
