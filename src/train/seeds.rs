//! The seeds of a run's random draws: the weights', each epoch's shuffle, and each step's
//! augmentation and dropout, all derived from `--seed`.

use tch::{Device, Kind, Tensor};

/// The 32 bits of `--seed` that the run's draws derive from: libtorch's CPU generator
/// (mt19937) keeps only a seed's low 32 bits, so a seed above them is hashed into them
/// (seeds that differed above bit 31 drew the same weights). Seeds below 2^32 are used as
/// they are, as `torch.manual_seed` uses them.
pub(super) fn seed_bits(seed: u64) -> u64 {
    match seed <= u64::from(u32::MAX) {
        true => seed,
        false => crate::model::splitmix64_finalizer(seed) & u64::from(u32::MAX),
    }
}

/// The order of the `n` training images in `epoch` (0-based) of the run seeded `seed`, of
/// `steps_per_epoch` steps: int64 indices on `device`, a permutation drawn anew each epoch
/// from its own seed.
pub(super) fn epoch_order(
    seed: u64,
    epoch: usize,
    steps_per_epoch: usize,
    n: i64,
    device: Device,
) -> Tensor {
    tch::manual_seed(draw_seed(seed, epoch, None, steps_per_epoch));
    Tensor::randperm(n, (Kind::Int64, device))
}

/// The seed of a random draw of the run seeded `seed`, of `steps_per_epoch` steps an
/// epoch: `epoch`'s shuffle (`step` None) or the augmentation and dropout of its step
/// `step`. The draws are numbered in the order they happen, and each number is mapped to
/// its seed by a permutation of the 32-bit numbers that the run's seed picks: libtorch's
/// CPU generator (mt19937) keeps only a seed's low 32 bits, so seeds distinct in 64 bits
/// could still give two steps the same draws; as 32-bit numbers, no two of a run's first
/// 2^32 draws share a seed. (Public for the test that bench/train_pytorch.py's port of it
/// gives the same seeds.)
pub fn draw_seed(seed: u64, epoch: usize, step: Option<usize>, steps_per_epoch: usize) -> i64 {
    let draws_per_epoch = steps_per_epoch as u64 + 1;
    let draw = (epoch as u64)
        .wrapping_mul(draws_per_epoch)
        .wrapping_add(step.map_or(0, |step| step as u64 + 1));
    let key = crate::model::splitmix64_finalizer(seed_bits(seed));
    // Two rounds keyed by the run's seed: runs seeded apart draw unrelated sequences (with
    // one round, or a key added alone, one run's draws would be another's, shifted).
    let mixed = mix32(draw as u32 ^ key as u32);
    i64::from(mix32(mixed.wrapping_add((key >> 32) as u32)))
}

/// A bijection of the 32-bit numbers in which nearby inputs give unrelated outputs (Chris
/// Wellons' "lowbias32": each xor-shift and each odd multiplication can be undone).
fn mix32(x: u32) -> u32 {
    let x = (x ^ (x >> 16)).wrapping_mul(0x7feb_352d);
    let x = (x ^ (x >> 15)).wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

#[cfg(test)]
mod tests {
    use super::{draw_seed, epoch_order};
    use std::collections::HashSet;
    use tch::{Device, Kind, Tensor};

    /// Each epoch trains on the images in a new order (the same order every epoch would
    /// pass the resume tests, which compare a run with itself), and runs seeded apart
    /// shuffle apart.
    #[test]
    fn every_epoch_shuffles_anew() {
        let n = 50;
        let orders: Vec<Tensor> = (0..3)
            .map(|epoch| epoch_order(0, epoch, 1, n, Device::Cpu))
            .collect();
        let identity = Tensor::arange(n, (Kind::Int64, Device::Cpu));
        for (epoch, order) in orders.iter().enumerate() {
            assert!(
                order.sort(0, false).0.equal(&identity),
                "epoch {epoch}: {order}"
            );
        }
        for (a, b) in [(0, 1), (1, 2), (0, 2)] {
            assert!(
                !orders[a].equal(&orders[b]),
                "epochs {a} and {b} share an order"
            );
        }
        assert!(
            !epoch_order(1, 0, 1, n, Device::Cpu).equal(&orders[0]),
            "seeds 0 and 1"
        );
    }

    /// The seeds of a run's shuffles and steps never repeat as the CPU generator reads them
    /// (their low 32 bits): no two steps draw the same augmentation and dropout masks. Seed
    /// 0's run of 322 epochs of 196 steps had two steps with the same low 32 bits (epoch
    /// 169's step 41 and epoch 197's step 5) when the seeds were 63-bit hashes.
    #[test]
    fn draw_seeds_do_not_repeat_in_32_bits() {
        let (epochs, steps) = (322, 196);
        let run = |seed| {
            let mut seen = HashSet::new();
            for epoch in 0..epochs {
                for step in [None].into_iter().chain((0..steps).map(Some)) {
                    let drawn = draw_seed(seed, epoch, step, steps);
                    assert!(
                        (0..1 << 32).contains(&drawn),
                        "{drawn}: the CPU generator keeps 32 bits"
                    );
                    assert!(
                        seen.insert(drawn),
                        "seed {seed}, epoch {epoch}, step {step:?}"
                    );
                }
            }
            seen
        };
        let runs: Vec<HashSet<i64>> = [0, 1, 3, u64::MAX].into_iter().map(run).collect();
        // Runs seeded apart share about as many seeds as two random sets of 63,434 32-bit
        // numbers (one, on average), not a sequence shifted by a few draws.
        let shared = runs[0].intersection(&runs[1]).count();
        assert!(shared < 10, "seeds 0 and 1 share {shared} draw seeds");
    }
}
