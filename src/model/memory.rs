//! Whether a config's model can be built, trained, and trained on a batch in the memory
//! this process may use: refused before it starts, with advice, rather than killed by the
//! kernel partway.

use super::config::FloatSizes;
use super::ViTConfig;
use crate::listing::noun_for;
use anyhow::{bail, Result};

impl ViTConfig {
    /// Refuses, before training starts, a model whose training state (weights, gradients
    /// and AdamW's two moments) and libtorch's bookkeeping for it outgrow the memory this
    /// process may use, naming the flags that set the sizes. For the CPU, where the kernel
    /// kills a process that takes too much without a word; a GPU's allocator fails with a
    /// message instead.
    pub fn check_trains_in_memory(&self) -> Result<()> {
        self.check_fits_in_memory(crate::listing::flag_name, true)
    }

    /// [`Self::check_trains_in_memory`], and then with a training step on batches of
    /// `batch_size` images counted too: the activations it keeps for the backward pass, at
    /// the least (see `step_bytes_per_image`), beside the weights and AdamW's two moments
    /// (the gradients are none until the backward pass, which frees the activations as it
    /// goes). Where they outgrow the memory, the advice is the largest --batch-size that
    /// might fit, or the flags that size an image's activations where none fits.
    pub fn check_steps_fit_in_memory(&self, batch_size: i64) -> Result<()> {
        self.check_trains_in_memory()?;
        let Some(memory) = crate::runtime::memory_bytes() else {
            return Ok(());
        };
        let memory = memory as f64;
        // The training state less one float32 copy of the weights: their gradients.
        let held = self.memory_needed(true) - 4.0 * self.parameter_count();
        let per_image = self.step_bytes_per_image();
        let step = batch_size as f64 * per_image;
        if held + step <= memory {
            return Ok(());
        }
        let largest = ((memory - held) / per_image).floor();
        let advice = match largest >= 1.0 {
            true => format!(
                "use a smaller --batch-size (one over {largest} cannot fit: these are the least \
                 a step keeps)"
            ),
            false => "not even one image fits: use a smaller --image-size, --embed-dim or \
                      --num-layers, or a larger --patch-size"
                .to_string(),
        };
        bail!(
            "a training step on batches of {batch_size} {} would take at least {:.1} GB ({:.1} \
             GB of activations kept for the backward pass, {:.1} GB of weights and AdamW's \
             moments); this process may use {:.1} GB of memory: {advice}",
            noun_for(batch_size, "image"),
            (held + step) / 1e9,
            step / 1e9,
            held / 1e9,
            memory / 1e9
        )
    }

    /// The bytes a training step keeps for each image of its batch, at the least: the image
    /// in float32, and every block's input (the residual stream, float32 under autocast too),
    /// which its backward pass needs. The attention and MLP activations (several times
    /// more) are left out, so that only a batch that cannot fit is refused.
    fn step_bytes_per_image(&self) -> f64 {
        let FloatSizes {
            image,
            channels,
            embed,
            layers,
            tokens,
            ..
        } = self.float_sizes();
        4.0 * (channels * image * image + layers * tokens * embed)
    }

    /// Refused here rather than found by building it: a model of millions of small layers
    /// would fill the memory one layer at a time, for minutes, and a process that takes
    /// more than its cgroup allows is killed without a word. The advice names what sets
    /// the largest part of the model.
    pub(super) fn check_fits_in_memory(
        &self,
        name: impl Fn(&str) -> String,
        training: bool,
    ) -> Result<()> {
        let Some(memory) = crate::runtime::memory_bytes() else {
            return Ok(());
        };
        let bytes = self.memory_needed(training);
        if bytes <= memory as f64 {
            return Ok(());
        }
        let smaller = self.largest_part_advice(&name, training);
        let count = self.parameter_count();
        let what = match training {
            true => "training the model would take",
            false => "the model would take",
        };
        bail!(
            "{what} at least {:.1} GB: {count:.3e} parameters ({:.1} GB in float32{}) and \
             libtorch's bookkeeping for {} {}; this process may use {:.1} GB of memory: use \
             {smaller}",
            bytes / 1e9,
            4.0 * count / 1e9,
            match training {
                true => ", held four times: weights, gradients and AdamW's two moments",
                false => ", its largest tensor twice while it is initialised",
            },
            self.num_layers,
            noun_for(self.num_layers as usize, "block"),
            memory as f64 / 1e9,
        )
    }

