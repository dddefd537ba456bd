//! Pictures: curves, confusion matrix and attention figure are written with the expected
//! sizes; attention rollout against hand-made cases and a PyTorch golden file.

mod common;

use common::{assert_contains, TempDir};

use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};
use vit_tch::attention::{self, last_layer_heads, rollout};
use vit_tch::checkpoint::{self, TensorFile};
use vit_tch::cli::{AttentionArgs, CheckpointDatasetArgs, DeviceArgs, PlotArgs, ThreadsArgs};
use vit_tch::model::{ViTConfig, VisionTransformer};
use vit_tch::plot::attention_figure_size;
use vit_tch::plot::{self, ConfusionLayout, CURVES_SIZE};

fn png_size(path: &Path) -> (u32, u32) {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (image.width(), image.height())
}

const HEADER: &str =
    "epoch,lr,train_loss,train_acc,test_loss,test_acc,epoch_seconds,images_per_second";

fn write_metrics(dir: &Path, epochs: usize, speed: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut csv = format!("{HEADER}\n");
    for e in 1..=epochs {
        let loss = 2.3 * (-(e as f64) * speed / 10.0).exp() + 0.3;
        let acc = 1.0 - loss / 2.6;
        csv.push_str(&format!(
            "{e},0.001,{loss},{acc},{},{},12.5,4000\n",
            loss + 0.1,
            acc - 0.05
        ));
    }
    std::fs::write(dir.join("metrics.csv"), csv).unwrap();
}

#[test]
fn curves_of_several_runs_as_png_and_svg() {
    let dir = TempDir::new("curves");
    write_metrics(&dir.join("run-a"), 12, 1.0);
    write_metrics(&dir.join("run-b"), 8, 0.7);
    let output = dir.join("out/curves.png");
    plot::run(&PlotArgs {
        runs: vec![dir.join("run-a"), dir.join("run-b")],
        output: output.clone(),
    })
    .unwrap();
    assert_eq!(png_size(&output), CURVES_SIZE);
    let svg = std::fs::read_to_string(dir.join("out/curves.svg")).unwrap();
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..40.min(svg.len())]
    );
    for text in ["run-a train", "run-b test", "epoch", "Accuracy"] {
        assert!(svg.contains(text), "the SVG lacks `{text}`");
    }
}

/// A run trained with `--ema` gets a third, dotted curve in each panel, for its EMA
/// weights; a run without (empty EMA cells, or no such columns) gets none.
#[test]
fn curves_of_the_ema_weights_where_a_run_has_them() {
    let dir = TempDir::new("curves-ema");
    let with_ema = dir.join("strong");
    write_metrics(&with_ema, 3, 1.0);
    let csv = std::fs::read_to_string(with_ema.join("metrics.csv")).unwrap();
    let csv: String = csv
        .lines()
        .enumerate()
        .map(|(row, line)| match row {
            0 => format!("{line},ema_test_loss,ema_test_acc\n"),
            _ => format!("{line},1.5,0.{row}\n"),
        })
        .collect();
    std::fs::write(with_ema.join("metrics.csv"), csv).unwrap();
    let rows = plot::read_metrics(&with_ema.join("metrics.csv")).unwrap();
    assert_eq!(rows[1].ema_test_acc, Some(0.2));
    let without = dir.join("notebook");
    write_metrics(&without, 3, 1.0);
    let output = dir.join("curves.png");
    plot::curves(&[with_ema, without], &output).unwrap();
    let svg = std::fs::read_to_string(dir.join("curves.svg")).unwrap();
    // The legend of each panel names it once; the accuracy panel's gives its best.
    assert_eq!(svg.matches("strong EMA test").count(), 2, "{svg}");
    assert_eq!(
        svg.matches("strong EMA test (best 30.00%, epoch 3)")
            .count(),
        1
    );
    assert!(!svg.contains("notebook EMA test"));
    assert!(svg.contains("notebook test"));
}

