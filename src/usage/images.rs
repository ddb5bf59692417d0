//! What an input image costs in prompt tokens, by model and by the image's size.
//!
//! The rules are the providers' published ones:
//! - OpenAI, "Images and vision" guide, section "Calculating costs": tile models fit the
//!   image in 2048×2048, scale its shortest side down to 768, and charge a base plus a fixed
//!   amount per 512 px tile (low detail: the base alone); patch models cover it with 32 px
//!   patches (at most 1536, scaling down to fit) and multiply by a per-model factor.
//! - Anthropic, "Vision" guide: about width × height / 750 tokens after fitting the long edge
//!   in 1568 px and the whole in about 1,600 tokens.
//!
//! The size comes from the image's own header when the request carries it inline (a base64
//! data URL or an Anthropic base64 source), read without decoding the picture. Otherwise
//! (a remote URL, an uploaded file id) the image is taken to be [`DEFAULT_SIZE`], and the
//! count is flagged inexact.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Size assumed for an image whose size is not in the request: a typical photo or
/// screenshot after client-side resizing.
pub const DEFAULT_SIZE: (u32, u32) = (1024, 1024);

/// How a model family charges for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Base tokens, plus `tile` per 512 px tile at high detail (and at `auto`).
    Tiles { base: u64, tile: u64 },
    /// One token per 32 px patch, times `percent` / 100; detail is ignored.
    Patches { percent: u64 },
    /// Anthropic: pixels / 750.
    Area,
}

/// Model-name prefixes and their rule; the first match wins, so longer prefixes come first.
/// Sources as in the module comment (OpenAI's tables: "Base tokens / Tile tokens" and
/// "Multiplier").
const RULES: &[(&str, Rule)] = &[
    // OpenAI patch models.
    ("gpt-4.1-mini", Rule::Patches { percent: 162 }),
    ("gpt-4.1-nano", Rule::Patches { percent: 246 }),
    ("gpt-5-mini", Rule::Patches { percent: 162 }),
    ("gpt-5-nano", Rule::Patches { percent: 246 }),
    ("o4-mini", Rule::Patches { percent: 172 }),
    // OpenAI tile models.
    (
        "gpt-4o-mini",
        Rule::Tiles {
            base: 2833,
            tile: 5667,
        },
    ),
    (
        "gpt-4o",
        Rule::Tiles {
            base: 85,
            tile: 170,
        },
    ),
    (
        "chatgpt-4o",
        Rule::Tiles {
            base: 85,
            tile: 170,
        },
    ),
    (
        "gpt-4.1",
        Rule::Tiles {
            base: 85,
            tile: 170,
        },
    ),
    (
        "gpt-4.5",
        Rule::Tiles {
            base: 85,
            tile: 170,
        },
    ),
    (
        "gpt-5",
        Rule::Tiles {
            base: 70,
            tile: 140,
        },
    ),
    (
        "o1",
        Rule::Tiles {
            base: 75,
            tile: 150,
        },
    ),
    (
        "o3",
        Rule::Tiles {
            base: 75,
            tile: 150,
        },
    ),
    (
        "computer-use-preview",
        Rule::Tiles {
            base: 65,
            tile: 129,
        },
    ),
    // Anthropic.
    ("claude", Rule::Area),
];

/// Rule for models not in [`RULES`]: GPT-4o's for the OpenAI format (compatible servers
/// mostly follow it), the area rule for the Anthropic format.
pub const OPENAI_DEFAULT: Rule = Rule::Tiles {
    base: 85,
    tile: 170,
};
pub const ANTHROPIC_DEFAULT: Rule = Rule::Area;

/// The rule for `model` (a provider prefix such as `openai/` is ignored), or `default`.
pub fn rule_for(model: &str, default: Rule) -> Rule {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    RULES
        .iter()
        .find(|(prefix, _)| m.starts_with(prefix))
        .map_or(default, |&(_, rule)| rule)
}