    /// What to make smaller, as `name` calls the flags or fields: the sizes of the model's
    /// largest part (its blocks' bookkeeping, for a build or for `training`, counted with
    /// their weights), as in `a smaller --embed-dim, --mlp-dim or --num-layers`.
    fn largest_part_advice(&self, name: impl Fn(&str) -> String, training: bool) -> String {
        let parts = self.parameter_parts();
        // The blocks' bookkeeping counts with their weights: in bytes per weight.
        let (copies, block_bytes) = Self::memory_per(training);
        let blocks = parts.blocks + block_bytes * self.num_layers as f64 / (4.0 * copies);
        let largest = [parts.patch_embed, parts.positions, blocks, parts.head]
            .into_iter()
            .fold(0.0, f64::max);
        if largest == parts.positions {
            format!(
                "a larger {} or a smaller {}",
                name("patch_size"),
                name("image_size")
            )
        } else if largest == parts.patch_embed {
            format!("a smaller {} or {}", name("patch_size"), name("embed_dim"))
        } else if largest == parts.head {
            format!("a smaller {} or {}", name("num_classes"), name("embed_dim"))
        } else {
            format!(
                "a smaller {}, {} or {}",
                name("embed_dim"),
                name("mlp_dim"),
                name("num_layers")
            )
        }
    }

    /// A lower bound on the memory the model takes, built or, `training`, trained (on top,
    /// activations grow with the batch): its float32 weights, held four times to train, and
    /// once to build plus the initial values of its largest tensor (which are copied into
    /// it; less than the three more copies training holds), and libtorch's bookkeeping for
    /// each block.
    fn memory_needed(&self, training: bool) -> f64 {
        let (copies, block_bytes) = Self::memory_per(training);
        let weights = match training {
            true => copies * self.parameter_count(),
            false => self.parameter_count() + self.largest_tensor(),
        };
        4.0 * weights + block_bytes * self.num_layers as f64
    }

    /// The elements of the model's largest tensor: the position embedding, the patch
    /// embedding's kernel, a block's qkv or MLP weight, or the head's.
    fn largest_tensor(&self) -> f64 {
        let FloatSizes {
            patch,
            channels,
            embed,
            mlp,
            classes,
            tokens,
            ..
        } = self.float_sizes();
        [
            tokens * embed,
            channels * patch * patch * embed,
            3.0 * embed * embed,
            embed * mlp,
            embed * classes,
        ]
        .into_iter()
        .fold(0.0, f64::max)
    }