/// The accuracy panel's legend gives each run's best test accuracy and its epoch, the
/// first of tied ones, as the run keeps its best model; its train curve, and the loss
/// panel, get none. The ring that marks the best sits on that epoch's point of the test
/// curve (the first of the tied ones), not on another epoch's.
#[test]
fn the_legend_gives_the_best_test_accuracy_and_its_epoch() {
    let dir = TempDir::new("curves-best");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let rows = [(0.4, 0.5), (0.6, 0.7), (0.9, 0.7), (0.8, 0.6)];
    let mut csv = format!("{HEADER}\n");
    for (epoch, (train_acc, test_acc)) in rows.iter().enumerate() {
        let epoch = epoch + 1;
        csv.push_str(&format!(
            "{epoch},0.001,1.0,{train_acc},1.1,{test_acc},12.5,4000\n"
        ));
    }
    std::fs::write(run.join("metrics.csv"), csv).unwrap();
    plot::curves(&[&run], &dir.join("curves.png")).unwrap();
    let svg = std::fs::read_to_string(dir.join("curves.svg")).unwrap();
    assert_eq!(
        svg.matches("run test (best 70.00%, epoch 2)").count(),
        1,
        "{svg}"
    );
    assert_eq!(svg.matches("(best ").count(), 1, "{svg}");
    // One ring marks that point.
    assert_eq!(svg.matches(r#"r="6""#).count(), 1, "{svg}");
    // Where: on the test curve's marker of epoch 2. The test curve is dashed, so its
    // markers are the hollow ones, one an epoch in each panel; the accuracy panel's are
    // drawn last.
    let circles = svg_circles(&svg);
    let ring: Vec<_> = circles.iter().filter(|c| c.r == "6").collect();
    let test_markers: Vec<_> = circles
        .iter()
        .filter(|c| c.r == "3" && c.fill == "none")
        .collect();
    assert_eq!(ring.len(), 1, "{svg}");
    assert_eq!(test_markers.len(), 2 * rows.len(), "{svg}");
    let accuracy_markers = &test_markers[rows.len()..];
    let centre = |c: &SvgCircle| (c.cx, c.cy);
    // Epochs 2 and 3 tie at 70%: same height, different places; epoch 4 is lower.
    assert_eq!(accuracy_markers[1].cy, accuracy_markers[2].cy, "{svg}");
    assert_ne!(accuracy_markers[1].cx, accuracy_markers[2].cx, "{svg}");
    assert_ne!(accuracy_markers[1].cy, accuracy_markers[3].cy, "{svg}");
    assert_eq!(
        centre(ring[0]),
        centre(accuracy_markers[1]),
        "the best-accuracy ring is not on epoch 2's point of the test curve; the test \
         curve's points, epoch 1 to 4: {:?}",
        accuracy_markers
            .iter()
            .map(|c| centre(c))
            .collect::<Vec<_>>()
    );
}

/// A `<circle>` of an SVG vit drew: its centre, radius and fill.
struct SvgCircle {
    cx: i64,
    cy: i64,
    r: String,
    fill: String,
}

/// The circles of `svg`, in the order they are drawn.
fn svg_circles(svg: &str) -> Vec<SvgCircle> {
    fn attribute<'a>(element: &'a str, name: &str) -> &'a str {
        let start = element
            .find(&format!(" {name}=\""))
            .unwrap_or_else(|| panic!("no {name} in {element}"))
            + name.len()
            + 3;
        let length = element[start..].find('"').unwrap();
        &element[start..start + length]
    }
    svg.split("<circle")
        .skip(1)
        .map(|element| {
            let element = &element[..element.find("/>").unwrap()];
            let number = |name| attribute(element, name).parse().unwrap();
            SvgCircle {
                cx: number("cx"),
                cy: number("cy"),
                r: attribute(element, "r").to_string(),
                fill: attribute(element, "fill").to_string(),
            }
        })
        .collect()
}

#[test]
fn curves_after_the_first_epoch_as_train_plot_calls_it() {
    let dir = TempDir::new("first-epoch");
    write_metrics(&dir, 1, 1.0);
    plot::curves(&[&*dir], &dir.join("curves.png")).unwrap();
    assert_eq!(png_size(&dir.join("curves.png")), CURVES_SIZE);
    // Refreshing overwrites the picture in place.
    write_metrics(&dir, 2, 1.0);
    plot::curves(&[&*dir], &dir.join("curves.png")).unwrap();
    assert_eq!(png_size(&dir.join("curves.png")), CURVES_SIZE);
    assert!(dir.join("curves.svg").is_file());
}

#[test]
fn curves_without_metrics_is_an_error_naming_the_file() {
    let dir = TempDir::new("no-metrics");
    let err = plot::curves(&[&*dir], &dir.join("curves.png")).unwrap_err();
    let expected = format!(
        "{} has no metrics.csv, so it is not a run folder of vit train (or its run has not \
         started)",
        dir.display()
    );
    assert!(format!("{err:#}").starts_with(&expected), "{err:#}");
    let missing = dir.join("no-such-run");
    let err = plot::curves(&[&missing], &dir.join("curves.png")).unwrap_err();
    let expected = format!(
        "{} does not exist: give vit train's run folders, or their metrics.csv files",
        missing.display()
    );
    assert_eq!(format!("{err:#}"), expected);
    // A run with no finished epoch is left out, and alone it is an error; a file that is
    // not a metrics.csv is an error.
    std::fs::write(dir.join("metrics.csv"), format!("{HEADER}\n")).unwrap();
    let err = plot::curves(&[&*dir], &dir.join("curves.png")).unwrap_err();
    let expected = format!(
        "nothing to draw: no finished epochs yet in {}",
        dir.join("metrics.csv").display()
    );
    assert!(format!("{err:#}").contains(&expected), "{err:#}");
    write_metrics(&dir.join("done"), 3, 1.0);
    let runs = plot::read_runs(&[dir.join("done"), dir.to_path_buf()]).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].label.as_str(), runs[0].epochs.len()), ("done", 3));
    let picture = dir.join("cat.jpg");
    std::fs::write(&picture, "not a table").unwrap();
    let err = plot::curves(&[&picture], &dir.join("curves.png")).unwrap_err();
    assert!(
        format!("{err:#}").contains("cat.jpg is not a metrics.csv"),
        "{err:#}"
    );
    assert!(!dir.join("curves.png").exists());
}

