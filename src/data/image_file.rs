//! One image file as RGB: PNG through the `png` crate, row by row, to PIL's very pixels
//! (16-bit grey aside), and JPEG through `image`, whose decoder rounds a little differently
//! from PIL's libjpeg (the README gives the size of it). PIL's refusals are kept: more than
//! [`MAX_PIXELS`] pixels, a file cut short.

use anyhow::{anyhow, ensure, Context, Result};
use std::io::Read;
use std::path::Path;

/// The most pixels an image may have, PIL's `DecompressionBombError` threshold: its RGB
/// copy stays under 512 MiB (a greyscale bomb passes the decoder's own limit, then triples).
const MAX_PIXELS: u64 = 178_956_970;

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
        .map_err(|error| undecodable(path, error))?;
    let (width, height) = decoder.dimensions();
    check_size(path, width, height)?;
    let image =
        image::DynamicImage::from_decoder(decoder).map_err(|error| undecodable(path, error))?;
    Ok(image.into_rgb8())
}

/// A decoder's `error` about `path`, on one line: the decoders' messages may hold line
/// breaks, and `image`'s repeat their cause after themselves.
fn undecodable(path: &Path, error: impl std::fmt::Display) -> anyhow::Error {
    let message = error.to_string();
    let words: Vec<&str> = message.split_whitespace().collect();
    anyhow!("{}", words.join(" ")).context(format!(
        "cannot decode {} (vit reads PNG and JPEG): convert, replace or remove it",
        path.display()
    ))
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
        error => undecodable(path, error),
    }
}

/// The decoder's options: its checks as PIL's, and the chunks vit never reads skipped.
fn pil_decode_options() -> png::DecodeOptions {
    let mut options = png::DecodeOptions::default();
    // Checks as PIL does: every chunk's CRC before the image data, not only the critical
    // ones', and the zlib stream's checksum where the file holds it.
    options.set_skip_ancillary_crc_failures(false);
    options.set_ignore_adler32(false);
    // Never used here, and a compressed one can inflate to gigabytes.
    options.set_ignore_text_chunk(true);
    options.set_ignore_iccp_chunk(true);
    options
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
        return Err(undecodable(
            path,
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
