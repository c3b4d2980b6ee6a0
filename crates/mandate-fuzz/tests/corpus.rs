//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/`) through the targets' checks,
//! so every input a fuzzing campaign kept stays a regression test.

use std::path::PathBuf;

#[test]
fn every_corpus_input_still_passes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut replayed = 0;
    for (name, check) in mandate_fuzz::TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(data) = std::fs::read(entry.path()) {
                check(&data);
                replayed += 1;
            }
        }
    }
    assert!(replayed > 0, "no corpus found under {}", root.display());
}