/// A run folder whose metrics.csv is a named pipe is refused at once (reading it waited
/// for a writer forever), and no picture is written.
#[test]
fn a_metrics_file_that_is_a_pipe_is_refused_at_once() {
    let dir = TempDir::new("metrics-pipe");
    let pipe = dir.join("metrics.csv");
    let made = std::process::Command::new("mkfifo").arg(&pipe).status();
    assert!(made.unwrap().success());
    let output_png = dir.join("curves.png");
    let output = common::run_vit_bounded(&[
        "plot",
        dir.to_str().unwrap(),
        "--output",
        output_png.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "{} is a named pipe (FIFO), not the metrics file vit train writes",
        pipe.display()
    );
    assert_contains(&stderr, &expected);
    assert!(!output_png.exists());
}

/// Runs with epochs but not one number to draw are refused, as runs without epochs are,
/// rather than drawn as empty axes; beside a run with numbers they are left out as before.
#[test]
fn runs_without_a_number_to_draw_are_an_error_and_no_picture() {
    let dir = TempDir::new("no-numbers");
    let (no_curves, not_numbers, no_epochs) =
        (dir.join("lr-only"), dir.join("text"), dir.join("starting"));
    for (run, csv) in [
        (&no_curves, "epoch,lr\n1,abc\n".to_string()),
        (
            &not_numbers,
            "epoch,train_loss,test_acc\n1,abc,\n2,inf,n/a\n".to_string(),
        ),
        (&no_epochs, format!("{HEADER}\n")),
    ] {
        std::fs::create_dir_all(run).unwrap();
        std::fs::write(run.join("metrics.csv"), csv).unwrap();
    }
    let output = dir.join("curves.png");
    let err = plot::run(&PlotArgs {
        runs: vec![no_curves.clone(), not_numbers.clone(), no_epochs.clone()],
        output: output.clone(),
    })
    .unwrap_err();
    let expected = format!(
        "nothing to draw: not one finite number in the columns train_loss, train_acc, \
         test_loss, test_acc, ema_test_loss, ema_test_acc of {}, {}, and no finished epochs \
         yet in {}; plot the folders of runs that `vit train` wrote",
        no_curves.join("metrics.csv").display(),
        not_numbers.join("metrics.csv").display(),
        no_epochs.join("metrics.csv").display()
    );
    assert!(format!("{err:#}").contains(&expected), "{err:#}");
    assert!(!output.exists() && !dir.join("curves.svg").exists());
    write_metrics(&dir.join("done"), 2, 1.0);
    plot::curves(&[no_curves, dir.join("done")], &output).unwrap();
    assert_eq!(png_size(&output), CURVES_SIZE);
}

#[test]
fn a_run_given_twice_is_drawn_once_under_its_folder_name() {
    let dir = TempDir::new("twice");
    write_metrics(&dir.join("a"), 3, 1.0);
    write_metrics(&dir.join("b").join("a"), 2, 1.0);
    // The same run as a folder, with a trailing slash, through `..`, and as its metrics
    // file; labelled by its folder's real name.
    let spellings = [
        dir.join("b").join(".."),
        PathBuf::from(format!("{}/", dir.join("a").display())),
        dir.join("a"),
        dir.join("a").join("metrics.csv"),
    ];
    let runs = plot::read_runs(&spellings[1..]).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].label.as_str(), runs[0].epochs.len()), ("a", 3));
    write_metrics(&dir, 1, 1.0);
    let runs = plot::read_runs(&spellings[..1]).unwrap();
    assert_eq!(runs[0].label, dir.file_name().unwrap().to_str().unwrap());
    // Two different runs of one folder name are told apart by their folders as given.
    let runs =
        plot::read_runs(&[dir.join("a").join("metrics.csv"), dir.join("b").join("a")]).unwrap();
    let labels: Vec<&str> = runs.iter().map(|run| run.label.as_str()).collect();
    let expected = [
        dir.join("a").display().to_string(),
        dir.join("b").join("a").display().to_string(),
    ];
    assert_eq!(labels, expected);
    // One given as `..` (as `.` from inside it) is labelled by its full path instead.
    std::fs::create_dir_all(dir.join("b").join("a").join("sub")).unwrap();
    let up = dir.join("b").join("a").join("sub").join("..");
    let runs = plot::read_runs(&[dir.join("a"), up.clone()]).unwrap();
    let full = std::fs::canonicalize(&up).unwrap();
    assert_eq!(runs[1].label, full.display().to_string());
}

