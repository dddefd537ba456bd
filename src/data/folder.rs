//! torchvision's ImageFolder layout: `DIR/train/<class>/*.png|jpg|jpeg` and
//! `DIR/test/<class>/*.png|jpg|jpeg`, classes sorted by name (label = index in that order),
//! files found recursively under each class folder (following symbolic links, refusing a
//! loop) and sorted by path, then the classes interleaved. macOS's `._*` metadata files are
//! skipped; images in formats vit does not read are skipped with a note.
//!
//! Every image is decoded with the `image` crate, converted to RGB, resized to
//! `image_size`×`image_size` (bilinear, antialiased when shrinking) when it is not already
//! that size, and written in CHW order into one uint8 tensor. Decoding is spread over the
//! available cores.

use super::{Dataset, Split, TestSet};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// An image file and its label.
type LabeledFile = (PathBuf, i64);

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Image formats vit does not decode (torchvision's other extensions, and phones' HEIC):
/// counted, so that a folder of them is not skipped without a word.
const OTHER_IMAGE_EXTENSIONS: [&str; 10] = [
    "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm", "heic", "heif", "avif",
];

/// The most pixels an image may have, PIL's `DecompressionBombError` threshold: its RGB
/// copy stays under 512 MiB (a greyscale bomb passes the decoder's own limit, then triples).
const MAX_PIXELS: u64 = 178_956_970;

/// Reads `root/train` and `root/test`; the test split must have the same classes.
pub fn load(root: &Path, image_size: i64) -> Result<Dataset> {
    let size = checked_size(image_size)?;
    let (classes, train_files) = scan_split(&root.join("train"))?;
    let (test_classes, test_files) = scan_split(&root.join("test"))?;
    if test_classes != classes {
        let only_train: Vec<_> = classes
            .iter()
            .filter(|class| !test_classes.contains(class))
            .collect();
        let only_test: Vec<_> = test_classes
            .iter()
            .filter(|class| !classes.contains(class))
            .collect();
        bail!(
            "{}: the test classes differ from the train classes (only in train: {:?}; only in \
             test: {:?}); both splits need the same class folders",
            root.display(),
            only_train,
            only_test
        );
    }
    // Both splits in one pass, so that one error names every bad file of either.
    let (train_count, test_count) = (train_files.len() as i64, test_files.len() as i64);
    let both = decode_labeled(&[train_files, test_files].concat(), size)?;
    let split = |start: i64, count: i64| Split {
        images: both.images.narrow(0, start, count),
        labels: both.labels.narrow(0, start, count),
    };
    Ok(Dataset {
        name: "folder".into(),
        train: split(0, train_count),
        test: split(train_count, test_count),
        classes,
    })
}

/// Reads `root/test` alone: `root/train` may be missing.
pub fn load_test(root: &Path, image_size: i64) -> Result<TestSet> {
    let size = checked_size(image_size)?;
    let (classes, files) = scan_split(&root.join("test"))?;
    Ok(TestSet {
        name: "folder".into(),
        test: decode_labeled(&files, size)?,
        classes,
        files: Some(files.into_iter().map(|(path, _)| path).collect()),
    })
}

fn checked_size(image_size: i64) -> Result<u32> {
    ensure!(
        image_size > 0,
        "--image-size must be positive, got {image_size}"
    );
    u32::try_from(image_size).with_context(|| format!("--image-size {image_size} is too large"))
}

/// Decodes the files into uint8 images [N, 3, size, size] and their labels [N].
fn decode_labeled(files: &[LabeledFile], size: u32) -> Result<Split> {
    let paths: Vec<&Path> = files.iter().map(|(path, _)| path.as_path()).collect();
    let labels: Vec<i64> = files.iter().map(|(_, label)| *label).collect();
    Ok(Split {
        images: decode_images(&paths, size)?,
        labels: Tensor::from_slice(&labels),
    })
}