    /// How many copies of the weights the model's memory holds, and the bytes of
    /// libtorch's bookkeeping per block (its tensors, and training's gradients, optimizer
    /// state and autograd graph). Measured with one-wide blocks (`--embed-dim 1 --num-heads
    /// 1 --mlp-dim 1`), from the maximum RSS at 500, 1,000 and 2,000 of them: 9 KiB a block
    /// for `vit info`, 68 KiB for `vit bench --batch-size 1` (2026-11-30); rounded up.
    fn memory_per(training: bool) -> (f64, f64) {
        match training {
            true => (4.0, 96.0 * 1024.0),
            false => (1.0, 16.0 * 1024.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ViTConfig;

    /// Training counts libtorch's bookkeeping of each block (96 KiB) on top of four copies
    /// of the weights: one-wide blocks whose bookkeeping outgrows the memory here are
    /// refused for training, though built they fit, and the advice names the blocks' flags
    /// though the head holds more weights than they do.
    #[test]
    fn thin_blocks_bookkeeping_is_counted_for_training() {
        let memory =
            crate::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
        let memory = memory as f64;
        // Bookkeeping of 1.5 times the memory for training (a quarter of it built), and a
        // head of 2 weights a class whose four copies take half the memory.
        let num_layers = (memory / 65536.0) as i64;
        let config = ViTConfig {
            embed_dim: 1,
            num_heads: 1,
            mlp_dim: 1,
            num_layers,
            num_classes: (memory / 64.0) as i64,
            ..ViTConfig::tiny()
        };
        config.validate().unwrap();
        let error = format!("{:#}", config.check_trains_in_memory().unwrap_err());
        let needed = 16.0 * config.parameter_count() + 96.0 * 1024.0 * num_layers as f64;
        assert!(
            error.starts_with(&format!(
                "training the model would take at least {:.1} GB: ",
                needed / 1e9
            )) && error.ends_with("use a smaller --embed-dim, --mlp-dim or --num-layers"),
            "{error}"
        );
    }

    /// A training step's batch counts too: the notebook model's step on a batch whose
    /// float32 images and block inputs alone outgrow the memory is refused naming
    /// --batch-size, and one of 256 is not.
    #[test]
    fn a_batch_that_cannot_fit_is_refused_naming_batch_size() {
        let memory =
            crate::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
        let config = ViTConfig::notebook();
        // 32x32 RGB images, and 6 blocks' inputs of 65 tokens of 256 floats.
        let per_image = 4 * (3 * 32 * 32 + 6 * 65 * 256);
        let batch = (memory / per_image + 1) as i64;
        let error = format!("{:#}", config.check_steps_fit_in_memory(batch).unwrap_err());
        assert!(
            error.starts_with(&format!("a training step on batches of {batch} images"))
                && error.contains("use a smaller --batch-size"),
            "{error}"
        );
        config.check_steps_fit_in_memory(256).unwrap();
        // Images whose float32 copy alone outgrows the memory: no batch fits.
        let mut image_size = 64;
        while 12 * image_size * image_size <= memory {
            image_size *= 2;
        }
        let config = ViTConfig {
            image_size: image_size as i64,
            patch_size: image_size as i64 / 64,
            embed_dim: 4,
            num_heads: 1,
            mlp_dim: 4,
            num_layers: 1,
            ..ViTConfig::tiny()
        };
        let error = format!("{:#}", config.check_steps_fit_in_memory(1).unwrap_err());
        assert!(
            error.starts_with("a training step on batches of 1 image would take")
                && error.contains("not even one image fits: use a smaller --image-size"),
            "{error}"
        );
    }

    /// Building counts the largest tensor twice (its initial values are copied into it): a
    /// position embedding of 0.6 times the memory here is refused, as building it would
    /// take 1.2 times (the kernel killed `vit info` where only one copy was counted).
    #[test]
    fn building_counts_the_largest_tensor_twice() {
        let memory =
            crate::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
        let embed_dim = 64;
        // 4 bytes for each of (image_size^2 + 1) * embed_dim position weights.
        let image_size = (0.6 * memory as f64 / 4.0 / embed_dim as f64).sqrt() as i64;
        let config = ViTConfig {
            image_size,
            patch_size: 1,
            embed_dim,
            num_heads: 1,
            mlp_dim: 1,
            num_layers: 1,
            ..ViTConfig::tiny()
        };
        let positions = 4.0 * (image_size * image_size + 1) as f64 * embed_dim as f64;
        assert!(positions < memory as f64 && 2.0 * positions > memory as f64);
        let error = format!("{:#}", config.validate().unwrap_err());
        assert!(
            error.contains("its largest tensor twice while it is initialised")
                && error.ends_with("use a larger patch_size or a smaller image_size"),
            "{error}"
        );
    }
}
