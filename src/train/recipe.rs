//! `--recipe`: what the strong recipe adds to the notebook's training, and the flags that
//! override it one by one.

use crate::cli::{AugmentPolicy, Recipe, TrainArgs};
use crate::data::augment::{AugmentConfig, Policy, RandAugment, RandomErasing};
use crate::data::mix::MixConfig;
use crate::listing::shown_number;
use crate::model::ViTConfig;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// What the strong recipe adds to the notebook's training; all off for `--recipe notebook`
/// unless a flag turns one on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Regularization {
    /// AutoAugment/RandAugment and random erasing; None: the notebook's crop + flip.
    pub augment: Option<AugmentConfig>,
    /// MixUp/CutMix (the loss then uses their soft targets).
    pub mix: Option<MixConfig>,
    /// The number of epochs that mix; later ones train on single images (timm's
    /// `mixup_off_epoch`). None: every epoch mixes.
    #[serde(default)]
    pub mix_off_epoch: Option<usize>,
    /// Stochastic depth of the last block (linear from 0 at the first).
    pub drop_path: f64,
    pub attn_dropout: f64,
    /// Decay of the weights' exponential moving average.
    pub ema: Option<f64>,
    /// Whether that decay warms up (see [`crate::train::ema_decay`]).
    #[serde(default)]
    pub ema_warmup: bool,
}

/// The most `--randaugment-ops`: each op is a pass over the batch.
const MAX_RANDAUGMENT_OPS: i64 = 16;

/// The smallest non-zero `--mixup`/`--cutmix` alpha (see [`mix_config`]).
const MIN_MIX_ALPHA: f64 = 0.01;

/// The strong recipe's stochastic depth of the last block (CCT's and Lee et al.'s).
const STRONG_DROP_PATH: f64 = 0.1;

/// The strong recipe's EMA decay: an average over about the last 1,000 steps.
const STRONG_EMA: f64 = 0.999;

/// The model's sizes from the flags: with the strong recipe, dropout 0 unless `--dropout`
/// is given, as it regularises with stochastic depth and augmentation instead.
pub fn model_config(args: &TrainArgs) -> Result<ViTConfig> {
    let mut config = args.model.resolve()?;
    if args.recipe == Recipe::Strong && args.model.dropout.is_none() {
        config.dropout = 0.0;
    }
    Ok(config)
}

impl Regularization {
    /// Whether the batches of `epoch` (0-based) are mixed.
    pub fn mixes_in(&self, epoch: usize) -> bool {
        self.mix.is_some() && self.mix_off_epoch.is_none_or(|off| epoch < off)
    }

    /// The recipe's values, with every flag given on the command line taking precedence.
    pub fn from_args(args: &TrainArgs) -> Result<Self> {
        let strong = args.recipe == Recipe::Strong;
        let pick = |given: Option<f64>, strong_value: f64| {
            given.unwrap_or(if strong { strong_value } else { 0.0 })
        };
        let policy = augment_policy(args, strong)?;
        let erasing = pick(args.random_erasing, RandomErasing::default().p);
        let mix = mix_config(args, strong, pick)?;
        let ema = pick(args.ema, STRONG_EMA);
        let regularization = Self {
            augment: (policy.is_some() || erasing > 0.0).then(|| AugmentConfig {
                policy,
                erasing: (erasing > 0.0).then(|| RandomErasing {
                    p: erasing,
                    ..RandomErasing::default()
                }),
                ..AugmentConfig::default()
            }),
            mix: mix.is_active().then_some(mix.clone()),
            mix_off_epoch: args.mix_off_epoch,
            drop_path: pick(args.drop_path, STRONG_DROP_PATH),
            attn_dropout: pick(args.attn_dropout, 0.0),
            ema: Some(ema).filter(|&decay| decay > 0.0),
            ema_warmup: args.ema_warmup,
        };
        // Probabilities may be 1; a drop rate of 1 would drop everything, a decay of 1
        // would never move the average.
        for (flag, value, one_allowed) in [
            ("--random-erasing", erasing, true),
            ("--mix-prob", mix.prob, true),
            ("--switch-prob", mix.switch_prob, true),
            ("--drop-path", regularization.drop_path, false),
            ("--attn-dropout", regularization.attn_dropout, false),
            ("--ema", ema, false),
        ] {
            let upper = if one_allowed { "1]" } else { "1)" };
            ensure!(
                value >= 0.0 && (value < 1.0 || (one_allowed && value == 1.0)),
                "{flag} must be in [0, {upper}, got {}",
                shown_number(value)
            );
        }
        // After the range check: a negative --ema is out of range, not off.
        ensure!(
            regularization.ema.is_some() || !args.ema_warmup,
            "--ema-warmup needs --ema DECAY{}",
            match strong {
                true => " (--ema 0 turned it off)",
                false => " (or --recipe strong)",
            }
        );
        Ok(regularization)
    }
}

