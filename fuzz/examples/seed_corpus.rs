//! Writes the seed corpus of every target: `seed_corpus DIR` fills
//! `DIR/<target>/` with inputs built from the golden captures' UDP payloads
//! (see `ricochet_fuzz::seeds`). File names are content hashes, so running
//! it again over an existing corpus adds nothing twice.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: seed_corpus CORPUS_DIR");
        std::process::exit(2);
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, (target, input)) in ricochet_fuzz::seeds::capture_seeds() {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)
            .unwrap_or_else(|e| panic!("{}: {e}", target_dir.display()));
        let mut h = DefaultHasher::new();
        input.hash(&mut h);
        let path = target_dir.join(format!("seed-{:016x}", h.finish()));
        if !path.exists() {
            std::fs::write(&path, &input).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            *counts.entry(target).or_default() += 1;
        }
    }
    for (target, n) in counts {
        println!("{target}: {n} new seeds");
    }
}
