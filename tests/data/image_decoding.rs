//! The PNG and JPEG decoders against PIL: its pixels, and its verdict on files cut short,
//! too large or at the edges of the formats.

use crate::common::{assert_contains, pixel, TempDir};
use crate::{common, decode_images, error_of, i64s, u8s};
use flate2::Compression;
use tch::Kind;

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut encoder, bytes).unwrap();
    encoder.finish().unwrap()
}

/// A PNG file: its signature, an IHDR of `width` x `height` at 8 bits of `colour_type`,
/// then `chunks` (kind, data), each with its length and CRC.
fn png_file(width: u32, height: u32, colour_type: u8, chunks: &[(&[u8], &[u8])]) -> Vec<u8> {
    png_file_interlaced(width, height, colour_type, false, chunks)
}

/// [`png_file`], Adam7-interlaced where `interlaced`.
fn png_file_interlaced(
    width: u32,
    height: u32,
    colour_type: u8,
    interlaced: bool,
    chunks: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let header = [
        &width.to_be_bytes()[..],
        &height.to_be_bytes(),
        &[8, colour_type, 0, 0, u8::from(interlaced)],
    ]
    .concat();
    let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], &header[..])]
        .into_iter()
        .chain(chunks.iter().copied())
    {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        file.extend((data.len() as u32).to_be_bytes());
        file.extend([kind, data].concat());
        file.extend(crc.sum().to_be_bytes());
    }
    file
}

/// A JPEG of 64x64 noise, as a camera would write it.
fn jpeg_bytes() -> Vec<u8> {
    let image = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([
            pixel(7, 0, y as usize, x as usize),
            (x * y) as u8,
            (x ^ y) as u8 * 4,
        ])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    bytes
}

