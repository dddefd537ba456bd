//! `nn.Dropout(prob)`, with a faster mask sampler on the CPU.
//!
//! libtorch draws a CPU dropout mask with its Bernoulli sampler at 4.3 ns an element
//! (measured here with 2 threads, bench/cpu_kernels.py), which made dropout about half of
//! the notebook model's forward pass. Masks of the same distribution — each element kept
//! with probability 1 - prob — come from xoshiro128++ generators side by side, several
//! times faster (bench/results/2026-11-29-cpu-kernels.txt). On CUDA, libtorch's fused
//! dropout kernel is already fast and is used as is.

use std::mem::MaybeUninit;
use tch::{nn::ModuleT, Device, Kind, Tensor};

/// Dropout: while training, zeroes each element with probability `prob` and scales the
/// others by 1 / (1 - prob), so that the expectation is unchanged; the identity otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub prob: f64,
    /// Draw CPU masks with libtorch's sampler, as `torch.nn.Dropout` does (for benchmarks
    /// that compare like with like), instead of `keep_mask`.
    pub libtorch_masks: bool,
}

impl Dropout {
    /// Dropout with probability `prob`, its CPU masks from vit's sampler.
    pub fn new(prob: f64) -> Self {
        Self {
            prob,
            libtorch_masks: false,
        }
    }
}

impl ModuleT for Dropout {
    /// [...] -> [...], same kind.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if !train || self.prob == 0.0 {
            xs.shallow_clone()
        } else if self.libtorch_masks || xs.device() != Device::Cpu {
            xs.dropout(self.prob, true)
        } else {
            // The mask needs no gradient; autograd keeps it for the backward pass, as
            // libtorch keeps its own.
            xs * keep_mask(&xs.size(), self.prob).to_kind(xs.kind())
        }
    }
}

/// A float CPU tensor of `shape` whose elements are independently 1 / (1 - prob) with
/// probability 1 - prob and 0 otherwise. Its seed is drawn from libtorch's CPU generator,
/// so `tch::manual_seed` makes it reproducible; the mask does not depend on the thread count.
pub fn keep_mask(shape: &[i64], prob: f64) -> Tensor {
    assert!(
        (0.0..1.0).contains(&prob),
        "dropout probability {prob} is not in [0, 1)"
    );
    let seed = Tensor::empty([], (Kind::Int64, Device::Cpu))
        .random_()
        .int64_value(&[]) as u64;
    let threads = tch::get_num_threads().max(1) as usize;
    // SAFETY: `fill_mask` writes every element.
    let (mask, ()) = unsafe {
        crate::ffi::new_cpu_tensor(shape, |values: &mut [MaybeUninit<f32>]| {
            fill_mask(values, prob, seed, threads)
        })
    }
    .expect("memory for a dropout mask the size of its activations");
    mask
}

/// Elements per chunk: each chunk has its own generators, so chunks fill in any order, on
/// any thread, with the same result.
pub const CHUNK: usize = 1 << 14;
/// Generators running side by side in a chunk (the compiler turns them into SIMD lanes).
const LANES: usize = 16;

/// Fills `values` as `keep_mask` describes, from `seed`, on up to `threads` threads.
pub fn fill_keep_mask(values: &mut [f32], prob: f64, seed: u64, threads: usize) {
    // SAFETY: the same memory, into which `fill_mask` writes only initialised floats.
    let values = unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) };
    fill_mask(values, prob, seed, threads)
}

/// `fill_keep_mask` into memory not yet initialised (a new tensor's): it writes every
/// element and reads none.
fn fill_mask(values: &mut [MaybeUninit<f32>], prob: f64, seed: u64, threads: usize) {
    if prob == 0.0 {
        // The threshold below cannot express "always".
        values.fill(MaybeUninit::new(1.0));
        return;
    }
    // Kept when a uniform 32-bit draw is below (1 - prob) 2^32.
    let threshold = ((1.0 - prob) * 4_294_967_296.0)
        .round()
        .min(u32::MAX as f64) as u32;
    let scale = (1.0 / (1.0 - prob)) as f32;
    let chunks = values.len().div_ceil(CHUNK);
    let threads = threads.clamp(1, chunks.max(1));
    if threads == 1 {
        fill_chunks(values, 0, threshold, scale, seed);
        return;
    }
    let chunks_per_thread = chunks.div_ceil(threads);
    std::thread::scope(|scope| {
        for (i, part) in values.chunks_mut(chunks_per_thread * CHUNK).enumerate() {
            scope.spawn(move || fill_chunks(part, i * chunks_per_thread, threshold, scale, seed));
        }
    });
}