#[test]
fn a_cell_that_is_not_a_number_is_left_out_and_an_epoch_must_be_one() {
    let dir = TempDir::new("not-numbers");
    let path = dir.join("metrics.csv");
    std::fs::write(
        &path,
        format!("{HEADER}\n1,0.001,2.1,0.2,n/a,0.3,3.0,100\n2,0.001,NaN,0.3,1.9, 0.4 ,3.0,100\n"),
    )
    .unwrap();
    let rows = plot::read_metrics(&path).unwrap();
    assert_eq!((rows[0].test_loss, rows[0].test_acc), (None, Some(0.3)));
    // vit train stops at a loss that is not finite, so "NaN" and "inf" are edits.
    assert_eq!((rows[1].train_loss, rows[1].test_acc), (None, Some(0.4)));
    std::fs::write(
        &path,
        format!("{HEADER}\n1,0.001,inf,0.2,-inf,0.3,3.0,100\n"),
    )
    .unwrap();
    let rows = plot::read_metrics(&path).unwrap();
    assert_eq!((rows[0].train_loss, rows[0].test_loss), (None, None));
    // Names with spaces around them are found; an empty row (as spreadsheets write) is
    // skipped.
    let spaced = HEADER.replace(',', ", ");
    std::fs::write(
        &path,
        format!("{spaced}\n1,0.001,2.1,0.2,2.0,0.3,3.0,100\n,,,,,,,\n"),
    )
    .unwrap();
    let rows = plot::read_metrics(&path).unwrap();
    assert_eq!((rows.len(), rows[0].test_acc), (1, Some(0.3)));
    // An epoch that is not a finite number is an error naming its line.
    for epoch in ["ii", "inf", "NaN"] {
        std::fs::write(
            &path,
            format!("{HEADER}\n1,0.001,2.1,0.2,2.0,0.3,3.0,100\n{epoch},,,,,,,\n"),
        )
        .unwrap();
        let err = format!("{:#}", plot::read_metrics(&path).unwrap_err());
        assert!(
            err.contains("line 3 has no finite epoch number"),
            "{epoch}: {err}"
        );
    }
}

#[test]
fn pictures_are_written_only_as_png() {
    let dir = TempDir::new("png-only");
    write_metrics(&dir, 2, 1.0);
    for name in ["curves.svg", "curves.jpg", "curves"] {
        let output = dir.join(name);
        let plotted = plot::run(&PlotArgs {
            runs: vec![dir.to_path_buf()],
            output: output.clone(),
        });
        let err = format!("{:#}", plotted.unwrap_err());
        assert_contains(&err, "does not end in .png");
        assert!(!output.exists());
    }
}

/// `-o NAME.png` also writes NAME.svg: an SVG or a PNG of the user's there (or a folder) is
/// kept, and refused by name; one vit drew is replaced, as a second `vit plot` does.
#[test]
fn a_png_or_svg_that_vit_did_not_draw_is_kept() {
    let dir = TempDir::new("svg-kept");
    write_metrics(&dir.join("run"), 3, 1.0);
    let output = dir.join("curves.png");
    let args = PlotArgs {
        runs: vec![dir.join("run")],
        output: output.clone(),
    };
    let svg = dir.join("curves.svg");
    let drawing = "<svg xmlns=\"http://www.w3.org/2000/svg\"><circle r=\"4\"/></svg>\n";
    for theirs in [drawing, ""] {
        std::fs::write(&svg, theirs).unwrap();
        let err = format!("{:#}", plot::run(&args).unwrap_err());
        assert!(
            err.contains("curves.svg is already there") && err.contains("another PNG with -o"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&svg).unwrap(), theirs);
        assert!(!output.exists(), "nothing is drawn when the SVG is refused");
    }

    // The same for the PNG itself: one of the user's is kept, and refused by name.
    std::fs::remove_file(&svg).unwrap();
    image::RgbImage::new(4, 4).save(&output).unwrap();
    let theirs = std::fs::read(&output).unwrap();
    let err = format!("{:#}", plot::run(&args).unwrap_err());
    assert!(
        err.contains("curves.png is already there, and is not a picture vit drew")
            && err.contains("another PNG with -o"),
        "{err}"
    );
    assert_eq!(std::fs::read(&output).unwrap(), theirs);
    assert!(!svg.exists());

    std::fs::remove_file(&output).unwrap();
    plot::run(&args).unwrap();
    let first = std::fs::read_to_string(&svg).unwrap();
    write_metrics(&dir.join("run"), 5, 1.0);
    plot::run(&args).unwrap();
    let second = std::fs::read_to_string(&svg).unwrap();
    assert_ne!(
        first, second,
        "vit's own SVG is redrawn with the new epochs"
    );

    std::fs::remove_file(&svg).unwrap();
    std::fs::create_dir(&svg).unwrap();
    let err = format!("{:#}", plot::run(&args).unwrap_err());
    assert_contains(&err, "cannot check whether");
    assert!(svg.is_dir());

    // A file where the output's folder should be: no SVG can be there, and the PNG's
    // writing names the file in the way.
    let in_the_way = dir.join("a-file");
    std::fs::write(&in_the_way, "the user's").unwrap();
    let err = format!(
        "{:#}",
        plot::run(&PlotArgs {
            runs: vec![dir.join("run")],
            output: in_the_way.join("curves.png"),
        })
        .unwrap_err()
    );
    assert_contains(&err, "a-file is a file, not a folder");
    // It is found before any run is read.
    let err = format!(
        "{:#}",
        plot::run(&PlotArgs {
            runs: vec![dir.join("no-such-run")],
            output: in_the_way.join("curves.png"),
        })
        .unwrap_err()
    );
    assert_contains(&err, "a-file is a file, not a folder");

    // A folder named as the picture is refused, before any run is read.
    let folder = dir.join("pictures.png");
    std::fs::create_dir(&folder).unwrap();
    let err = format!(
        "{:#}",
        plot::run(&PlotArgs {
            runs: vec![dir.join("no-such-run")],
            output: folder.clone(),
        })
        .unwrap_err()
    );
    assert_contains(&err, "pictures.png is a folder: name a file, such as");
    // A command that fails leaves no folder of the picture's behind.
    let new_folder = dir.join("new");
    let result = plot::run(&PlotArgs {
        runs: vec![dir.join("no-such-run")],
        output: new_folder.join("deep/curves.png"),
    });
    assert!(result.is_err());
    assert!(!new_folder.exists());
}

