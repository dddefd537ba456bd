//! `--recipe`: the regularisation that `vit train`'s flags resolve to, parsed as the command
//! line is, against the README's "Recipes" table transcribed by hand (numbers written out,
//! not taken from the `Default`s the code builds it from), and flags overriding it.

use clap::Parser;
use vit_tch::cli::{Cli, Command, TrainArgs};
use vit_tch::data::augment::{AugmentConfig, Interpolation, Policy, RandomErasing};
use vit_tch::data::mix::{MixConfig, MixMode};
use vit_tch::train::Regularization;

/// `vit train ARGS` as clap parses it.
fn train_args(args: &[&str]) -> TrainArgs {
    let line = ["vit", "train"].iter().chain(args);
    match Cli::try_parse_from(line).unwrap_or_else(|e| panic!("vit train {args:?}: {e}")) {
        Cli {
            command: Command::Train(args),
        } => *args,
        other => panic!("not a train command: {other:?}"),
    }
}

fn regularization(args: &[&str]) -> Regularization {
    Regularization::from_args(&train_args(args))
        .unwrap_or_else(|e| panic!("vit train {args:?}: {e:#}"))
}

/// README.md, "Recipes": the `strong` column, row by row.
fn readme_strong_recipe() -> Regularization {
    Regularization {
        // AutoAugment, CIFAR-10 policy, after the crop (padding 4, as the notebook) and the
        // flip (p 0.5); random erasing p 0.25 filled with 0, torchvision's scale and ratio.
        augment: Some(AugmentConfig {
            crop_padding: 4,
            flip_prob: 0.5,
            policy: Some(Policy::AutoAugmentCifar10),
            // Not in the table: torchvision's AutoAugment default.
            interpolation: Interpolation::Nearest,
            erasing: Some(RandomErasing {
                p: 0.25,
                scale: (0.02, 0.33),
                ratio: (0.3, 3.3),
                value: 0.0,
            }),
        }),
        // MixUp / CutMix alpha 0.8 / 1.0, every batch (prob 1, one draw per batch) of every
        // epoch (no --mix-off-epoch), switch 0.5.
        mix: Some(MixConfig {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            mode: MixMode::Batch,
        }),
        mix_off_epoch: None,
        // Stochastic depth 0.1 at the last block; attention dropout 0.
        drop_path: 0.1,
        attn_dropout: 0.0,
        // Weight EMA, decay 0.999, without warm-up unless --ema-warmup.
        ema: Some(0.999),
        ema_warmup: false,
    }
}

#[test]
fn the_strong_recipe_is_the_readmes_table() {
    assert_eq!(
        regularization(&["--recipe", "strong"]),
        readme_strong_recipe()
    );
}

/// The notebook trains with crop and flip alone: no regularisation of the strong recipe's,
/// also when `--recipe notebook` is not written (it is the default).
#[test]
fn the_notebook_recipe_adds_no_regularisation() {
    let none = Regularization {
        augment: None,
        mix: None,
        mix_off_epoch: None,
        drop_path: 0.0,
        attn_dropout: 0.0,
        ema: None,
        ema_warmup: false,
    };
    assert_eq!(regularization(&["--recipe", "notebook"]), none);
    assert_eq!(regularization(&[]), none);
}

/// Every flag given wins over the recipe's value, each one on its own field (values chosen
/// unlike any default, so that a flag read into the wrong field shows).
#[test]
fn flags_override_the_strong_recipe() {
    let given = regularization(&[
        "--recipe",
        "strong",
        "--switch-prob",
        "0.2",
        "--mixup",
        "0.3",
        "--cutmix",
        "2.0",
        "--mix-prob",
        "0.6",
        "--mix-off-epoch",
        "7",
        "--random-erasing",
        "0.4",
        "--augment-policy",
        "none",
        "--drop-path",
        "0.25",
        "--attn-dropout",
        "0.15",
        "--ema",
        "0.99",
        "--ema-warmup",
    ]);
    let mut expected = readme_strong_recipe();
    let augment = expected.augment.as_mut().unwrap();
    augment.policy = None;
    augment.erasing.as_mut().unwrap().p = 0.4;
    expected.mix = Some(MixConfig {
        mixup_alpha: 0.3,
        cutmix_alpha: 2.0,
        prob: 0.6,
        switch_prob: 0.2,
        mode: MixMode::Batch,
    });
    expected.mix_off_epoch = Some(7);
    expected.drop_path = 0.25;
    expected.attn_dropout = 0.15;
    expected.ema = Some(0.99);
    expected.ema_warmup = true;
    assert_eq!(given, expected);

    // The README's own examples: the notebook recipe with MixUp/CutMix alone, and the
    // strong recipe without MixUp/CutMix or EMA.
    let mix_alone = regularization(&["--mixup", "0.8", "--cutmix", "1.0"]);
    assert_eq!(
        mix_alone,
        Regularization {
            mix: readme_strong_recipe().mix,
            ..Regularization::default()
        }
    );
    let strong_unmixed = regularization(&[
        "--recipe", "strong", "--mixup", "0", "--cutmix", "0", "--ema", "0",
    ]);
    assert_eq!(
        strong_unmixed,
        Regularization {
            mix: None,
            ema: None,
            ..readme_strong_recipe()
        }
    );
}