impl Rule {
    /// Tokens for one image of `width` × `height` pixels; `low` is OpenAI's `detail: low`.
    pub fn tokens(self, width: u32, height: u32, low: bool) -> u64 {
        let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
        match self {
            Rule::Tiles { base, .. } if low => base,
            Rule::Tiles { base, tile } => base + tile * tiles(w, h),
            Rule::Patches { percent } => (patches(w, h) * percent).div_ceil(100),
            Rule::Area => area_tokens(w, h),
        }
    }
}

/// A dimension in whole units of `unit` px, rounded up; a hair of float error is not a unit.
fn units(px: f64, unit: f64) -> u64 {
    (px / unit - 1e-6).ceil().max(1.0) as u64
}

/// 512 px tiles after fitting in 2048×2048 and scaling the shortest side down to 768
/// (small images are not enlarged).
fn tiles(mut w: f64, mut h: f64) -> u64 {
    let fit = (2048.0 / w.max(h)).min(1.0);
    w *= fit;
    h *= fit;
    let short = (768.0 / w.min(h)).min(1.0);
    units(w * short, 512.0) * units(h * short, 512.0)
}

/// 32 px patches, at most 1536: a larger image is scaled so that it fits in whole patches
/// under the cap, as OpenAI's worked example does (1800×2400 → 1056×1408 → 1452).
fn patches(w: f64, h: f64) -> u64 {
    const CAP: u64 = 1536;
    let raw = units(w, 32.0) * units(h, 32.0);
    if raw <= CAP {
        return raw;
    }
    let r = (32.0 * 32.0 * CAP as f64 / (w * h)).sqrt();
    let (pw, ph) = (w * r / 32.0, h * r / 32.0);
    let r = r * (pw.floor() / pw).min(ph.floor() / ph);
    (units(w * r, 32.0) * units(h * r, 32.0)).min(CAP)
}

/// Anthropic: fit the long edge in 1568 px and the image in about 1,600 tokens, then one
/// token per 750 pixels.
fn area_tokens(mut w: f64, mut h: f64) -> u64 {
    const MAX_EDGE: f64 = 1568.0;
    const MAX_TOKENS: f64 = 1600.0;
    let fit = (MAX_EDGE / w.max(h)).min(1.0);
    w *= fit;
    h *= fit;
    let tokens = (w * h / 750.0).min(MAX_TOKENS);
    (tokens - 1e-6).ceil().max(1.0) as u64
}