/// `--augment-policy` and RandAugment's settings (AutoAugment for the strong recipe).
fn augment_policy(args: &TrainArgs, strong: bool) -> Result<Option<Policy>> {
    let default_policy = if strong {
        AugmentPolicy::Autoaugment
    } else {
        AugmentPolicy::None
    };
    Ok(match args.augment_policy.unwrap_or(default_policy) {
        AugmentPolicy::None | AugmentPolicy::Autoaugment
            if args.randaugment_ops.is_some() || args.randaugment_magnitude.is_some() =>
        {
            bail!("--randaugment-ops and --randaugment-magnitude need --augment-policy randaugment")
        }
        AugmentPolicy::None => None,
        AugmentPolicy::Autoaugment => Some(Policy::AutoAugmentCifar10),
        AugmentPolicy::Randaugment => {
            let default = RandAugment::default();
            let randaugment = RandAugment {
                num_ops: args.randaugment_ops.unwrap_or(default.num_ops),
                magnitude: args.randaugment_magnitude.unwrap_or(default.magnitude),
                ..default
            };
            // timm and torchvision use 2 or 3; each op costs the batch a pass.
            ensure!(
                (1..=MAX_RANDAUGMENT_OPS).contains(&randaugment.num_ops),
                "--randaugment-ops must be in 1..={MAX_RANDAUGMENT_OPS}, got {}",
                randaugment.num_ops
            );
            ensure!(
                (0..randaugment.num_magnitude_bins).contains(&randaugment.magnitude),
                "--randaugment-magnitude must be in 0..={}, got {}",
                randaugment.num_magnitude_bins - 1,
                randaugment.magnitude
            );
            Some(Policy::RandAugment(randaugment))
        }
    })
}

/// MixUp and CutMix as the flags (or the strong recipe, through `pick`) set them, checked.
fn mix_config(
    args: &TrainArgs,
    strong: bool,
    pick: impl Fn(Option<f64>, f64) -> f64,
) -> Result<MixConfig> {
    let default_mix = MixConfig::default();
    let mix = MixConfig {
        mixup_alpha: pick(args.mixup, default_mix.mixup_alpha),
        cutmix_alpha: pick(args.cutmix, default_mix.cutmix_alpha),
        prob: args.mix_prob.unwrap_or(default_mix.prob),
        switch_prob: args.switch_prob.unwrap_or(default_mix.switch_prob),
        ..default_mix
    };
    // First: a negative alpha would read as "not given" in the checks after it. Below
    // MIN_MIX_ALPHA, Beta(alpha, alpha) draws land at 0 or 1 (no mixing) and its Gamma
    // draws underflow.
    for (flag, alpha) in [("--mixup", mix.mixup_alpha), ("--cutmix", mix.cutmix_alpha)] {
        ensure!(
            alpha == 0.0 || (alpha >= MIN_MIX_ALPHA && alpha.is_finite()),
            "{flag} takes a finite alpha of at least {MIN_MIX_ALPHA}, or 0 to turn it off; \
             got {}",
            shown_number(alpha)
        );
    }
    let turned_off = match strong {
        true => " (--mixup 0 --cutmix 0 turned both off)",
        false => " (or --recipe strong)",
    };
    ensure!(
        mix.mixup_alpha > 0.0 || mix.cutmix_alpha > 0.0 || args.mix_prob.is_none(),
        "--mix-prob needs --mixup or --cutmix{turned_off}"
    );
    ensure!(
        // A negative or NaN probability goes on to the range check in `from_args`.
        mix.prob != 0.0 || (mix.mixup_alpha == 0.0 && mix.cutmix_alpha == 0.0),
        "--mix-prob 0 would never mix: pass --mixup 0 --cutmix 0 instead"
    );
    ensure!(
        (mix.mixup_alpha > 0.0 && mix.cutmix_alpha > 0.0) || args.switch_prob.is_none(),
        "--switch-prob chooses between MixUp and CutMix: it needs both --mixup and --cutmix"
    );
    if let Some(off) = args.mix_off_epoch {
        ensure!(
            mix.is_active(),
            "--mix-off-epoch needs --mixup or --cutmix{turned_off}"
        );
        ensure!(
            off > 0,
            "--mix-off-epoch 0 would never mix: pass --mixup 0 --cutmix 0 instead"
        );
        if off >= args.epochs {
            eprintln!(
                "warning: --mix-off-epoch {off} is not below --epochs {}: every epoch \
                 mixes",
                args.epochs
            );
        }
    }
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::model_config;
    use crate::cli::train_args;

    fn dropout(args: &[&str]) -> f64 {
        model_config(&train_args(args)).unwrap().dropout
    }

    /// The notebook's dropout is 0.1; the strong recipe turns it off, unless --dropout is
    /// given, which either recipe then takes as it is.
    #[test]
    fn the_strong_recipe_drops_dropout_unless_it_is_given() {
        assert_eq!(dropout(&[]), 0.1);
        assert_eq!(dropout(&["--recipe", "strong"]), 0.0);
        assert_eq!(dropout(&["--recipe", "strong", "--dropout", "0.2"]), 0.2);
        assert_eq!(dropout(&["--dropout", "0.2"]), 0.2);
    }
}