/// The sorted class folder names of one split and its (file, label) list.
fn scan_split(dir: &Path) -> Result<(Vec<String>, Vec<LabeledFile>)> {
    if !dir.is_dir() {
        bail!(
            "{} is missing: a folder dataset needs DIR/train/<class>/*.png|jpg|jpeg and \
             DIR/test/<class>/*.png|jpg|jpeg (evaluating, only test/); pass its DIR with \
             --data-dir",
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
    let mut other_images = Vec::new();
    for class in &classes {
        let mut found = ClassFiles::default();
        found.collect(&dir.join(class), &mut Vec::new())?;
        if found.images.is_empty() {
            let other_formats = match found.other_images.as_slice() {
                [] => String::new(),
                others => format!(" ({})", other_formats(others)),
            };
            bail!(
                "{}: no .png, .jpg or .jpeg files in class folder `{class}`{other_formats}",
                dir.display()
            );
        }
        found.images.sort();
        per_class.push(found.images.into_iter());
        other_images.append(&mut found.other_images);
    }
    if !other_images.is_empty() {
        eprintln!(
            "note: {}: skipped {}",
            dir.display(),
            other_formats(&other_images)
        );
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

/// The files found under one class folder.
#[derive(Default)]
struct ClassFiles {
    images: Vec<PathBuf>,
    /// Images in formats vit does not read.
    other_images: Vec<PathBuf>,
}

impl ClassFiles {
    /// Adds the files under `dir`, recursively. `ancestors` holds the folders above it, by
    /// (device, inode): a symbolic link back to one of them would repeat their images
    /// (under this class's label) without end.
    fn collect(&mut self, dir: &Path, ancestors: &mut Vec<((u64, u64), PathBuf)>) -> Result<()> {
        let metadata =
            std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let id = (metadata.dev(), metadata.ino());
        if let Some((_, ancestor)) = ancestors.iter().find(|(folder, _)| *folder == id) {
            bail!(
                "{} is {} again, through a symbolic link: remove the link that makes this loop",
                dir.display(),
                ancestor.display()
            );
        }
        ancestors.push((id, dir.to_path_buf()));
        let list_error = || format!("cannot list {}", dir.display());
        for entry in std::fs::read_dir(dir).with_context(list_error)? {
            let path = entry.with_context(list_error)?.path();
            if path.is_dir() {
                self.collect(&path, ancestors)?;
            } else if is_apple_double(&path) {
                // macOS's metadata beside each file copied from its disks: never an image.
            } else if has_extension(&path, &EXTENSIONS) {
                self.images.push(path);
            } else if has_extension(&path, &OTHER_IMAGE_EXTENSIONS) {
                self.other_images.push(path);
            }
        }
        ancestors.pop();
        Ok(())
    }
}

/// "N image file(s) in formats vit does not read, such as PATH: convert them to PNG or JPEG"
fn other_formats(files: &[PathBuf]) -> String {
    let count = match files.len() {
        1 => "1 image file".to_string(),
        count => format!("{count} image files"),
    };
    format!(
        "{count} in formats vit does not read, such as {}: convert them to PNG or JPEG",
        files[0].display()
    )
}

fn is_apple_double(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.as_encoded_bytes().starts_with(b"._"))
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            extensions
                .iter()
                .any(|known| known.eq_ignore_ascii_case(extension))
        })
}

/// Decodes image files (on all cores) into uint8 [N, 3, size, size]. Fails naming every
/// file that cannot be decoded, so that one run finds them all.
pub fn decode_images(files: &[&Path], size: u32) -> Result<Tensor> {
    let (images, failures) = decode_all(files, size)?;
    let mut failures = failures.into_iter();
    let Some((_, first)) = failures.next() else {
        return Ok(images);
    };
    let others: Vec<String> = failures
        .map(|(index, _)| files[index].display().to_string())
        .collect();
    if others.is_empty() {
        return Err(first);
    }
    const LISTED: usize = 10;
    let unlisted = match others.len().saturating_sub(LISTED) {
        0 => String::new(),
        more => format!(" and {more} more"),
    };
    Err(first.context(format!(
        "{} files cannot be decoded: the first is below, the others are {}{unlisted}",
        others.len() + 1,
        others[..others.len().min(LISTED)].join(", ")
    )))
}

/// What [`decode_readable`] decoded, and what it could not.
pub struct Decoded {
    /// uint8 [decoded files, 3, size, size]
    pub images: Tensor,
    /// The index (in the files given) of each image's file, in order.
    pub indices: Vec<usize>,
    /// The index and error of each file that cannot be decoded.
    pub failures: Vec<(usize, anyhow::Error)>,
}

/// Decodes the files that can be decoded (on all cores), in their order.
pub fn decode_readable(files: &[&Path], size: u32) -> Result<Decoded> {
    let (images, failures) = decode_all(files, size)?;
    let mut readable = vec![true; files.len()];
    for (failed, _) in &failures {
        readable[*failed] = false;
    }
    let indices: Vec<usize> = (0..files.len()).filter(|&index| readable[index]).collect();
    let images = if failures.is_empty() {
        images
    } else {
        let rows: Vec<i64> = indices.iter().map(|&index| index as i64).collect();
        images.index_select(0, &Tensor::from_slice(&rows))
    };
    Ok(Decoded {
        images,
        indices,
        failures,
    })
}

/// Decodes the files (on all cores) into uint8 [N, 3, size, size]; returns it with the
/// index and error of each file that cannot be decoded (its image left as it was).
fn decode_all(files: &[&Path], size: u32) -> Result<(Tensor, Vec<(usize, anyhow::Error)>)> {
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
    let mut failures = Vec::new();
    for (index, block_files) in files.chunks(block).enumerate() {
        let block_pixels = &mut pixels[..block_files.len() * per_image];
        let block_failures = decode_in_parallel(block_files, size, block_pixels, threads)?;
        failures.extend(
            block_failures
                .into_iter()
                .map(|(position, error)| (index * block + position, error)),
        );
        let count = block_files.len() as i64;
        images
            .narrow(0, (index * block) as i64, count)
            .copy_(&Tensor::from_slice(block_pixels).view([count, 3, side, side]));
    }
    Ok((images, failures))
}

/// Decodes `files` into `pixels` (one image's CHW bytes after another), split over
/// `threads` threads; returns the index and error of each file that cannot be decoded.
fn decode_in_parallel(
    files: &[&Path],
    size: u32,
    pixels: &mut [u8],
    threads: usize,
) -> Result<Vec<(usize, anyhow::Error)>> {
    let per_image = pixels.len() / files.len().max(1);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .zip(pixels.chunks_mut(chunk * per_image))
            .enumerate()
            .map(|(worker, (files, out))| {
                scope.spawn(move || {
                    let jobs = files.iter().zip(out.chunks_exact_mut(per_image));
                    jobs.enumerate()
                        .filter_map(|(position, (path, dst))| {
                            let error = decode_into(path, size, dst).err()?;
                            Some((worker * chunk + position, error))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut failures = Vec::new();
        for worker in workers {
            let worker_failures = worker
                .join()
                .map_err(|_| anyhow!("an image decoding thread panicked"))?;
            failures.extend(worker_failures);
        }
        Ok(failures)
    })
}

/// Decodes one image file as RGB, resized to `size`×`size`, into `dst` in CHW order. A
/// decoder that panics on a malformed file fails that file only.
fn decode_into(path: &Path, size: u32, dst: &mut [u8]) -> Result<()> {
    let image = std::panic::catch_unwind(|| decode_rgb(path)).unwrap_or_else(|_| {
        Err(anyhow!(
            "cannot decode {} (the decoder failed on it): convert, replace or remove it",
            path.display()
        ))
    })?;
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

/// Reads an image file whole (so that a pipe works too) and decodes it as RGB, refusing
/// what PIL refuses: more than [`MAX_PIXELS`] pixels, a file cut short.
fn decode_rgb(path: &Path) -> Result<image::RgbImage> {
    use image::ImageDecoder;
    let cannot_read = || format!("cannot read {}", path.display());
    let mut file = std::fs::File::open(path).with_context(cannot_read)?;
    // The format is told from the first bytes, before the rest is read: a video or
    // /dev/zero named .jpg is refused at once.
    let mut bytes = Vec::new();
    (&mut file)
        .take(16)
        .read_to_end(&mut bytes)
        .with_context(cannot_read)?;
    let format = image::guess_format(&bytes).with_context(|| undecodable(path))?;
    file.read_to_end(&mut bytes).with_context(cannot_read)?;
    if format == image::ImageFormat::Png {
        return decode_png_rgb(path, &bytes);
    }
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes.as_slice()), format);
    let decoder = reader.into_decoder().with_context(|| undecodable(path))?;
    let (width, height) = decoder.dimensions();
    check_size(path, width, height)?;
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(cut_short(path));
    }
    let image = image::DynamicImage::from_decoder(decoder).with_context(|| undecodable(path))?;
    Ok(image.into_rgb8())
}

fn undecodable(path: &Path) -> String {
    format!(
        "cannot decode {} (vit reads PNG and JPEG): convert, replace or remove it",
        path.display()
    )
}

fn cut_short(path: &Path) -> anyhow::Error {
    anyhow!(
        "{} ends before its image data does (a copy cut short?): replace or remove it",
        path.display()
    )
}

/// Refuses an image of more than [`MAX_PIXELS`] pixels, before anything is allocated.
fn check_size(path: &Path, width: u32, height: u32) -> Result<()> {
    ensure!(
        u64::from(width) * u64::from(height) <= MAX_PIXELS,
        "{} is {width}x{height} pixels, more than vit decodes ({} million at most): downscale it",
        path.display(),
        MAX_PIXELS / 1_000_000
    );
    Ok(())
}

/// Decodes a PNG as RGB as PIL does: every row of the image must be there, but the bytes
/// after them (the zlib stream's checksum, the last data chunk's CRC, the IEND chunk) may
/// be cut off, where `image` refuses the file. Alpha is dropped, as in PIL's
/// `convert("RGB")`; 16-bit samples keep their high byte (PIL does so for colour, but
/// clips greyscale to 255, which vit does not copy).
fn decode_png_rgb(path: &Path, bytes: &[u8]) -> Result<image::RgbImage> {
    use png::{DecodingError, InterlaceInfo, Transformations};
    let failed = |error: DecodingError| match error {
        DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            cut_short(path)
        }
        error => anyhow!(error).context(undecodable(path)),
    };
    let mut options = png::DecodeOptions::default();
    // Checks as PIL does: every chunk's CRC before the image data, not only the critical
    // ones', and the zlib stream's checksum where the file holds it.
    options.set_skip_ancillary_crc_failures(false);
    options.set_ignore_adler32(false);
    // Never used here, and a compressed one can inflate to gigabytes.
    options.set_ignore_text_chunk(true);
    options.set_ignore_iccp_chunk(true);
    // The size from the header, checked before the decoder allocates anything for it.
    if let (Some(b"IHDR"), Some(width), Some(height)) = (
        bytes.get(12..16),
        bytes.get(16..20).and_then(|b| b.try_into().ok()),
        bytes.get(20..24).and_then(|b| b.try_into().ok()),
    ) {
        check_size(path, u32::from_be_bytes(width), u32::from_be_bytes(height))?;
    }
    let mut decoder = png::Decoder::new_with_options(std::io::Cursor::new(bytes), options);
    // For a row's buffers (an image is bounded by `check_size`): as `image` had it.
    decoder.set_limits(png::Limits { bytes: 512 << 20 });
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(failed)?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    let indexed = info.color_type == png::ColorType::Indexed;
    if indexed
        && info
            .palette
            .as_ref()
            .is_some_and(|palette| palette.len() % 3 != 0)
    {
        // The decoder would panic on it.
        return Err(
            anyhow!("its palette (PLTE chunk) is not whole RGB entries").context(undecodable(path))
        );
    }
    let rows = stored_rows(width, height, info.interlaced);
    let samples = reader.output_color_type().0.samples();
    let stride = reader
        .output_line_size(width)
        .ok_or(DecodingError::LimitsExceeded)
        .map_err(failed)?;
    let mut pixels = vec![0u8; stride * height as usize];
    for y in 0..rows as usize {
        let Some(row) = reader.next_interlaced_row().map_err(failed)? else {
            return Err(cut_short(path));
        };
        match row.interlace() {
            InterlaceInfo::Adam7(pass) => {
                png::expand_interlaced_row(&mut pixels, stride, row.data(), pass, 8 * samples as u8)
            }
            InterlaceInfo::Null(_) => pixels[y * stride..][..stride].copy_from_slice(row.data()),
        }
    }
    // On to the end of the image data, as `image` does (a bad CRC or checksum there is an
    // error), unless the file ends first.
    match reader.next_row() {
        Err(DecodingError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        other => drop(other.map_err(failed)?),
    }
    if samples != 3 {
        pixels = pixels
            .chunks_exact(samples)
            .flat_map(|pixel| match samples {
                1 | 2 => [pixel[0]; 3],
                _ => [pixel[0], pixel[1], pixel[2]],
            })
            .collect();
    }
    Ok(image::RgbImage::from_raw(width, height, pixels).expect("a buffer of the image's size"))
}

/// The rows a PNG stores: the image's, or, interlaced, those of Adam7's seven passes (each
/// every `dx`-th pixel from `x0` of every `dy`-th row from `y0`), an empty pass left out.
fn stored_rows(width: u32, height: u32, interlaced: bool) -> u32 {
    const PASSES: [(u32, u32, u32, u32); 7] = [
        (0, 8, 0, 8),
        (4, 8, 0, 8),
        (0, 4, 4, 8),
        (2, 4, 0, 4),
        (0, 2, 2, 4),
        (1, 2, 0, 2),
        (0, 1, 1, 2),
    ];
    if !interlaced {
        return height;
    }
    PASSES
        .iter()
        .filter(|&&(x0, _, _, _)| width > x0)
        .map(|&(_, _, y0, dy)| height.saturating_sub(y0).div_ceil(dy))
        .sum()
}

/// Whether a JPEG's end-of-image marker comes before its bytes end. The decoder fills a
/// file cut off inside its image data with made-up pixels, without an error (PIL says
/// "image file is truncated"). The markers are walked from the start, skipping each
/// segment (an embedded thumbnail is inside one) and each scan's data, so that what a
/// phone appends after the image (a motion photo's video) is never read.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut at = 0;
    loop {
        // The next marker: 0xFF and a code, after any fill 0xFFs (and, as libjpeg allows
        // with a warning, stray bytes).
        while bytes.get(at).is_some_and(|&byte| byte != 0xFF) {
            at += 1;
        }
        while bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let Some(&code) = bytes.get(at + 1) else {
            return false;
        };
        at += 2;
        match code {
            0xD9 => return true,
            // A second start of image: the first one ended without its end marker (a file
            // cut short, another appended).
            0xD8 if at > 2 => return false,
            // Start of image, restarts and the rest without a length.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(&[high, low]) = bytes.get(at..at + 2) else {
            return false;
        };
        at += usize::from(u16::from_be_bytes([high, low]));
        if code == 0xDA {
            // A scan's data runs to the next marker: its 0xFF bytes are followed by 0x00
            // (stuffing) or a restart code.
            loop {
                match (bytes.get(at), bytes.get(at + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => at += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => at += 1,
                    (None, _) => return false,
                }
            }
        }
    }
}