/// `vit train` with no flags: README.md, "Training" (CIFAR-100, batch 256, AdamW lr 1e-3,
/// weight decay 0.05, 5 warm-up epochs, label smoothing 0.1, clipping at 1.0, 100 epochs),
/// seed 0, fp32, the notebook recipe, libtorch's thread count, a folder of its own. And the
/// other commands' batch and top-k defaults the README's usage lines show.
#[test]
fn flags_left_out_take_the_readmes_defaults() {
    use vit_tch::cli::{DatasetName, Precision, Recipe};
    let args = train_args(&[]);
    assert_eq!(args.data.dataset, DatasetName::Cifar100);
    assert_eq!(args.data.data_dir, std::path::PathBuf::from("data"));
    assert!(!args.data.coarse_labels);
    assert_eq!(args.epochs, 100);
    assert_eq!(args.batch_size, 256);
    assert_eq!(args.lr, 1e-3);
    assert_eq!(args.weight_decay, 0.05);
    assert_eq!(args.warmup_epochs, 5);
    assert_eq!(args.label_smoothing, 0.1);
    assert_eq!(args.clip_grad, 1.0);
    assert_eq!(args.seed, 0);
    assert_eq!(args.train_subset, None);
    assert_eq!(args.out, None);
    assert!(!args.resume && !args.plot && !args.ema_warmup);
    assert_eq!(args.recipe, Recipe::Notebook);
    assert_eq!(args.precision, Precision::Fp32);
    assert_eq!(args.eval_precision, Precision::Fp32);
    assert_eq!(args.cuda_graph, None);
    assert_eq!(args.device.threads.threads, None);
    assert_eq!(args.model.preset, "notebook");

    match Cli::try_parse_from(["vit", "predict", "--checkpoint", "m.safetensors", "a.png"]) {
        Ok(Cli {
            command: Command::Predict(predict),
        }) => {
            assert_eq!((predict.top_k, predict.batch_size), (5, 500));
            assert!(!predict.json);
        }
        other => panic!("{other:?}"),
    }
    match Cli::try_parse_from(["vit", "eval", "--checkpoint", "m.safetensors"]) {
        Ok(Cli {
            command: Command::Eval(eval),
        }) => {
            assert_eq!(eval.batch_size, 500);
            assert_eq!(eval.precision, Precision::Fp32);
            assert_eq!(eval.data.dataset, None, "the checkpoint's dataset");
            assert!(!eval.json && !eval.plot && eval.out.is_none());
        }
        other => panic!("{other:?}"),
    }
    // `vit data` sizes a folder dataset's images as `vit train` does by default: CIFAR's 32.
    match Cli::try_parse_from(["vit", "data", "--dataset", "folder"]) {
        Ok(Cli {
            command: Command::Data(data),
        }) => assert_eq!(data.image_size, 32),
        other => panic!("{other:?}"),
    }
}

/// A probability, drop rate or decay of NaN is refused as out of range: every comparison
/// with NaN is false, so a check written as "not below 0 and not above 1" would let it
/// through (into the loss, or an average that never moves).
#[test]
fn nan_rates_are_refused() {
    for (flags, message) in [
        (
            &["--random-erasing", "nan"][..],
            "--random-erasing must be in [0, 1], got NaN",
        ),
        (
            &["--mixup", "0.8", "--mix-prob", "nan"],
            "--mix-prob must be in [0, 1], got NaN",
        ),
        (
            &["--mixup", "0.8", "--cutmix", "1", "--switch-prob", "nan"],
            "--switch-prob must be in [0, 1], got NaN",
        ),
        (
            &["--drop-path", "nan"],
            "--drop-path must be in [0, 1), got NaN",
        ),
        (
            &["--attn-dropout", "nan"],
            "--attn-dropout must be in [0, 1), got NaN",
        ),
        (&["--ema", "nan"], "--ema must be in [0, 1), got NaN"),
    ] {
        let error = Regularization::from_args(&train_args(flags)).map(|_| ());
        let error = format!("{:#}", error.expect_err(&format!("{flags:?} accepted")));
        assert!(error.contains(message), "{flags:?}: {error}");
    }
}

/// RandAugment's settings are refused with any other policy, the strong recipe's
/// AutoAugment included (they would be ignored without a word), and its op count must
/// be at least 1 (0 ops would apply no augmentation at all).
#[test]
fn randaugment_settings_need_randaugment_and_at_least_one_op() {
    for flags in [
        &["--recipe", "strong", "--randaugment-ops", "3"][..],
        &[
            "--augment-policy",
            "autoaugment",
            "--randaugment-magnitude",
            "5",
        ],
        &["--randaugment-ops", "3"],
    ] {
        let error = Regularization::from_args(&train_args(flags)).map(|_| ());
        let error = format!("{:#}", error.expect_err(&format!("{flags:?} accepted")));
        assert!(
            error.contains("need --augment-policy randaugment"),
            "{flags:?}: {error}"
        );
    }
    let error = Regularization::from_args(&train_args(&[
        "--augment-policy",
        "randaugment",
        "--randaugment-ops",
        "0",
    ]))
    .map(|_| ());
    let error = format!("{:#}", error.expect_err("--randaugment-ops 0 accepted"));
    assert!(
        error.contains("--randaugment-ops must be in 1..=16, got 0"),
        "{error}"
    );
}
