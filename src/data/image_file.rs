//! Image files as RGB: PNG through the `png` crate, row by row, to PIL's very pixels
//! (16-bit grey aside), and JPEG through `image`, whose decoder rounds a little differently
//! from PIL's libjpeg (the README gives the size of it). PIL's refusals are kept: more than
//! [`MAX_PIXELS`] pixels, a file cut short. One file ([`decode_rgb`]), or many at once,
//! decoded in parallel and resized into one uint8 batch ([`decode_images`],
//! [`decode_readable`]).

use crate::listing::{and_more, first_and_more, noun_for};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io::Read;
use std::mem::MaybeUninit;
use std::path::Path;
use tch::Tensor;

/// The most pixels an image may have, PIL's `DecompressionBombError` threshold: its RGB
/// copy stays under 512 MiB (a greyscale bomb passes the decoder's own limit, then triples).
pub const MAX_PIXELS: u64 = 178_956_970;

/// Reads an image file whole (so that a pipe works too) and decodes it as RGB, refusing
/// what PIL refuses: more than [`MAX_PIXELS`] pixels, a file cut short.
pub fn decode_rgb(path: &Path) -> Result<image::RgbImage> {
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
    // Said as such: the decoder would say it cannot tell the format.
    ensure!(
        !bytes.is_empty(),
        "{} is empty (0 bytes): replace or remove it",
        path.display()
    );
    let format = image::guess_format(&bytes).map_err(|error| undecodable(path, error))?;
    file.read_to_end(&mut bytes).with_context(cannot_read)?;
    if format == image::ImageFormat::Png {
        return decode_png_rgb(path, &bytes);
    }
    // Before its headers are read: a JPEG cut inside them fails there, in the decoder's
    // words.
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(cut_short(path));
    }
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes.as_slice()), format);
    let decoder = reader
        .into_decoder()
        .map_err(|error| image_error(path, format, error))?;
    let (width, height) = decoder.dimensions();
    check_size(path, width, height)?;
    let image = image::DynamicImage::from_decoder(decoder)
        .map_err(|error| image_error(path, format, error))?;
    Ok(image.into_rgb8())
}

/// A decoder's `error` about `path`, a file of no format vit reads, on one line.
fn undecodable(path: &Path, error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}", decoder_words(error)).context(format!(
        "cannot decode {} (vit reads PNG and JPEG): convert, replace or remove it",
        path.display()
    ))
}

/// The decoder's `error` about `path`, a PNG or JPEG (`format`) whose data does not decode,
/// on one line: converting it would not help.
fn damaged(path: &Path, format: &str, error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}", decoder_words(error)).context(format!(
        "cannot decode {}, a damaged {format} file: replace it, or save it again from its source",
        path.display()
    ))
}

/// The image crate's error about `path`, a `format` file: a JPEG's data that does not
/// decode is damaged; anything else (a format vit does not read) is to convert.
fn image_error(path: &Path, format: image::ImageFormat, error: image::ImageError) -> anyhow::Error {
    match (format, error) {
        (image::ImageFormat::Jpeg, error @ image::ImageError::Decoding(_)) => {
            damaged(path, "JPEG", error)
        }
        (_, error) => undecodable(path, error),
    }
}

/// A decoder's message on one line (the decoders' messages may hold line breaks, and
/// `image`'s repeat their cause after themselves), a PNG chunk named by its name (the png
/// crate writes "ChunkType { type: IDAT, critical: true, ... }", and a damaged name with
/// escapes such as `\u{1}`, whose braces are not the struct's).
fn decoder_words(error: impl std::fmt::Display) -> String {
    const CHUNK: &str = "ChunkType { type: ";
    const NAME_END: &str = ", critical: ";
    let mut message = error.to_string();
    while let Some(start) = message.find(CHUNK) {
        let fields = start + CHUNK.len();
        let Some(name_end) = message[fields..].find(NAME_END).map(|at| fields + at) else {
            break;
        };
        let Some(end) = message[name_end..].find(" }").map(|at| name_end + at + 2) else {
            break;
        };
        let name = message[fields..name_end].to_string();
        message.replace_range(start..end, &name);
    }
    message.split_whitespace().collect::<Vec<_>>().join(" ")
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
    use png::Transformations;
    check_png_header_size(path, bytes)?;
    check_crcs_before_image_data(path, bytes)?;
    let mut decoder =
        png::Decoder::new_with_options(std::io::Cursor::new(bytes), pil_decode_options());
    // For a row's buffers (an image is bounded by `check_size`): as `image` had it.
    decoder.set_limits(png::Limits { bytes: 512 << 20 });
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|error| png_error(path, error))?;
    let info = reader.info();
    check_palette(path, info)?;
    let (width, height) = (info.width, info.height);
    let samples = reader.output_color_type().0.samples();
    let pixels = read_pixels(path, &mut reader, samples)?;
    let rgb = rgb_from_samples(pixels, samples);
    Ok(image::RgbImage::from_raw(width, height, rgb).expect("a buffer of the image's size"))
}