#[test]
fn confusion_matrix_for_3_10_and_100_classes() {
    let dir = TempDir::new("confusion");
    for k in [3i64, 10, 100] {
        let classes: Vec<String> = (0..k).map(|i| format!("class-{i}")).collect();
        // Mostly right, some mistakes to the next class; row i holds (i + 1) * 100 images,
        // so that shares of a column (or of the whole) differ from shares of the row.
        let rows = Tensor::arange_start(1, k + 1, (Kind::Int64, Device::Cpu)).view([k, 1]);
        let confusion = (Tensor::eye(k, (Kind::Int64, Device::Cpu)) * 90
            + Tensor::eye(k, (Kind::Int64, Device::Cpu)).roll([1], [1]) * 10)
            * rows;
        let output = dir.join(format!("confusion_{k}.png"));
        plot::confusion_matrix(&confusion, &classes, &output).unwrap();
        let layout = ConfusionLayout::new(&classes);
        assert_eq!(png_size(&output), layout.size);
        // Each cell is shaded by its share of the row: 0.9 on the diagonal, 0.1 next to
        // it, 0 elsewhere (sampled inside the cell's corner, clear of the count text).
        let picture = image::open(&output).unwrap().into_rgb8();
        let k = k as usize;
        for row in [0, k / 2, k - 1] {
            for (col, share) in [(row, 0.9), ((row + 1) % k, 0.1), ((row + 2) % k, 0.0)] {
                let (x, y) = layout.cell_origin(row, col);
                let pixel = picture.get_pixel(x + 2, y + 2).0;
                let expected = plot::blues(share);
                assert_eq!(
                    pixel,
                    [expected.0, expected.1, expected.2],
                    "cell ({row}, {col}) of {k} classes"
                );
            }
        }
    }
    // A very long class name is shortened, not given a margin of its own length.
    let classes = ["a".to_string(), "m".repeat(250), "z".to_string()];
    let output = dir.join("long-name.png");
    plot::confusion_matrix(
        &Tensor::eye(3, (Kind::Int64, Device::Cpu)),
        &classes,
        &output,
    )
    .unwrap();
    let (width, height) = png_size(&output);
    assert!(width < 800 && height < 800, "{width}x{height}");
    let wrong = plot::confusion_matrix(
        &Tensor::zeros([3, 3], (Kind::Int64, Device::Cpu)),
        &["a".to_string(), "b".to_string()],
        &dir.join("wrong.png"),
    );
    assert!(wrong.is_err());
}

/// The middle pixel (median x, median y) of those of colour `colour` in `picture`: a
/// cell's centre, as a cell is far larger than the few rows of the colour bar that may
/// share its colour, or the text over it.
fn middle_of(picture: &image::RgbImage, colour: plotters::style::RGBColor) -> (f64, f64) {
    let (mut xs, mut ys): (Vec<u32>, Vec<u32>) = picture
        .enumerate_pixels()
        .filter(|(_, _, pixel)| pixel.0 == [colour.0, colour.1, colour.2])
        .map(|(x, y, _)| (x, y))
        .unzip();
    assert!(xs.len() > 1000, "{} pixels of {colour:?}", xs.len());
    xs.sort_unstable();
    ys.sort_unstable();
    (xs[xs.len() / 2] as f64, ys[ys.len() / 2] as f64)
}

/// Where the cells are, found in the picture itself rather than through the layout that
/// draws them: rows are true classes from the top, columns predicted ones from the left.
/// Class 0's images are 70% right and 30% predicted as class 2; classes 1 and 2 all right.
#[test]
fn the_confusion_picture_has_true_classes_down_and_predicted_ones_across() {
    let dir = TempDir::new("confusion-orientation");
    let classes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let confusion = Tensor::from_slice2(&[[70i64, 0, 30], [0, 100, 0], [0, 0, 100]]);
    let output = dir.join("confusion.png");
    plot::confusion_matrix(&confusion, &classes, &output).unwrap();
    let picture = image::open(&output).unwrap().into_rgb8();
    let (x0, y0) = middle_of(&picture, plot::blues(0.7));
    let (x2, y2) = middle_of(&picture, plot::blues(0.3));
    // The two cells of 100% (1, 1) and (2, 2): their pixels' middle is where they meet,
    // one and a half cells right of and below the centre of (0, 0).
    let (xd, yd) = middle_of(&picture, plot::blues(1.0));
    let cell = (yd - y0) / 1.5;
    assert!(
        cell > 20.0,
        "the diagonal runs down from (0, 0): cell {cell}"
    );
    assert!(
        (xd - x0 - 1.5 * cell).abs() <= 3.0,
        "diagonal at {xd}, cell {cell}"
    );
    // The mistake: in the top row (class 0's), two cells right of the diagonal's first.
    assert!((y2 - y0).abs() <= 3.0, "(0, 2) at y {y2}, (0, 0) at {y0}");
    assert!(
        (x2 - x0 - 2.0 * cell).abs() <= 3.0,
        "(0, 2) at x {x2}, (0, 0) at {x0}, cell {cell}"
    );
}

