//! Running analyses on worker threads, in parallel, with panics contained.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use rustc_hash::FxHashMap;

use crate::languages::{self, NormalizedToken, Source};
use crate::model::FileMetrics;

/// Stack size of the worker threads. The walks use explicit stacks, but ruff's
/// parser recurses (growing its stack on the heap past a red zone) and a deep AST
/// is dropped recursively. The expression bound in `limits` keeps that depth below
/// about 100,000 nodes, which fits with room to spare.
const WORKER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// A file to analyse: its path and its content.
pub type InputFile = (String, Vec<u8>);

fn pools() -> &'static Mutex<FxHashMap<usize, Arc<ThreadPool>>> {
    static POOLS: OnceLock<Mutex<FxHashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(FxHashMap::default()))
}

/// Returns the shared thread pool with `threads` workers, 0 meaning one per logical CPU.
pub fn pool(threads: usize) -> Result<Arc<ThreadPool>, String> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        threads
    };
    let mut pools = pools()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(pool) = pools.get(&threads) {
        return Ok(Arc::clone(pool));
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(WORKER_STACK_BYTES)
        .thread_name(|index| format!("aiswa-core-{index}"))
        .build()
        .map_err(|error| format!("failed to start {threads} worker threads: {error}"))?;
    let pool = Arc::new(pool);
    pools.insert(threads, Arc::clone(&pool));
    Ok(pool)
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// Analyse one file; a panic becomes the file's error instead of unwinding further.
pub fn analyze_one(path: &str, source: Source<'_>) -> FileMetrics {
    contain_panic(path, || languages::for_path(path).analyze(path, source))
}

/// Runs `work`, turning a panic into a failed `FileMetrics` for `path`.
fn contain_panic(path: &str, work: impl FnOnce() -> FileMetrics) -> FileMetrics {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        FileMetrics::failed(
            path,
            format!(
                "internal error in aiswa_core (please report): {}",
                panic_message(&*payload)
            ),
        )
    })
}

/// Analyse `files` on `pool`, returning the results in input order.
pub fn analyze_many(pool: &ThreadPool, files: &[InputFile]) -> Vec<FileMetrics> {
    pool.install(|| {
        files
            .par_iter()
            .with_max_len(1)
            .map(|(path, content)| analyze_one(path, Source::Bytes(content)))
            .collect()
    })
}

/// Tokenizes each file for duplicate detection, in input order. A file that does not
/// tokenize (or whose tokenizer panics) has no tokens.
pub fn tokenize_many(pool: &ThreadPool, files: &[InputFile]) -> Vec<Vec<NormalizedToken>> {
    pool.install(|| {
        files
            .par_iter()
            .with_max_len(1)
            .map(|(path, content)| {
                catch_unwind(AssertUnwindSafe(|| {
                    languages::for_path(path).duplicate_tokens(Source::Bytes(content))
                }))
                .ok()
                .flatten()
                .unwrap_or_default()
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_becomes_the_file_error() {
        let result = contain_panic("a.py", || panic!("index out of bounds"));
        assert_eq!(result.path, "a.py");
        assert_eq!(
            result.error,
            "internal error in aiswa_core (please report): index out of bounds"
        );
        assert!(result.functions.is_empty());
    }

    #[test]
    fn formatted_panic_message_is_kept() {
        let line = 7;
        let result = contain_panic("b.py", || panic!("bad line {line}"));
        assert_eq!(
            result.error,
            "internal error in aiswa_core (please report): bad line 7"
        );
    }
}