/// Fills consecutive chunks, the first of which is chunk number `first_chunk`.
fn fill_chunks(
    values: &mut [MaybeUninit<f32>],
    first_chunk: usize,
    threshold: u32,
    scale: f32,
    seed: u64,
) {
    let mut draws = [0u32; LANES];
    for (i, chunk) in values.chunks_mut(CHUNK).enumerate() {
        let mut generators = Xoshiro128PlusPlus::new(seed, first_chunk + i);
        for block in chunk.chunks_mut(LANES) {
            generators.next(&mut draws);
            for (value, &draw) in block.iter_mut().zip(&draws) {
                value.write(if draw < threshold { scale } else { 0.0 });
            }
        }
    }
}

/// `LANES` xoshiro128++ generators (Blackman and Vigna, 2019) stepped together.
struct Xoshiro128PlusPlus {
    /// The four state words of every lane, indexed `state[word][lane]`.
    state: [[u32; LANES]; 4],
}

impl Xoshiro128PlusPlus {
    /// The generators of chunk `chunk`: their state words are consecutive outputs of one
    /// SplitMix64 sequence started at `seed`, as the generator's authors advise for seeding.
    fn new(seed: u64, chunk: usize) -> Self {
        // Lane `lane` takes outputs 2 (chunk LANES + lane) and the next: their low and high
        // halves are its words 0, 1 and 2, 3.
        let word = |word: usize, lane: usize| {
            let bits = splitmix64(seed, ((chunk * LANES + lane) * 2 + word / 2) as u64);
            (bits >> (32 * (word % 2))) as u32
        };
        Self {
            state: std::array::from_fn(|w| std::array::from_fn(|lane| word(w, lane))),
        }
    }

    /// One draw of every generator.
    #[inline(always)]
    fn next(&mut self, draws: &mut [u32; LANES]) {
        let [s0, s1, s2, s3] = &mut self.state;
        for lane in 0..LANES {
            draws[lane] = s0[lane]
                .wrapping_add(s3[lane])
                .rotate_left(7)
                .wrapping_add(s0[lane]);
            let t = s1[lane] << 9;
            s2[lane] ^= s0[lane];
            s3[lane] ^= s1[lane];
            s1[lane] ^= s2[lane];
            s0[lane] ^= s3[lane];
            s2[lane] ^= t;
            s3[lane] = s3[lane].rotate_left(11);
        }
    }
}

/// Output number `index` of the SplitMix64 sequence that starts at `seed`.
fn splitmix64(seed: u64, index: u64) -> u64 {
    splitmix64_finalizer(
        seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    )
}

/// SplitMix64's output function: nearby inputs give unrelated outputs.
pub(crate) fn splitmix64_finalizer(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::{splitmix64, Xoshiro128PlusPlus, LANES};

    /// SplitMix64 from seed 0: the first outputs of the reference splitmix64.c (Vigna),
    /// whose stream seeds the generators.
    #[test]
    fn splitmix64_is_the_reference_sequence() {
        let outputs: Vec<u64> = (0..3).map(|index| splitmix64(0, index)).collect();
        assert_eq!(
            outputs,
            [
                16294208416658607535,
                7960286522194355700,
                487617019471545679
            ]
        );
    }

    /// Every lane steps as the reference xoshiro128plusplus.c (Blackman and Vigna): from the
    /// state 1, 2, 3, 4 its first ten outputs are the reference's (rand_xoshiro checks the
    /// same ten).
    #[test]
    fn every_lane_is_the_reference_xoshiro128plusplus() {
        let mut generators = Xoshiro128PlusPlus {
            state: [[1; LANES], [2; LANES], [3; LANES], [4; LANES]],
        };
        let reference: [u32; 10] = [
            641, 1573767, 3222811527, 3517856514, 836907274, 4247214768, 3867114732, 1355841295,
            495546011, 621204420,
        ];
        let mut draws = [0; LANES];
        for (i, output) in reference.into_iter().enumerate() {
            generators.next(&mut draws);
            assert_eq!(draws, [output; LANES], "output {i}");
        }
    }

    /// Lane `lane` of chunk `chunk` is seeded with SplitMix64 outputs 2 (chunk LANES + lane)
    /// and the next: their low and high halves are its state words 0, 1 and 2, 3.
    #[test]
    fn each_lane_is_seeded_with_its_own_two_splitmix64_outputs() {
        for (seed, chunk) in [(0, 0), (0, 3), (12345, 1)] {
            let generators = Xoshiro128PlusPlus::new(seed, chunk);
            for lane in 0..LANES {
                let first = 2 * (chunk * LANES + lane) as u64;
                let (a, b) = (splitmix64(seed, first), splitmix64(seed, first + 1));
                let words = [a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32];
                let state = generators.state.map(|word| word[lane]);
                assert_eq!(state, words, "seed {seed}, chunk {chunk}, lane {lane}");
            }
        }
    }
}