/// The PNG decoder's `error` about `path`: a file cut short, rows too wide, or what the
/// decoder says.
fn png_error(path: &Path, error: png::DecodingError) -> anyhow::Error {
    match error {
        error if ends_early(&error) => cut_short(path),
        png::DecodingError::LimitsExceeded => anyhow!(
            "{}: its rows are wider than vit decodes (512 MiB a row): downscale it",
            path.display()
        ),
        error @ png::DecodingError::Format(_) => damaged(path, "PNG", error),
        error => undecodable(path, error),
    }
}

/// The decoder's options: its checks as PIL's, and the chunks vit never reads skipped.
fn pil_decode_options() -> png::DecodeOptions {
    let mut options = png::DecodeOptions::default();
    // Checks as PIL does: the chunks' CRCs before the image data (checked first, by
    // `check_crcs_before_image_data`), none from the image data on, and the zlib stream's
    // checksum where the file holds it.
    options.set_ignore_crc(true);
    options.set_ignore_adler32(false);
    // Never used here, and a compressed one can inflate to gigabytes.
    options.set_ignore_text_chunk(true);
    options.set_ignore_iccp_chunk(true);
    options
}

/// Refuses a PNG one of whose chunks before the image data (IDAT) fails its checksum (CRC),
/// ancillary or not, as PIL does; it never checks those from the image data on. A chunk
/// cut short ends the walk: the decoder says so.
fn check_crcs_before_image_data(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut at = 8;
    while let Some(header) = bytes.get(at..at + 8) {
        let (length, name) = header.split_at(4);
        if name == b"IDAT" {
            break;
        }
        let length = u32::from_be_bytes(length.try_into().expect("4 bytes")) as usize;
        let Some(data_end) = (at + 8).checked_add(length) else {
            break;
        };
        let (Some(chunk), Some(stored)) = (
            bytes.get(at + 4..data_end),
            bytes.get(data_end..data_end + 4),
        ) else {
            break;
        };
        let mut crc = flate2::Crc::new();
        crc.update(chunk);
        if crc.sum().to_be_bytes() != stored {
            let name = String::from_utf8_lossy(name);
            let error = format!("CRC error in its {} chunk", name.escape_debug());
            return Err(damaged(path, "PNG", error));
        }
        at = data_end + 4;
    }
    Ok(())
}

/// The size from the PNG's header, checked before the decoder allocates anything for it.
fn check_png_header_size(path: &Path, bytes: &[u8]) -> Result<()> {
    if let (Some(b"IHDR"), Some(width), Some(height)) = (
        bytes.get(12..16),
        bytes.get(16..20).and_then(|b| b.try_into().ok()),
        bytes.get(20..24).and_then(|b| b.try_into().ok()),
    ) {
        check_size(path, u32::from_be_bytes(width), u32::from_be_bytes(height))?;
    }
    Ok(())
}

/// Refuses an indexed PNG whose palette is not whole RGB entries: the decoder would panic
/// on it.
fn check_palette(path: &Path, info: &png::Info) -> Result<()> {
    let indexed = info.color_type == png::ColorType::Indexed;
    if indexed
        && info
            .palette
            .as_ref()
            .is_some_and(|palette| palette.len() % 3 != 0)
    {
        return Err(damaged(
            path,
            "PNG",
            "its palette (PLTE chunk) is not whole RGB entries",
        ));
    }
    Ok(())
}