/// A tiny checkpoint (random weights) and a non-square PNG, then `vit attention`.
#[test]
fn attention_figure_from_a_checkpoint_and_an_image_file() {
    tch::manual_seed(0);
    let dir = TempDir::new("attention");
    let config = ViTConfig::tiny();
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = VisionTransformer::new(&vs.root(), &config).unwrap();
    let ckpt = dir.join("tiny.safetensors");
    checkpoint::save(&vs, &config, &[], &ckpt).unwrap();

    let picture = image::RgbImage::from_fn(48, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x + y) * 3) as u8])
    });
    let input = dir.join("input.png");
    picture.save(&input).unwrap();

    let args = |output: PathBuf| AttentionArgs {
        checkpoint: ckpt.clone(),
        image: Some(input.clone()),
        // As the command line gives them without a test image's flags.
        data: CheckpointDatasetArgs {
            dataset: None,
            data_dir: PathBuf::from("data"),
            coarse_labels: false,
        },
        index: None,
        output,
        device: DeviceArgs {
            device: Some("cpu".into()),
            threads: ThreadsArgs { threads: None },
        },
    };
    let output = dir.join("attn.png");
    attention::run(&args(output.clone())).unwrap();
    assert_eq!(
        png_size(&output),
        attention_figure_size(config.num_heads as usize)
    );

    // A PNG vit did not draw is kept, and refused by name, the input image among them.
    let before = std::fs::read(&input).unwrap();
    let err = attention::run(&args(input.clone())).unwrap_err();
    let err = format!("{err:#}");
    assert_contains(
        &err,
        "input.png is already there, and is not a picture vit drew",
    );
    assert_eq!(std::fs::read(&input).unwrap(), before);
    // One vit drew is replaced, unless it is the input image (spelled another way).
    attention::run(&args(output.clone())).unwrap();
    let drawn = std::fs::read(&output).unwrap();
    let err = attention::run(&AttentionArgs {
        image: Some(output.clone()),
        ..args(dir.join(".").join("attn.png"))
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("is the input image"), "{err:#}");
    assert_eq!(std::fs::read(&output).unwrap(), drawn);
}

/// Attention maps for `layers` layers of `[batch, heads, tokens, tokens]`, all `map`.
fn repeated(map: &Tensor, layers: usize) -> Vec<Tensor> {
    (0..layers).map(|_| map.shallow_clone()).collect()
}

#[test]
fn rollout_of_identity_attention_is_uniform() {
    let (batch, heads, tokens) = (2, 3, 17);
    let eye = Tensor::eye(tokens, (Kind::Float, Device::Cpu))
        .expand([batch, heads, tokens, tokens], false);
    let map = rollout(&repeated(&eye, 4));
    assert_eq!(map.size(), [batch, tokens - 1]);
    // Every token attends to itself only: the class token takes nothing from any patch,
    // and every patch gets the same (zero) weight.
    let first = map.select(1, 0).unsqueeze(1);
    assert!(map.allclose(&first.expand_as(&map), 0.0, 0.0, false));
    assert!(map.abs().max().double_value(&[]) < 1e-7);

    // Uniform attention everywhere: every patch gets the same share.
    let uniform = Tensor::full(
        [batch, heads, tokens, tokens],
        1.0 / tokens as f64,
        (Kind::Float, Device::Cpu),
    );
    let map = rollout(&repeated(&uniform, 3));
    let expected = map.mean_dim(1, true, Kind::Float).expand_as(&map);
    assert!(map.allclose(&expected, 1e-6, 1e-7, false), "{map}");
    assert!(map.min().double_value(&[]) > 0.0);
}

#[test]
fn rollout_of_a_single_layer_is_its_renormalised_head_mean() {
    let map = Tensor::rand([1, 2, 5, 5], (Kind::Double, Device::Cpu)).softmax(-1, Kind::Double);
    let a = map.mean_dim(1, false, Kind::Double) + Tensor::eye(5, (Kind::Double, Device::Cpu));
    let a = &a / a.sum_dim_intlist(-1, true, Kind::Double);
    let expected = a.select(1, 0).narrow(-1, 1, 4);
    assert!(rollout(&[map]).allclose(&expected, 0.0, 1e-12, false));
}

#[test]
fn rollout_matches_pytorch() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rollout.safetensors");
    let file = TensorFile::read(&path).unwrap_or_else(|e| {
        panic!("{e:#}\n(regenerate with `.venv/bin/python tests/reference/rollout.py`)")
    });
    let layers: usize = file.metadata["layers"].parse().unwrap();
    let maps: Vec<Tensor> = (0..layers)
        .map(|i| file.get(&format!("attn.{i}")).unwrap().shallow_clone())
        .collect();
    let expected = file.get("rollout").unwrap();

    // In float32, as `vit attention` computes it.
    let got = rollout(&maps);
    assert_eq!(got.kind(), Kind::Float);
    let err = (got.to_kind(Kind::Double) - expected)
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-6, "float32 rollout differs from PyTorch by {err}");

    // In float64 the two agree to rounding.
    let doubles: Vec<Tensor> = maps.iter().map(|m| m.to_kind(Kind::Double)).collect();
    let err = (rollout(&doubles) - expected).abs().max().double_value(&[]);
    assert!(err < 1e-12, "float64 rollout differs from PyTorch by {err}");

    let heads = last_layer_heads(&maps);
    assert!(heads.equal(file.get("last_heads").unwrap()));
}