/// Width and height of a base64-encoded image, from its header. Decodes growing prefixes
/// so a PNG costs a few bytes and a JPEG with a large metadata block a few hundred KiB.
pub fn base64_size(data: &str) -> Option<(u32, u32)> {
    let data = data.trim();
    for prefix in [1 << 10, 1 << 14, 1 << 18, 1 << 22] {
        let whole = prefix >= data.len();
        let take = if whole { data.len() } else { prefix };
        let Ok(bytes) = STANDARD.decode(&data.as_bytes()[..take]) else {
            return None;
        };
        match imagesize::blob_size(&bytes) {
            Ok(size) => {
                let (w, h) = (
                    u32::try_from(size.width).ok()?,
                    u32::try_from(size.height).ok()?,
                );
                return (w > 0 && h > 0).then_some((w, h));
            }
            Err(imagesize::ImageError::IoError(_)) if !whole => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Width and height of the image in a `data:image/...;base64,` URL.
pub fn data_url_size(url: &str) -> Option<(u32, u32)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    meta.ends_with(";base64").then(|| base64_size(data))?
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The first bytes of a PNG of the given size: signature and IHDR chunk.
    pub(crate) fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    pub(crate) fn png_data_url(width: u32, height: u32) -> String {
        let mut bytes = png_header(width, height);
        bytes.resize(bytes.len() + 4000, 0x55);
        format!("data:image/png;base64,{}", STANDARD.encode(bytes))
    }

    /// A JPEG whose size sits behind a metadata block of `pad` bytes.
    fn jpeg(width: u16, height: u16, pad: usize) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        let mut left = pad;
        while left > 0 {
            let n = left.min(65_000);
            b.extend_from_slice(&[0xFF, 0xE1]);
            b.extend_from_slice(&((n + 2) as u16).to_be_bytes());
            b.resize(b.len() + n, 0);
            left -= n;
        }
        b.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    /// The providers' worked examples and tables.
    #[test]
    fn published_examples() {
        let cases = [
            // OpenAI, for gpt-4o: 1024² → 768² → 4 tiles; 2048×4096 → 768×1536 → 6 tiles.
            ("gpt-4o-2024-08-06", 1024, 1024, false, 765),
            ("gpt-4o", 2048, 4096, false, 1105),
            ("gpt-4o", 4096, 8192, true, 85),
            // Small images are not enlarged: 128×64 is one tile.
            ("gpt-4o", 128, 64, false, 85 + 170),
            ("openai/gpt-4o-mini", 1024, 1024, false, 2833 + 4 * 5667),
            ("gpt-4o-mini", 1024, 1024, true, 2833),
            ("o3", 1024, 1024, false, 75 + 4 * 150),
            // Patch models: 1024² is 1024 patches, 1800×2400 is scaled to 1452; times the
            // model's multiplier; detail makes no difference.
            ("gpt-4.1-mini", 1024, 1024, false, 1659),
            ("gpt-4.1-mini", 1024, 1024, true, 1659),
            (
                "gpt-4.1-nano",
                1800,
                2400,
                false,
                (1452 * 246u64).div_ceil(100),
            ),
            ("o4-mini", 1800, 2400, false, (1452 * 172u64).div_ceil(100)),
            // Anthropic's table: 200² ≈ 54, 1000² ≈ 1334, 1092² (the largest square kept as
            // is) ≈ 1590; larger images are scaled to about 1600.
            ("claude-sonnet-4-5", 200, 200, false, 54),
            ("claude-sonnet-4-5", 1000, 1000, false, 1334),
            ("claude-sonnet-4-5", 1092, 1092, false, 1590),
            ("claude-sonnet-4-5", 4000, 3000, false, 1600),
        ];
        for (model, w, h, low, expected) in cases {
            let rule = rule_for(model, OPENAI_DEFAULT);
            assert_eq!(
                rule.tokens(w, h, low),
                expected,
                "{model} {w}×{h} low={low}"
            );
        }
    }

    #[test]
    fn patch_counts_stay_under_the_cap() {
        for (w, h) in [
            (4000, 1474),
            (10_000, 10_000),
            (1, 50_000),
            (2048, 768),
            (3000, 31),
        ] {
            let p = patches(f64::from(w), f64::from(h));
            assert!(p <= 1536 && p > 0, "{w}×{h}: {p}");
        }
    }

    #[test]
    fn unknown_models_take_the_format_default() {
        assert_eq!(rule_for("llama-3.2-vision", OPENAI_DEFAULT), OPENAI_DEFAULT);
        assert_eq!(rule_for("some-model", ANTHROPIC_DEFAULT), ANTHROPIC_DEFAULT);
        assert_eq!(
            rule_for("gpt-5-mini-2025-08-07", OPENAI_DEFAULT),
            Rule::Patches { percent: 162 }
        );
        assert_eq!(
            rule_for("gpt-5-chat-latest", OPENAI_DEFAULT),
            Rule::Tiles {
                base: 70,
                tile: 140
            }
        );
    }

    #[test]
    fn reads_sizes_from_headers() {
        assert_eq!(data_url_size(&png_data_url(1024, 768)), Some((1024, 768)));
        let deep = jpeg(640, 480, 200_000);
        assert_eq!(base64_size(&STANDARD.encode(&deep)), Some((640, 480)));
        assert_eq!(
            base64_size(&STANDARD.encode(jpeg(33, 17, 0))),
            Some((33, 17))
        );
        assert_eq!(data_url_size("https://example.com/cat.png"), None);
        assert_eq!(data_url_size("data:image/png;base64,not base64!"), None);
        assert_eq!(data_url_size("data:text/plain,hello"), None);
        assert_eq!(base64_size(&STANDARD.encode(b"GIF89a")), None);
    }
}
