//! Token-based duplicate detection with a rolling hash.
//!
//! Each file becomes a sequence of normalized tokens: identifiers are one kind,
//! literals another, and keywords and operators stay as they are. Comments and line
//! structure are dropped. Every window of `min_tokens` consecutive tokens gets a
//! polynomial hash. A window is matched with the most recent earlier window of
//! equal hash and equal tokens; consecutive windows whose matches lie on the same
//! diagonal form one duplicate, reported as the two token ranges' lines. A match
//! within one file whose ranges overlap (a repetitive table, say) is not reported.
//!
//! `aiswa_reflector.duplicates` implements the same algorithm in Python; both must
//! return identical results.

use rustc_hash::FxHashMap;

use crate::languages::NormalizedToken;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const ROLLING_BASE: u64 = 1_000_003;

/// Hashes a normalized token's UTF-8 text with 64-bit FNV-1a.
pub fn token_hash(text: &str) -> u64 {
    text.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// Index of the earlier file in the input.
    pub file_a: usize,
    pub line_start_a: u32,
    pub line_end_a: u32,
    pub file_b: usize,
    pub line_start_b: u32,
    pub line_end_b: u32,
    /// The length of the duplicated token sequence.
    pub tokens: usize,
}

/// A run of consecutive matched windows: file `b` from window `start_b` matches file
/// `a` from window `start_a`, for `windows` windows.
struct Run {
    file_a: usize,
    start_a: usize,
    start_b: usize,
    windows: usize,
}

/// Find duplicated token sequences of at least `min_tokens` tokens, in the order in
/// which their later copy starts. `min_tokens` must be at least 1, and there must be
/// fewer than 2^32 files and tokens per file, because the index of windows stores
/// positions as u32 to halve its memory.
pub fn find_duplicates(files: &[Vec<NormalizedToken>], min_tokens: usize) -> Vec<Duplicate> {
    assert!(min_tokens >= 1, "min_tokens must be at least 1");
    assert!(
        u32::try_from(files.len()).is_ok()
            && files
                .iter()
                .all(|tokens| u32::try_from(tokens.len()).is_ok()),
        "more than u32::MAX files or tokens in a file"
    );
    let width = min_tokens;
    let top_power = (1..width).fold(1u64, |power, _| power.wrapping_mul(ROLLING_BASE));
    let windows: usize = files
        .iter()
        .map(|tokens| (tokens.len() + 1).saturating_sub(width))
        .sum();
    let mut latest: FxHashMap<u64, (u32, u32)> =
        FxHashMap::with_capacity_and_hasher(windows, Default::default());
    let mut duplicates = Vec::new();

    for (file_b, tokens) in files.iter().enumerate() {
        if tokens.len() < width {
            continue;
        }
        let mut hash = tokens[..width].iter().fold(0u64, |hash, token| {
            hash.wrapping_mul(ROLLING_BASE).wrapping_add(token.kind)
        });
        let mut run: Option<Run> = None;
        for start_b in 0..=tokens.len() - width {
            if start_b > 0 {
                hash = hash
                    .wrapping_sub(tokens[start_b - 1].kind.wrapping_mul(top_power))
                    .wrapping_mul(ROLLING_BASE)
                    .wrapping_add(tokens[start_b + width - 1].kind);
            }
            let partner = latest
                .insert(hash, (file_b as u32, start_b as u32))
                .map(|(file, start)| (file as usize, start as usize));
            let continues = match (&run, partner) {
                (Some(current), Some((file_a, start_a))) => {
                    current.file_a == file_a
                        && current.start_a + (start_b - current.start_b) == start_a
                        && files[file_a][start_a + width - 1].kind
                            == tokens[start_b + width - 1].kind
                }
                _ => false,
            };
            if continues {
                if let Some(current) = run.as_mut() {
                    current.windows += 1;
                }
                continue;
            }
            if let Some(finished) = run.take() {
                report(files, file_b, &finished, width, &mut duplicates);
            }
            if let Some((file_a, start_a)) = partner {
                let same = files[file_a][start_a..start_a + width]
                    .iter()
                    .zip(&tokens[start_b..start_b + width])
                    .all(|(left, right)| left.kind == right.kind);
                if same {
                    run = Some(Run {
                        file_a,
                        start_a,
                        start_b,
                        windows: 1,
                    });
                }
            }
        }
        if let Some(finished) = run.take() {
            report(files, file_b, &finished, width, &mut duplicates);
        }
    }
    duplicates
}

fn report(
    files: &[Vec<NormalizedToken>],
    file_b: usize,
    run: &Run,
    width: usize,
    duplicates: &mut Vec<Duplicate>,
) {
    let length = run.windows + width - 1;
    if run.file_a == file_b && run.start_a + length > run.start_b {
        return;
    }
    let a = &files[run.file_a];
    let b = &files[file_b];
    duplicates.push(Duplicate {
        file_a: run.file_a,
        line_start_a: a[run.start_a].line_start,
        line_end_a: a[run.start_a + length - 1].line_end,
        file_b,
        line_start_b: b[run.start_b].line_start,
        line_end_b: b[run.start_b + length - 1].line_end,
        tokens: length,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(kinds: &[&str]) -> Vec<NormalizedToken> {
        kinds
            .iter()
            .enumerate()
            .map(|(index, kind)| NormalizedToken {
                kind: token_hash(kind),
                line_start: index as u32 + 1,
                line_end: index as u32 + 1,
            })
            .collect()
    }

    #[test]
    fn copied_sequence_is_one_duplicate() {
        let a = tokens(&["a", "b", "c", "d", "e", "x"]);
        let b = tokens(&["y", "a", "b", "c", "d", "e"]);
        let found = find_duplicates(&[a, b], 3);
        assert_eq!(
            found,
            [Duplicate {
                file_a: 0,
                line_start_a: 1,
                line_end_a: 5,
                file_b: 1,
                line_start_b: 2,
                line_end_b: 6,
                tokens: 5,
            }]
        );
    }

    #[test]
    fn repetition_within_a_file_is_ignored() {
        let repeated = tokens(&["x", ","].repeat(20));
        assert!(find_duplicates(&[repeated], 4).is_empty());
    }

    #[test]
    fn fnv_hash_of_known_text() {
        assert_eq!(token_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(token_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
