//! torchvision's ImageFolder layout: `DIR/train/<class>/*.png|jpg|jpeg` and
//! `DIR/test/<class>/*.png|jpg|jpeg`, classes sorted by name (label = index in that order),
//! files found recursively under each class folder and sorted by path, then the classes
//! interleaved.
//!
//! Every image is decoded with the `image` crate, converted to RGB, resized to
//! `image_size`×`image_size` (bilinear, antialiased when shrinking) when it is not already
//! that size, and written in CHW order into one uint8 tensor. Decoding is spread over the
//! available cores.

use super::{Dataset, Split};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// An image file and its label.
pub type LabeledFile = (PathBuf, i64);

pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Reads `root/train` and `root/test`; the test split must have the same classes.
pub fn load(root: &Path, image_size: i64) -> Result<Dataset> {
    if image_size <= 0 {
        bail!("--image-size must be positive, got {image_size}");
    }
    let (classes, train_files) = scan_split(&root.join("train"))?;
    let (test_classes, test_files) = scan_split(&root.join("test"))?;
    if test_classes != classes {
        let only_train: Vec<_> = classes
            .iter()
            .filter(|c| !test_classes.contains(c))
            .collect();
        let only_test: Vec<_> = test_classes
            .iter()
            .filter(|c| !classes.contains(c))
            .collect();
        bail!(
            "{}: the test classes differ from the train classes (only in train: {:?}; only in \
             test: {:?}); both splits need the same class folders",
            root.display(),
            only_train,
            only_test
        );
    }
    let train = decode_split(&train_files, image_size as u32)?;
    let test = decode_split(&test_files, image_size as u32)?;
    Ok(Dataset {
        name: "folder".into(),
        train,
        test,
        classes,
    })
}

/// The sorted class folder names of one split and its (file, label) list.
pub fn scan_split(dir: &Path) -> Result<(Vec<String>, Vec<LabeledFile>)> {
    if !dir.is_dir() {
        bail!(
            "{} is missing: a folder dataset needs DIR/train/<class>/*.png|jpg and \
             DIR/test/<class>/*.png|jpg (pass its DIR with --data-dir)",
            dir.display()
        );
    }
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.path().is_dir() {
            let name = entry.file_name().into_string().map_err(|name| {
                anyhow!(
                    "{}: class folder name {:?} is not UTF-8",
                    dir.display(),
                    name
                )
            })?;
            classes.push(name);
        }
    }
    classes.sort();
    if classes.is_empty() {
        bail!("{}: no class folders found", dir.display());
    }
    let mut per_class = Vec::new();
    for class in &classes {
        let mut found = Vec::new();
        collect_images(&dir.join(class), &mut found)?;
        if found.is_empty() {
            bail!(
                "{}: no .png, .jpg or .jpeg files in class folder `{class}`",
                dir.display()
            );
        }
        found.sort();
        per_class.push(found.into_iter());
    }
    // Classes interleaved (the first file of each class, then the second, ...), as the
    // CIFAR files are, so that the first N images (`--train-subset N`) cover every class.
    let mut files = Vec::new();
    loop {
        let before = files.len();
        for (label, found) in per_class.iter_mut().enumerate() {
            files.extend(found.next().map(|path| (path, label as i64)));
        }
        if files.len() == before {
            break;
        }
    }
    Ok((classes, files))
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if has_image_extension(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Decodes the files into uint8 images [N, 3, size, size] and labels [N].
pub fn decode_split(files: &[LabeledFile], size: u32) -> Result<Split> {
    let paths: Vec<&Path> = files.iter().map(|(path, _)| path.as_path()).collect();
    let images = decode_images(&paths, size)?;
    let labels = Tensor::from_slice(&files.iter().map(|(_, label)| *label).collect::<Vec<i64>>());
    Ok(Split { images, labels })
}

/// Decodes image files (on all cores) into uint8 [N, 3, size, size].
pub fn decode_images(files: &[&Path], size: u32) -> Result<Tensor> {
    let (n, side) = (files.len() as i64, size as i64);
    // Refused with an error rather than an abort: a --image-size too large for memory.
    let images = Tensor::f_empty([n, 3, side, side], (Kind::Uint8, Device::Cpu)).map_err(|_| {
        anyhow!(
            "{n} images of {size}x{size} pixels need {:.1} GB, more memory than there is; \
             use a smaller --image-size",
            (3 * n) as f64 * (side * side) as f64 / 1e9
        )
    })?;
    let per_image = 3 * size as usize * size as usize;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    // Decoded a block at a time into one buffer, then copied in: memory stays at the
    // dataset plus a block, not twice the dataset.
    let block = threads * 64;
    let mut pixels = vec![0u8; block.min(files.len()) * per_image];
    for (index, block_files) in files.chunks(block).enumerate() {
        let block_pixels = &mut pixels[..block_files.len() * per_image];
        decode_in_parallel(block_files, size, block_pixels, threads)?;
        let count = block_files.len() as i64;
        images
            .narrow(0, (index * block) as i64, count)
            .copy_(&Tensor::from_slice(block_pixels).view([count, 3, side, side]));
    }
    Ok(images)
}

/// Decodes `files` into `pixels` (one image's CHW bytes after another), split over
/// `threads` threads.
fn decode_in_parallel(files: &[&Path], size: u32, pixels: &mut [u8], threads: usize) -> Result<()> {
    let per_image = pixels.len() / files.len().max(1);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .zip(pixels.chunks_mut(chunk * per_image))
            .map(|(files, out)| {
                scope.spawn(move || -> Result<()> {
                    for (path, dst) in files.iter().zip(out.chunks_exact_mut(per_image)) {
                        decode_into(path, size, dst)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(anyhow!("an image decoding thread panicked")))
        })
    })
}

/// Decodes one image file as RGB, resized to `size`×`size`, into `dst` in CHW order.
pub fn decode_into(path: &Path, size: u32, dst: &mut [u8]) -> Result<()> {
    let image = image::ImageReader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .with_context(|| format!("cannot read {}", path.display()))?
        .decode()
        .with_context(|| {
            format!(
                "cannot decode {} (vit reads PNG and JPEG): convert, replace or remove it",
                path.display()
            )
        })?
        .into_rgb8();
    let image = if image.dimensions() == (size, size) {
        image
    } else {
        image::imageops::resize(&image, size, size, image::imageops::FilterType::Triangle)
    };
    let plane = size as usize * size as usize;
    for (i, pixel) in image.pixels().enumerate() {
        dst[i] = pixel.0[0];
        dst[plane + i] = pixel.0[1];
        dst[2 * plane + i] = pixel.0[2];
    }
    Ok(())
}
