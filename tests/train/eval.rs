//! `vit eval`: PyTorch's accuracy on CIFAR-100's fine and coarse labels and on image
//! folders, and the report files it writes.

use crate::common::{assert_contains, vit, vit_fails, TempDir};
use crate::{
    assert_evaluated_as_pytorch_does, colour_cifar10, common, fresh_model, save_fresh_model,
};
use std::path::Path;
use std::process::Command;
use vit_tch::model::ViTConfig;

/// `vit eval --plot` where neither the confusion matrix's CSV nor its picture can be
/// written (a folder in the place of each): the figures are printed, the error names both
/// files, and the report has neither.
#[test]
fn eval_names_both_confusion_matrix_files_it_cannot_write() {
    let (root, data_dir) = colour_cifar10("eval-both-blocked");
    let checkpoint = root.join("model.safetensors");
    let metadata = [("dataset", "cifar10".to_string())];
    let vs = fresh_model(&ViTConfig::tiny());
    vit_tch::checkpoint::save(&vs, &ViTConfig::tiny(), &metadata, &checkpoint).unwrap();
    let blocked = ["csv", "png"].map(|ext| root.join(format!("model.confusion_matrix.{ext}")));
    for folder in &blocked {
        std::fs::create_dir(folder).unwrap();
    }
    #[rustfmt::skip]
    let output = common::run_vit(&["eval", "--checkpoint", checkpoint.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap(), "--device", "cpu", "--json", "--plot"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for folder in &blocked {
        assert_contains(&stderr, &format!("cannot write {}", folder.display()));
    }
    assert_contains(&stderr, "the evaluation's figures are printed all the same");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["accuracy"].as_f64().is_some(), "{report}");
    assert!(report["confusion_matrix_csv"].is_null(), "{report}");
    assert!(report["confusion_matrix_png"].is_null(), "{report}");
}

/// `vit eval --checkpoint model.safetensors --out results`, given in the checkpoint's own
/// folder: the report is named after that folder too, as for a checkpoint given with its
/// path, so that the reports of two runs evaluated into one folder keep apart; and the
/// report is all that lands there (the check that the folder takes files removes its own).
#[test]
fn a_checkpoint_given_by_its_bare_name_names_its_report_after_its_folder() {
    let (root, data_dir) = colour_cifar10("eval-bare-name");
    let run = root.join("run-a");
    std::fs::create_dir(&run).unwrap();
    let metadata = [("dataset", "cifar10".to_string())];
    save_fresh_model(
        &ViTConfig::tiny(),
        &metadata,
        &run.join("model.safetensors"),
    );
    let results = root.join("results");
    #[rustfmt::skip]
    let output = Command::new(common::vit_binary())
        .args(["eval", "--checkpoint", "model.safetensors", "--data-dir", data_dir.to_str().unwrap(), "--device", "cpu", "--out", results.to_str().unwrap()])
        .current_dir(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let names: Vec<String> = std::fs::read_dir(&results)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["run-a.model.confusion_matrix.csv"]);
}

/// `vit eval` on CIFAR-100, with its 100 fine labels and with its 20 coarse ones, gives the
/// PyTorch evaluation's figures: the labels each reads are the same byte of a record
/// (CIFAR-100 has no copy here, so the test set is generated; the models are fresh).
#[test]
fn cifar100_evaluations_match_pytorchs_fine_and_coarse() {
    let root = TempDir::new("cifar100-eval");
    let data_dir = root.join("data");
    let dir = data_dir.join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    let test_set: Vec<u8> = (0..200)
        .flat_map(|i| common::record(&[(i % 20) as u8, (i * 7 % 100) as u8], i))
        .collect();
    std::fs::write(dir.join("test.bin"), test_set).unwrap();
    for (file, count, prefix) in [
        ("fine_label_names.txt", 100, "fine"),
        ("coarse_label_names.txt", 20, "coarse"),
    ] {
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
        std::fs::write(dir.join(file), names.join("\n")).unwrap();
    }
    for (dataset, num_classes) in [("cifar100", 100), ("cifar100-coarse", 20)] {
        let config = ViTConfig {
            num_classes,
            ..ViTConfig::tiny()
        };
        let checkpoint = root.join(format!("{dataset}.safetensors"));
        save_fresh_model(&config, &[("dataset", dataset.into())], &checkpoint);
        #[rustfmt::skip]
        let output = vit(&["eval", "--checkpoint", checkpoint.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap(), "--device", "cpu", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["images"].as_i64(), Some(200), "{dataset}");
        assert_evaluated_as_pytorch_does(&report, &checkpoint, &data_dir);
    }
}

/// A folder of held-out photos needs only `test/`, and may hold some of the model's
/// classes: `vit eval` and `vit attention --index` read that split alone, number its
/// folders by the checkpoint's class names, and refuse a folder that is not one of them;
/// `--index` names its file (the classes taken in turn).
#[test]
fn a_test_only_folder_is_evaluated_and_index_names_its_file() {
    let root = TempDir::new("test-only");
    let photos = root.join("photos");
    let write_class = |class: &str, value: u8| {
        let folder = photos.join("test").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for index in 0..2 {
            image::RgbImage::from_pixel(32, 32, image::Rgb([value, 90, 20 * index]))
                .save(folder.join(format!("{index}.png")))
                .unwrap();
        }
    };
    write_class("cat", 40);
    write_class("dog", 200);
    // Trained on three classes; the folder has two of them, which in name order would be
    // numbered 0 and 1 rather than the model's 1 and 2.
    let config = ViTConfig {
        num_classes: 3,
        ..ViTConfig::tiny()
    };
    let model = root.join("model.safetensors");
    let metadata = [
        ("dataset", "folder".to_string()),
        ("classes", r#"["bird","cat","dog"]"#.to_string()),
    ];
    save_fresh_model(&config, &metadata, &model);
    let (model, photos_dir) = (model.to_str().unwrap(), photos.to_str().unwrap());

    #[rustfmt::skip]
    let output = vit(&["eval", "--checkpoint", model, "--data-dir", photos_dir, "--device", "cpu", "--json"]);
    // Numbered by name, the folder's classes are the model's: no warning that they differ.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["images"], 4);
    assert_eq!(report["per_class_accuracy"][0][0], "bird");
    assert!(report["per_class_accuracy"][0][1].is_null(), "{report}");
    // Three classes are all among the top five: no top-5 accuracy, in JSON or in text.
    assert!(report["top5_accuracy"].is_null(), "{report}");
    #[rustfmt::skip]
    let text = vit(&["eval", "--checkpoint", model, "--data-dir", photos_dir, "--device", "cpu"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("Validation Accuracy: ") && !text.contains("Top-5"),
        "{text}"
    );
    let csv = std::fs::read_to_string(root.join("model.confusion_matrix.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    let row_images = |row: &str| -> i64 {
        row.split(',')
            .skip(1)
            .map(|count| count.parse::<i64>().unwrap())
            .sum()
    };
    assert_eq!(
        rows[1..]
            .iter()
            .map(|row| row_images(row))
            .collect::<Vec<_>>(),
        [0, 2, 2],
        "{csv}"
    );

    let picture = root.join("attention.png");
    #[rustfmt::skip]
    let attention = ["attention", "--checkpoint", model, "--data-dir", photos_dir, "--index", "1", "-o", picture.to_str().unwrap(), "--device", "cpu"];
    let stdout = String::from_utf8(vit(&attention).stdout).unwrap();
    let file = photos.join("test/dog/0.png");
    assert!(
        stdout.contains(&format!("folder test image 1 ({})", file.display()))
            && stdout.contains("true class dog"),
        "{stdout}"
    );
    // That test image alone is decoded: a file after it that cannot be stops it no more.
    let broken = photos.join("test/dog/zz-broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let stdout = String::from_utf8(vit(&attention).stdout).unwrap();
    assert_contains(&stdout, "true class dog");
    std::fs::remove_file(&broken).unwrap();
    // -o naming that very photo would replace it with the picture: refused, as any PNG
    // vit did not draw.
    let photo = std::fs::read(&file).unwrap();
    #[rustfmt::skip]
    let stderr = vit_fails(&["attention", "--checkpoint", model, "--data-dir", photos_dir, "--index", "1", "-o", file.to_str().unwrap(), "--device", "cpu"]);
    assert_contains(
        &stderr,
        "0.png is already there, and is not a picture vit drew",
    );
    assert_eq!(std::fs::read(&file).unwrap(), photo);

    // Folders that are none of the model's classes (a thumbnail cache, say) are named.
    // One that differs from a class in case only is pointed out.
    write_class(".thumbs", 120);
    write_class("emu", 160);
    write_class("Dog", 200);
    #[rustfmt::skip]
    let stderr = vit_fails(&["eval", "--checkpoint", model, "--data-dir", photos_dir, "--device", "cpu"]);
    assert!(
        stderr
            .contains(r#"the classes [".thumbs", "Dog", "emu"] are not among the model's classes"#)
            && stderr
                .contains(r#"("Dog" is "dog" in another case: class names must match exactly)"#)
            && stderr.contains("rename or remove the others"),
        "{stderr}"
    );
    std::fs::remove_dir_all(photos.join("test/Dog")).unwrap();

    // A checkpoint whose names repeat cannot number folders by name: in name order then,
    // with the warning that the names differ.
    std::fs::remove_dir_all(photos.join("test/.thumbs")).unwrap();
    let repeated = [
        ("dataset", "folder".to_string()),
        ("classes", r#"["cat","cat","dog"]"#.to_string()),
    ];
    save_fresh_model(&config, &repeated, Path::new(model));
    #[rustfmt::skip]
    let output = vit(&["eval", "--checkpoint", model, "--data-dir", photos_dir, "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_contains(&stderr, "was trained on the classes");
}