/// What PIL refuses, vit refuses too, naming the file: a JPEG cut short (which the decoder
/// would fill with made-up pixels) and an image too large to decode (whose header alone says
/// so); a file read from a pipe decodes.
#[test]
fn images_cut_short_or_too_large_are_refused() {
    let tmp = TempDir::new("imagecheck");
    let decode = |name: &str, bytes: &[u8]| {
        let path = tmp.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        decode_images(&[path.as_path()], 8).map(|_| ())
    };
    let jpeg = jpeg_bytes();
    decode("whole.jpg", &jpeg).unwrap();
    // A phone's motion photo appends a video, whose bytes may look like any marker.
    let trailer = [&jpeg[..], b"\xff\xda\x00\x08video\xff\xda"].concat();
    decode("trailer.jpg", &trailer).unwrap();
    // An embedded thumbnail (in an APP2 segment, as EXIF holds one) is skipped whole.
    let segment_length = (jpeg.len() + 2) as u16;
    let thumbnail = [b"\xff\xe2", &segment_length.to_be_bytes()[..], &jpeg[..]].concat();
    let with_thumbnail = [&jpeg[..2], &thumbnail[..], &jpeg[2..]].concat();
    decode("thumbnail.jpg", &with_thumbnail).unwrap();
    let scan = jpeg
        .windows(2)
        .position(|pair| pair == [0xFF, 0xDA])
        .unwrap();
    assert!(jpeg.len() - scan > 1000, "too little image data to cut");
    for (name, bytes) in [
        ("no-end.jpg", &jpeg[..jpeg.len() - 2]),
        ("half.jpg", &jpeg[..scan + 500]),
        (
            "thumbnail-half.jpg",
            &with_thumbnail[..with_thumbnail.len() - 40],
        ),
        // Cut short, then another whole JPEG after it (whose end marker is not this one's).
        ("appended.jpg", &[&jpeg[..scan + 500], &jpeg[..]].concat()),
        // Cut inside its headers, where the decoder itself stops: the same message, on one
        // line (not the decoder's, which said "Not enough bytes" twice, over three lines).
        ("headers.jpg", &jpeg[..scan / 2]),
        ("start.jpg", &jpeg[..4]),
    ] {
        let err = error_of(decode(name, bytes));
        assert!(
            err.contains(name) && err.contains("ends before its image data") && !err.contains('\n'),
            "{err}"
        );
    }
    // A file the decoder refuses for what it holds: its words, on one line, once.
    // Its frame header (SOF) says 12 bits a sample, of a baseline JPEG.
    let mut garbled = jpeg.clone();
    let frame = jpeg
        .windows(2)
        .position(|pair| pair == [0xFF, 0xC0])
        .unwrap();
    garbled[frame + 4] = 12;
    let err = error_of(decode("garbled.jpg", &garbled));
    assert!(
        err.starts_with("cannot decode")
            && err.contains("garbled.jpg, a damaged JPEG file: replace it")
            && err.matches("12 bits").count() == 1
            && !err.contains('\n'),
        "{err}"
    );
    // A PNG one of whose chunks before the image data fails its checksum (CRC) is damaged
    // too, not a format to convert, and its chunk is named; from the image data on, PIL
    // checks no CRC, nor does vit.
    let text = (&b"tEXt"[..], &b"a\0b"[..]);
    let mut bad_crc = png_file(1, 1, 0, &[text, (b"IDAT", &zlib(&[0, 7])), (b"IEND", &[])]);
    let text_crc = 8 + 25 + 8 + 3;
    bad_crc[text_crc] ^= 0xFF;
    let err = error_of(decode("crc.png", &bad_crc));
    assert!(
        err.starts_with("cannot decode")
            && err.contains("crc.png, a damaged PNG file")
            && err.contains("CRC error in its tEXt chunk")
            && !err.contains("convert"),
        "{err}"
    );
    let idat = zlib(&[0, 7]);
    let mut after_crc = png_file(1, 1, 0, &[(b"IDAT", &idat), text, (b"IEND", &[])]);
    let idat_end = 8 + 25 + 12 + idat.len();
    for chunk_end in [idat_end, idat_end + 15, after_crc.len()] {
        after_crc[chunk_end - 4] ^= 0xFF;
    }
    let path = tmp.0.join("after.png");
    std::fs::write(&path, &after_crc).unwrap();
    let image = decode_images(&[path.as_path()], 1).unwrap();
    assert_eq!(
        Vec::<u8>::try_from(image.flatten(0, -1)).unwrap(),
        [7, 7, 7]
    );
    // A chunk's name is cut at the end of its name, not at a brace or a " }" in it: one
    // written with escapes, one with a space and a brace.
    let odd = png_file(
        1,
        1,
        0,
        &[(b"A }B", b""), (b"IDAT", &zlib(&[0, 7])), (b"IEND", &[])],
    );
    let err = error_of(decode("brace.png", &odd));
    assert!(err.contains("A }B") && !err.contains("critical:"), "{err}");
    let mut odd_name = png_file(1, 1, 0, &[(b"IDAT", &zlib(&[0, 7])), (b"IEND", &[])]);
    odd_name[14] = 1;
    let err = error_of(decode("name.png", &odd_name));
    assert!(
        err.contains(r"IH\u{1}R chunk") && !err.contains("critical"),
        "{err}"
    );

    // A greyscale PNG of 20000x10000 (a 200 MB image from a header of a few bytes): only
    // its header is written, so only the header can be what refuses it.
    let bomb = png_file(
        20000,
        10000,
        0,
        // The first row's bytes (the decoder reads the header up to here).
        &[(b"IDAT", &zlib(&[0; 20001])), (b"IEND", &[])],
    );
    let err = error_of(decode("bomb.png", &bomb));
    assert!(
        err.contains("bomb.png is 20000x10000 pixels") && err.contains("downscale"),
        "{err}"
    );
    let header_only = png_file(i32::MAX as u32, 1, 6, &[]);
    let err = error_of(decode("wide.png", &header_only));
    assert_contains(&err, "wide.png is 2147483647x1 pixels");
    // A strip under the pixel limit, too wide for the resize's column pass (its float
    // buffer, width x 8 x 16 bytes, would be 1.15 GB), is resized with the passes turned:
    // black on the left, white on the right, and the middle between.
    let mut row = vec![0u8; 9_000_001];
    row[4_500_001..].fill(255);
    let strip = png_file(9_000_000, 1, 0, &[(b"IDAT", &zlib(&row)), (b"IEND", &[])]);
    let path = tmp.0.join("strip.png");
    std::fs::write(&path, &strip).unwrap();
    let resized = decode_images(&[path.as_path()], 8).unwrap();
    assert_eq!(resized.size(), [1, 3, 8, 8]);
    let columns = i64s(&resized.get(0).get(0).get(0));
    // Every row and channel alike.
    assert_eq!(i64s(&resized), columns.repeat(24));
    assert_eq!(
        (columns[..3].to_vec(), columns[5..].to_vec()),
        (vec![0; 3], vec![255; 3])
    );
    assert!(
        columns[2] < columns[3] && columns[3] < columns[4] && columns[4] < 255,
        "{columns:?}"
    );

    let fifo = tmp.0.join("pipe.jpg");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let writer = {
        let (fifo, jpeg) = (fifo.clone(), jpeg.clone());
        std::thread::spawn(move || std::fs::write(fifo, jpeg).unwrap())
    };
    let piped = decode_images(&[fifo.as_path()], 8).unwrap();
    writer.join().unwrap();
    let whole = decode_images(&[tmp.0.join("whole.jpg").as_path()], 8).unwrap();
    assert!(piped.equal(&whole));
}

