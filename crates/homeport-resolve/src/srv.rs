//! SRV records and their RFC 2782 ordering.

use rand::Rng;

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative weight within a priority.
    pub weight: u16,
    /// Port to connect to.
    pub port: u16,
    /// Target host, without the trailing dot (`.` alone stays `.`).
    pub target: String,
}

impl SrvRecord {
    /// True for the "service decidedly not available" target `.`.
    pub fn is_unavailable(&self) -> bool {
        self.target == "."
    }
}

/// Order records as RFC 2782 says: ascending priority; within a priority,
/// repeatedly pick a record at random with probability proportional to its
/// weight. Records of weight 0 come after the weighted ones, in random order
/// (as Synapse does; RFC 2782's "0 to sum inclusive" pick would also bias
/// against the first weighted record). Keeps at most `max` records.
pub fn order<R: Rng + ?Sized>(
    mut records: Vec<SrvRecord>,
    rng: &mut R,
    max: usize,
) -> Vec<SrvRecord> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len().min(max));
    let mut i = 0;
    while i < records.len() && out.len() < max {
        let prio = records[i].priority;
        let n = records[i..]
            .iter()
            .take_while(|r| r.priority == prio)
            .count();
        let mut pool: Vec<SrvRecord> = records[i..i + n].to_vec();
        i += n;
        while !pool.is_empty() && out.len() < max {
            let total: u32 = pool.iter().map(|r| u32::from(r.weight)).sum();
            let pick = if total == 0 {
                rng.gen_range(0..pool.len())
            } else {
                let x = rng.gen_range(1..=total);
                let mut running = 0u32;
                pool.iter()
                    .position(|r| {
                        running += u32::from(r.weight);
                        running >= x
                    })
                    .unwrap_or(0)
            };
            out.push(pool.swap_remove(pick));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 8448,
            target: target.into(),
        }
    }

    #[test]
    fn priority_order_is_strict() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let got = order(
                vec![
                    rec(20, 1, "c"),
                    rec(10, 0, "a"),
                    rec(30, 100, "d"),
                    rec(10, 0, "b"),
                ],
                &mut rng,
                100,
            );
            let prios: Vec<u16> = got.iter().map(|r| r.priority).collect();
            assert_eq!(prios, [10, 10, 20, 30]);
        }
    }

    #[test]
    fn weights_are_proportional() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut first_heavy = 0;
        for _ in 0..2000 {
            let got = order(
                vec![rec(10, 1, "light"), rec(10, 9, "heavy")],
                &mut rng,
                100,
            );
            if got[0].target == "heavy" {
                first_heavy += 1;
            }
            assert_eq!(got.len(), 2);
        }
        // Expected 90 %: 1800 of 2000.
        assert!((1740..=1860).contains(&first_heavy), "{first_heavy}");
    }

    #[test]
    fn zero_weight_records_come_after_weighted_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..100 {
            let got = order(vec![rec(1, 0, "zero"), rec(1, 5, "five")], &mut rng, 100);
            assert_eq!(got[0].target, "five");
        }
    }

    #[test]
    fn zero_weights_all_kept() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let got = order(
            vec![rec(1, 0, "a"), rec(1, 0, "b"), rec(1, 0, "c")],
            &mut rng,
            100,
        );
        let mut t: Vec<&str> = got.iter().map(|r| r.target.as_str()).collect();
        t.sort();
        assert_eq!(t, ["a", "b", "c"]);
    }

    #[test]
    fn capped_at_max() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let many: Vec<SrvRecord> = (0..2000)
            .map(|i| rec((i % 7) as u16, 5, &format!("t{i}")))
            .collect();
        let got = order(many, &mut rng, 100);
        assert_eq!(got.len(), 100);
        assert!(
            got.iter().all(|r| r.priority == 0),
            "lowest priorities kept"
        );
    }

    #[test]
    fn dot_is_unavailable() {
        assert!(rec(0, 0, ".").is_unavailable());
        assert!(!rec(0, 0, "a").is_unavailable());
    }
}