#[test]
fn metrics_with_blank_or_missing_columns_still_plot() {
    let dir = TempDir::new("blank");
    std::fs::write(
        dir.join("metrics.csv"),
        format!("{HEADER}\n1,0.001,2.1,0.2,,,3.0,100\n2,0.001,1.9,0.3,1.95,0.28,3.0,100\n"),
    )
    .unwrap();
    let rows = plot::read_metrics(&dir.join("metrics.csv")).unwrap();
    assert_eq!(rows[0].test_loss, None);
    assert_eq!(rows[1].test_acc, Some(0.28));
    let old = dir.join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(
        old.join("metrics.csv"),
        "epoch,train_loss,train_acc\n1,2.0,0.25\n",
    )
    .unwrap();
    plot::curves(&[dir.to_path_buf(), old], &dir.join("curves.png")).unwrap();
    assert_eq!(png_size(&dir.join("curves.png")), CURVES_SIZE);
}

/// A metrics.csv saved again by a spreadsheet reads as vit wrote it: with semicolons and
/// decimal commas (a locale whose decimal mark is a comma), a byte-order mark and CRLF
/// line ends, or with tabs and quoted names.
#[test]
fn a_metrics_csv_saved_by_a_spreadsheet_with_semicolons_or_tabs_still_plots() {
    let dir = TempDir::new("spreadsheet");
    let written = dir.join("metrics.csv");
    let rows = "1,0.001,2.1,0.25,2.0,0.3,3.0,100\n2,0.001,1.9,0.375,1.8,0.5,3.0,100\n";
    std::fs::write(&written, format!("{HEADER}\n{rows}")).unwrap();
    let expected = plot::read_metrics(&written).unwrap();
    assert_eq!(expected[1].test_acc, Some(0.5));
    let semicolons = format!(
        "\u{feff}{}\r\n1;0,001;2,1;0,25;2;0,3;3;100\r\n2;0,001;1,9;0,375;1,8;0,5;3;100\r\n",
        HEADER.replace(',', ";")
    );
    let tabs = format!(
        "\"{}\"\n{}",
        HEADER.replace(',', "\"\t\""),
        rows.replace(',', "\t")
    );
    for text in [semicolons, tabs] {
        let saved = dir.join("saved.csv");
        std::fs::write(&saved, &text).unwrap();
        assert_eq!(plot::read_metrics(&saved).unwrap(), expected, "{text:?}");
    }
}

/// The error of `vit plot`'s reader for a metrics.csv at `path` of vit's header and `rows`.
fn refusal(path: &Path, rows: &str) -> String {
    std::fs::write(path, format!("{HEADER}\n{rows}")).unwrap();
    format!("{:#}", plot::read_metrics(path).unwrap_err())
}

/// Epochs are whole numbers from 1, each row's above the one before: a row repeated,
/// moved or made up is refused naming its line (it drew the curve back over itself, and a
/// repeated epoch was the best one twice).
#[test]
fn epochs_out_of_order_or_not_whole_are_refused_naming_the_line() {
    let dir = TempDir::new("epochs");
    let path = dir.join("metrics.csv");
    let row = |epoch: &str| format!("{epoch},0.001,2.1,0.2,2.0,0.3,3.0,100\n");
    for (epochs, expected) in [
        (["1", "1"], "line 3's epoch 1 comes after epoch 1"),
        (["3", "1"], "line 3's epoch 1 comes after epoch 3"),
        (
            ["1", "1.5"],
            "line 3's epoch is 1.5, but vit train numbers its epochs 1, 2, 3",
        ),
        (["0", "1"], "line 2's epoch is 0, but"),
        (["-1", "2"], "line 2's epoch is -1, but"),
    ] {
        let err = refusal(&path, &epochs.map(row).concat());
        assert!(err.contains(expected), "{epochs:?}: {err}");
        assert!(
            err.contains("remove or correct that line")
                || err.contains("correct or remove that line"),
            "{err}"
        );
    }
    // A gap (epochs a run's resume lost, say) is drawn as it is.
    std::fs::write(&path, format!("{HEADER}\n{}{}", row("1"), row("3"))).unwrap();
    assert_eq!(plot::read_metrics(&path).unwrap().len(), 2);
}

/// More runs than colours are refused before anything is read or drawn: two runs would
/// share a colour, and the legends would cover the curves. Ten draw.
#[test]
fn more_runs_than_colours_are_refused() {
    let dir = TempDir::new("many-runs");
    let runs: Vec<PathBuf> = (1..=11).map(|run| dir.join(format!("run{run}"))).collect();
    for run in &runs {
        write_metrics(run, 2, 1.0);
    }
    let output = dir.join("curves.png");
    let err = plot::run(&PlotArgs {
        runs: runs.clone(),
        output: output.clone(),
    })
    .unwrap_err();
    assert!(
        format!("{err:#}").contains(
            "vit plot draws up to 10 runs, one colour each, and was given 11: plot them in \
             groups of at most 10"
        ),
        "{err:#}"
    );
    assert!(!output.exists());
    plot::curves(&runs[..10], &output).unwrap();
    assert_eq!(png_size(&output), CURVES_SIZE);
}