/// JPEG files as PIL (libjpeg) writes them, in the variants cameras and tools use
/// (progressive, restart markers, an EXIF thumbnail, ...): vit decodes each whole file and
/// refuses it at each length where PIL refuses it cut (`jpeg_reference.py`).
#[test]
fn jpegs_decode_whole_and_are_refused_where_pil_refuses_them_cut() {
    let fixture = common::fixture("jpeg_files");
    let tmp = TempDir::new("jpegfixture");
    let mut variants = Vec::new();
    for (name, file) in &fixture.tensors {
        let Some(cuts) = fixture.tensors.get(&format!("{name}.cuts")) else {
            continue;
        };
        let bytes = Vec::<u8>::try_from(file).unwrap();
        let path = tmp.0.join(format!("{name}.jpg"));
        std::fs::write(&path, &bytes).unwrap();
        if let Err(error) = decode_images(&[path.as_path()], 8) {
            panic!("{name}: {error:#}");
        }
        for cut in Vec::<i64>::try_from(cuts).unwrap() {
            std::fs::write(&path, &bytes[..cut as usize]).unwrap();
            let decoded = decode_images(&[path.as_path()], 8);
            assert!(
                decoded.is_err(),
                "{name}, cut to {cut} of {} bytes, was decoded",
                bytes.len()
            );
        }
        variants.push(name.as_str());
    }
    assert_eq!(variants.len(), 8, "{variants:?}");
}

/// The same JPEG variants decode close to PIL's pixels (`convert("RGB")`, greyscale and
/// CMYK included): `image`'s decoder reconstructs a little differently from libjpeg, within
/// a few levels, never by a wrong colour, a shifted block or a level added everywhere.
/// Measured on these 44x44 files, in levels of 255: in the whole 16x16 blocks (the first
/// 32x32 pixels; a CIFAR image is whole blocks) at most 3 off, 0.38 on average. Past them,
/// where a colour image with subsampled chroma (4:2:0) ends inside a block, up to 15 off
/// (blue, in the last column: the two upsample the chroma differently at the edge), 0.46 on
/// average over the whole image; without subsampling (4:4:4, grey, CMYK), at most 2 off
/// anywhere and 0.014 on average.
#[test]
fn jpegs_decode_close_to_pils_pixels() {
    // (region, max, mean) bounds: the whole blocks, then the whole image.
    let bounds = |name: &str| match name {
        "optimized_444" | "grey" | "cmyk" => [(32, 2, 0.05), (44, 2, 0.05)],
        _ => [(32, 4, 0.45), (44, 16, 0.55)],
    };
    let fixture = common::fixture("jpeg_files");
    let tmp = TempDir::new("jpegpixels");
    let mut variants = Vec::new();
    for (name, file) in &fixture.tensors {
        let Some(pixels) = fixture.tensors.get(&format!("{name}.pixels")) else {
            continue;
        };
        let expected = pixels.permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Int64);
        let side = pixels.size()[0];
        assert_eq!(pixels.size(), [side, side, 3], "{name}: a square image");
        let path = tmp.0.join(format!("{name}.jpg"));
        std::fs::write(&path, Vec::<u8>::try_from(file).unwrap()).unwrap();
        let decoded = decode_images(&[path.as_path()], side as u32)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let error = (decoded.to_kind(Kind::Int64) - expected).abs();
        let bounds = bounds(name);
        assert_eq!(
            side, bounds[1].0,
            "{name}: the side the bounds were measured on"
        );
        for (region, max_bound, mean_bound) in bounds {
            let error = error.narrow(2, 0, region).narrow(3, 0, region);
            let max = error.max().int64_value(&[]);
            let mean = error
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[]);
            // With --nocapture: the figures the doc comment quotes.
            println!("{name}, first {region}x{region}: max error {max}, mean {mean:.3}");
            assert!(
                max <= max_bound && mean <= mean_bound,
                "{name}, first {region}x{region} pixels: max error {max}, mean {mean:.3} \
                 levels from PIL's pixels"
            );
        }
        variants.push(name.as_str());
    }
    assert_eq!(variants.len(), 8, "{variants:?}");
}

