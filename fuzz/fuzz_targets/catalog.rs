//! `catalog.toml` files: labels of tools and resources, read on every policy reload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mandate_policy::Catalog;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Catalog::parse(text);
    }
});