#[test]
fn accuracies_in_percent_are_refused_naming_the_cell() {
    let dir = TempDir::new("percent");
    let path = dir.join("metrics.csv");
    // The ends of the range are accuracies; 25 (percent) is not.
    let err = refusal(
        &path,
        "1,0.001,2.1,0,2.0,1,3.0,100\n2,0.001,2.0,0.5,1.9,25,3.0,100\n",
    );
    assert!(
        err.contains("test_acc is 25 on line 3") && err.contains("divide it by 100"),
        "{err}"
    );
    // Below 0 it is no percentage: the advice is not given.
    let err = refusal(&path, "1,0.001,2.1,-0.1,2.0,0.3,3.0,100\n");
    assert!(
        err.contains("train_acc is -0.1 on line 2, but accuracies there are fractions from 0 to 1")
            && !err.contains("percentages"),
        "{err}"
    );
    std::fs::write(&path, format!("{HEADER}\n1,0.001,2.1,0,2.0,1,3.0,100\n")).unwrap();
    let rows = plot::read_metrics(&path).unwrap();
    assert_eq!(
        (rows[0].train_acc, rows[0].test_acc),
        (Some(0.0), Some(1.0))
    );
}

/// A loss larger than float32's largest (an edit: vit train's losses are float32) is
/// refused naming its cell: near f64's largest, the loss axis's top overflowed to infinity
/// and plotters never finished dividing it into ticks. So is a negative one (a
/// cross-entropy is not). Float32's largest and 0 still draw.
#[test]
fn losses_beyond_float32_or_below_0_are_refused_naming_the_cell() {
    let dir = TempDir::new("huge-loss");
    let path = dir.join("metrics.csv");
    let err = refusal(&path, "1,0.001,1.75e308,0.1,2.0,0.1,3.0,100\n");
    assert_contains(
        &err,
        "train_loss is 1.75e308 on line 2, larger than any loss vit train writes",
    );
    let err = refusal(&path, "1,0.001,2.1,0.1,-5,0.3,3.0,100\n");
    assert!(
        err.contains(
            "test_loss is -5 on line 2, but losses there are cross-entropies, never below 0"
        ),
        "{err}"
    );
    std::fs::write(
        &path,
        format!("{HEADER}\n1,0.001,3.4e38,0.1,2.0,0.1,3.0,100\n2,0.001,2.0,0.2,0,0.2,3.0,100\n"),
    )
    .unwrap();
    plot::curves(&[dir.to_path_buf()], &dir.join("curves.png")).unwrap();
    assert_eq!(png_size(&dir.join("curves.png")), CURVES_SIZE);
}

/// A refused row is named by its line as an editor numbers it, whatever ends the lines
/// (a spreadsheet saves CRLF) and however many blank lines come before it: csv's own count
/// said line 2 for the CRLF file's third line, line 1 for the CR-only one's.
#[test]
fn a_refused_row_is_named_by_its_line_in_the_editor() {
    let dir = TempDir::new("row-lines");
    let path = dir.join("metrics.csv");
    let (good, bad) = (
        "1,0.001,2.1,0.5,2.0,0.5,3.0,100",
        "2,0.001,2.1,0.5,2.0,25,3.0,100",
    );
    for (text, line) in [
        (format!("{HEADER}\r\n{good}\r\n{bad}\r\n"), 3),
        (format!("{HEADER}\r{good}\r{bad}\r"), 3),
        (format!("{HEADER}\n{good}\n\n\n{bad}\n"), 5),
        (format!("{HEADER}\r\n{good}\r\n\r\n{bad}\r\n"), 4),
    ] {
        std::fs::write(&path, &text).unwrap();
        let err = format!("{:#}", plot::read_metrics(&path).unwrap_err());
        assert!(
            err.contains(&format!("test_acc is 25 on line {line}")),
            "{text:?}: {err}"
        );
    }
}

/// Every accuracy column is checked, below 0 as above 1: a train_acc of -0.5 and an
/// ema_test_acc of 50 are refused by their column and line.
#[test]
fn accuracies_outside_0_to_1_are_refused_in_each_accuracy_column() {
    let dir = TempDir::new("accuracy-range");
    let path = dir.join("metrics.csv");
    for (row, refused) in [
        (
            "1,0.001,2.1,-0.5,2.0,0.5,3.0,100,2.0,0.5",
            "train_acc is -0.5 on line 2",
        ),
        (
            "1,0.001,2.1,0.5,2.0,0.5,3.0,100,2.0,50",
            "ema_test_acc is 50 on line 2",
        ),
    ] {
        let text = format!("{HEADER},ema_test_loss,ema_test_acc\n{row}\n");
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", plot::read_metrics(&path).unwrap_err());
        assert_contains(&err, refused);
    }
}