/// PNG variants (`png_reference.py`) decode to PIL's pixels (16-bit grey: to its high
/// byte), also with their last 16 bytes cut off (the last data chunk's CRC, the IEND chunk),
/// and are refused where PIL refuses them, cut inside their image data.
#[test]
fn pngs_decode_to_pils_pixels_and_are_refused_where_pil_refuses_them_cut() {
    let fixture = common::fixture("png_files");
    let tmp = TempDir::new("pngfixture");
    let mut variants = Vec::new();
    for (name, file) in &fixture.tensors {
        let Some(pixels) = fixture.tensors.get(&format!("{name}.pixels")) else {
            continue;
        };
        let expected = pixels.permute([2, 0, 1]).unsqueeze(0);
        let side = pixels.size()[0] as u32;
        let bytes = Vec::<u8>::try_from(file).unwrap();
        let path = tmp.0.join(format!("{name}.png"));
        let lengths = |key: &str| Vec::<i64>::try_from(&fixture.tensors[&format!("{name}.{key}")]);
        for length in [bytes.len() as i64]
            .into_iter()
            .chain(lengths("decoded").unwrap())
        {
            std::fs::write(&path, &bytes[..length as usize]).unwrap();
            match decode_images(&[path.as_path()], side) {
                Ok(images) => assert!(
                    images.equal(&expected),
                    "{name}, {length} of {} bytes: pixels differ from PIL's",
                    bytes.len()
                ),
                Err(e) => panic!("{name}, {length} of {} bytes: {e:#}", bytes.len()),
            }
        }
        for length in lengths("refused").unwrap() {
            std::fs::write(&path, &bytes[..length as usize]).unwrap();
            let Err(err) = decode_images(&[path.as_path()], side) else {
                panic!(
                    "{name}, cut to {length} of {} bytes, was decoded",
                    bytes.len()
                );
            };
            let err = format!("{err:#}");
            assert!(
                err.contains("ends before its image data does"),
                "{name}, {length}: {err}"
            );
        }
        variants.push(name.as_str());
    }
    assert_eq!(variants.len(), 12, "{variants:?}");

    // A palette that is not whole RGB entries (PIL drops the stray bytes) is refused by
    // name; the decoder would panic on it.
    let stray_byte: &[u8] = &[255, 0, 0, 7];
    let png = png_file(
        1,
        1,
        3,
        &[
            (b"PLTE", stray_byte),
            (b"IDAT", &zlib(&[0, 0])),
            (b"IEND", &[]),
        ],
    );
    let path = tmp.0.join("palette.png");
    std::fs::write(&path, &png).unwrap();
    let err = error_of(decode_images(&[path.as_path()], 1));
    assert!(
        err.contains("palette.png") && err.contains("not whole RGB entries"),
        "{err}"
    );
    // In a colour image the palette is only a suggestion, never used: decoded, as in PIL.
    let png = png_file(
        1,
        1,
        2,
        &[
            (b"PLTE", stray_byte),
            (b"IDAT", &zlib(&[0, 1, 2, 3])),
            (b"IEND", &[]),
        ],
    );
    std::fs::write(&path, &png).unwrap();
    let image = decode_images(&[path.as_path()], 1).unwrap();
    assert_eq!(Vec::<u8>::try_from(image.reshape([-1])).unwrap(), [1, 2, 3]);
}

/// The stored rows of an RGB image (`pixels[y][x]`) interlaced with Adam7: the rows of its
/// seven passes (each every `dx`-th pixel from `x0` of every `dy`-th row from `y0`), a pass
/// without pixels left out, each row after filter byte 0.
fn adam7_rows(pixels: &[Vec<[u8; 3]>]) -> Vec<u8> {
    let (height, width) = (pixels.len(), pixels[0].len());
    let passes = [
        (0, 8, 0, 8),
        (4, 8, 0, 8),
        (0, 4, 4, 8),
        (2, 4, 0, 4),
        (0, 2, 2, 4),
        (1, 2, 0, 2),
        (0, 1, 1, 2),
    ];
    let mut bytes = Vec::new();
    for (x0, dx, y0, dy) in passes {
        if x0 >= width || y0 >= height {
            continue;
        }
        for row in pixels[y0..].iter().step_by(dy) {
            bytes.push(0);
            bytes.extend(row[x0..].iter().step_by(dx).flatten());
        }
    }
    bytes
}