/// Every row of the image, de-interlaced, in the reader's output of `samples` bytes a
/// pixel (`[H, W, samples]`); then on to the end of the image data.
fn read_pixels(
    path: &Path,
    reader: &mut png::Reader<std::io::Cursor<&[u8]>>,
    samples: usize,
) -> Result<Vec<u8>> {
    use png::InterlaceInfo;
    let failed = |error| png_error(path, error);
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    let rows = stored_rows(width, height, info.interlaced);
    let stride = reader
        .output_line_size(width)
        .ok_or(png::DecodingError::LimitsExceeded)
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
        Err(error) if ends_early(&error) => {}
        other => drop(other.map_err(failed)?),
    }
    Ok(pixels)
}

/// Pixels of `samples` bytes each (grey, grey and alpha, RGB or RGBA) as RGB: grey
/// repeated, alpha dropped.
fn rgb_from_samples(pixels: Vec<u8>, samples: usize) -> Vec<u8> {
    if samples == 3 {
        return pixels;
    }
    pixels
        .chunks_exact(samples)
        .flat_map(|pixel| match samples {
            1 | 2 => [pixel[0]; 3],
            _ => [pixel[0], pixel[1], pixel[2]],
        })
        .collect()
}

/// Whether the PNG decoder stopped at the end of the file.
fn ends_early(error: &png::DecodingError) -> bool {
    matches!(error, png::DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof)
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

/// What to do where one image at a checkpoint's size does not fit in memory (a remedy for
/// [`decode_images`]): nothing but another machine, as the checkpoint fixes the size.
pub const ONE_CHECKPOINT_IMAGE: &str =
    "the checkpoint sets the image size: its model is too large for this machine";

/// Decodes image files (on libtorch's CPU threads, `--threads`) into uint8 [files.len(), 3,
/// size, size]. Fails with the number of files that cannot be decoded, the first one's error
/// and the names of up to ten others, so that one run shows how many there are and names
/// the first eleven. `remedy` is what to do where they do not fit in memory.
pub fn decode_images(files: &[&Path], size: u32, remedy: &str) -> Result<Tensor> {
    let (images, failures) = decode_all(files, size, remedy)?;
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
    let (listed, unlisted) = first_and_more(&others, LISTED);
    Err(first.context(format!(
        "{} files cannot be decoded: the first is below, the others are {}{}",
        others.len() + 1,
        listed.join(", "),
        and_more(unlisted)
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

/// Decodes the files that can be decoded (on libtorch's CPU threads, `--threads`), in their
/// order. `remedy` is what to do where they do not fit in memory.
pub fn decode_readable(files: &[&Path], size: u32, remedy: &str) -> Result<Decoded> {
    let (images, failures) = decode_all(files, size, remedy)?;
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

/// Decodes the files (on libtorch's CPU threads, `--threads`) into uint8 [files.len(), 3,
/// size, size]; returns it with the index and error of each file that cannot be decoded
/// (its image black). `remedy` ends the error where they do not fit in memory.
fn decode_all(
    files: &[&Path],
    size: u32,
    remedy: &str,
) -> Result<(Tensor, Vec<(usize, anyhow::Error)>)> {
    let (n, side) = (files.len() as i64, size as i64);
    // As many as libtorch's CPU threads: `--threads` limits both.
    let threads = tch::get_num_threads().max(1) as usize;
    // Decoded straight into the tensor: memory for the images once, not twice. Refused with
    // an error rather than an abort: an image size or a count too large for memory.
    // SAFETY: `decode_in_parallel` writes every byte (a failed image's as zeros), or
    // returns an error, on which the tensor is dropped unread (`failures?` below).
    let (images, failures) = unsafe {
        crate::ffi::new_cpu_tensor(&[n, 3, side, side], |pixels: &mut [MaybeUninit<u8>]| {
            decode_in_parallel(files, size, pixels, threads)
        })
    }
    .map_err(|_| {
        anyhow!(
            "{n} {} of {size}x{size} pixels need{} {:.1} GB, more memory than there is; \
             {remedy}",
            noun_for(n, "image"),
            if n == 1 { "s" } else { "" },
            (3 * n) as f64 * (side * side) as f64 / 1e9
        )
    })?;
    Ok((images, failures?))
}

/// Decodes `files` into `pixels` (one image's CHW bytes after another), split over
/// `threads` threads; returns the index and error of each file that cannot be decoded,
/// whose image it leaves black. Every byte is written, unless a thread panics (the error
/// returned then).
fn decode_in_parallel(
    files: &[&Path],
    size: u32,
    pixels: &mut [MaybeUninit<u8>],
    threads: usize,
) -> Result<Vec<(usize, anyhow::Error)>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let per_image = pixels.len() / files.len();
    let chunk = files.len().div_ceil(threads);
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
                            dst.fill(MaybeUninit::new(0));
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

/// `image` resized to `size`×`size` (bilinear, antialiased when shrinking).
fn resize_square(path: &Path, image: &image::RgbImage, size: u32) -> Result<image::RgbImage> {
    use image::imageops::{resize, FilterType};
    // `resize` filters the columns first, into a float image of width x size pixels (16
    // bytes each): for a panorama too wide for that, the image turned a quarter, whose
    // width is the panorama's height, gives the same picture.
    let fits = |width: u32| u64::from(width) * u64::from(size) * 16 <= 1 << 30;
    if fits(image.width()) {
        Ok(resize(image, size, size, FilterType::Triangle))
    } else if fits(image.height()) {
        Ok(resize_turned(image, size))
    } else {
        bail!(
            "{} is {}x{} pixels, too large to resize to {size}x{size}: crop or downscale it",
            path.display(),
            image.width(),
            image.height()
        )
    }
}

/// `image` resized to `size`×`size` as `resize` does, with its two passes in the other
/// order: its float buffer is height x size pixels, not width x size.
fn resize_turned(image: &image::RgbImage, size: u32) -> image::RgbImage {
    use image::imageops::{resize, rotate270, rotate90, FilterType};
    rotate270(&resize(&rotate90(image), size, size, FilterType::Triangle))
}

/// Decodes one image file as RGB, resized to `size`×`size`, into `dst` in CHW order. A
/// decoder that panics on a malformed file fails that file only.
fn decode_into(path: &Path, size: u32, dst: &mut [MaybeUninit<u8>]) -> Result<()> {
    let image = std::panic::catch_unwind(|| decode_rgb(path)).unwrap_or_else(|_| {
        Err(anyhow!(
            "cannot decode {} (the decoder failed on it): convert, replace or remove it",
            path.display()
        ))
    })?;
    let image = match image.dimensions() == (size, size) {
        true => image,
        false => resize_square(path, &image, size)?,
    };
    let plane = size as usize * size as usize;
    for (i, pixel) in image.pixels().enumerate() {
        dst[i].write(pixel.0[0]);
        dst[plane + i].write(pixel.0[1]);
        dst[2 * plane + i].write(pixel.0[2]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{resize_turned, undecodable};
    use image::imageops::{resize, FilterType};
    use std::path::Path;

    /// A decoder's message is given on one line, its words as they were.
    #[test]
    fn a_decoders_message_is_given_on_one_line() {
        let error = undecodable(Path::new("a.jpg"), "bad marker\n  at byte 12\n");
        assert_eq!(
            format!("{error:#}"),
            "cannot decode a.jpg (vit reads PNG and JPEG): convert, replace or remove it: bad \
             marker at byte 12"
        );
    }

    /// The turned resize (for panoramas) draws the picture the plain one does, up to the
    /// rounding of the other pass order, shrinking and enlarging alike.
    #[test]
    fn a_turned_resize_gives_the_same_picture() {
        let (width, height) = (37, 23);
        // Values that vary along both axes and between channels, none at the ends.
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 7 + y * 3) as u8,
                (x * x + 5 * y) as u8 ^ 0x55,
                (y * y) as u8,
            ])
        });
        for size in [8, 50] {
            let plain = resize(&image, size, size, FilterType::Triangle);
            let turned = resize_turned(&image, size);
            assert_eq!(turned.dimensions(), (size, size));
            let most = plain
                .as_raw()
                .iter()
                .zip(turned.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            assert!(most <= Some(1), "{most:?} at size {size}");
        }
    }
}