/// What PIL decodes or refuses at the edges of the PNG format (checked with Pillow 12:
/// `Image.open(...).convert("RGB")`): interlaced images so small that some of Adam7's passes
/// are empty decode to their pixels; a bad CRC on an ancillary chunk before the image data
/// (PIL: "cannot identify image file") or a bad zlib checksum after it ("broken data
/// stream") is refused; an image of exactly 2 x `Image.MAX_IMAGE_PIXELS` (178,956,970)
/// pixels is opened (with a warning), one pixel more is a `DecompressionBombError`.
#[test]
fn pngs_at_the_edges_of_the_format_are_decoded_or_refused_as_pil_does() {
    let tmp = TempDir::new("png-edges");
    let decode = |name: &str, bytes: &[u8], size: u32| {
        let path = tmp.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        decode_images(&[path.as_path()], size)
    };
    for side in 1..=9usize {
        let pixels: Vec<Vec<[u8; 3]>> = (0..side)
            .map(|y| {
                (0..side)
                    .map(|x| {
                        [
                            pixel(side, 0, y, x),
                            pixel(side, 1, y, x),
                            pixel(side, 2, y, x),
                        ]
                    })
                    .collect()
            })
            .collect();
        let png = png_file_interlaced(
            side as u32,
            side as u32,
            2,
            true,
            &[(b"IDAT", &zlib(&adam7_rows(&pixels))), (b"IEND", &[])],
        );
        let name = format!("interlaced_{side}.png");
        let decoded = decode(&name, &png, side as u32).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let expected: Vec<u8> = (0..3)
            .flat_map(|c| pixels.iter().flatten().map(move |rgb| rgb[c]))
            .collect();
        assert_eq!(u8s(&decoded), expected, "{name}");
    }

    // One pixel, (10, 20, 30).
    let rows = zlib(&[0, 10, 20, 30]);
    // gAMA 1/2.2, as an image editor writes it, but one bit of its CRC flipped.
    let gamma = 45_455u32.to_be_bytes();
    let mut png = png_file(
        1,
        1,
        2,
        &[(b"gAMA", &gamma), (b"IDAT", &rows), (b"IEND", &[])],
    );
    let decoded = decode("gamma.png", &png, 1).unwrap();
    assert_eq!(u8s(&decoded), [10, 20, 30]);
    let gamma_crc = png.windows(4).position(|w| w == b"gAMA").unwrap() + 8;
    png[gamma_crc] ^= 1;
    let err = error_of(decode("bad-crc.png", &png, 1));
    assert_contains(&err, "bad-crc.png");
    // The zlib stream's Adler-32 checksum (its last 4 bytes) with one bit flipped.
    let mut bad_checksum = rows.clone();
    *bad_checksum.last_mut().unwrap() ^= 1;
    let png = png_file(1, 1, 2, &[(b"IDAT", &bad_checksum), (b"IEND", &[])]);
    let err = error_of(decode("bad-checksum.png", &png, 1));
    assert_contains(&err, "bad-checksum.png");
    // The image data split in two chunks, the second only the checksum, which comes after
    // every row: decoded; with one bit of either chunk's CRC flipped, decoded too, as PIL
    // does, which checks no CRC from the image data on (`image` refuses it).
    let (data, checksum) = rows.split_at(rows.len() - 4);
    let mut png = png_file(
        1,
        1,
        2,
        &[(b"IDAT", data), (b"IDAT", checksum), (b"IEND", &[])],
    );
    assert_eq!(u8s(&decode("split.png", &png, 1).unwrap()), [10, 20, 30]);
    // The second IDAT's CRC (before IEND's 12 bytes), then the first's.
    for crc in [png.len() - 12 - 4, 8 + 25 + 8 + data.len()] {
        png[crc] ^= 1;
        assert_eq!(u8s(&decode("bad-crc.png", &png, 1).unwrap()), [10, 20, 30]);
    }

    // The pixel limit, told from the header: a few bytes of image data follow it (both
    // files are far short of their first row, so either is refused, for one reason or the
    // other).
    let limit = 178_956_970u32;
    let first_row = zlib(&[0; 11]);
    for (width, refused_by_size) in [(limit, false), (limit + 1, true)] {
        let png = png_file(width, 1, 0, &[(b"IDAT", &first_row), (b"IEND", &[])]);
        let err = error_of(decode("limit.png", &png, 8));
        assert_eq!(
            err.contains("pixels, more than vit decodes"),
            refused_by_size,
            "{width}x1: {err}"
        );
    }
}
