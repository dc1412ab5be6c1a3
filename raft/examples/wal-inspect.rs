//! Opens a data directory's write-ahead log read-only-ish (recovery may truncate a torn tail) and
//! prints what a node would start from. Usage: `cargo run -p shoal-raft --example wal-inspect -- DIR`.

use shoal_raft::wal::{Wal, WalOptions};

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: wal-inspect DIR");
        std::process::exit(2);
    };
    match Wal::open(&dir, WalOptions::default()) {
        Ok((_, state, recovery)) => {
            println!("recovery: {recovery}");
            println!("hard state: {:?}", state.hard_state);
            if let Some(s) = &state.snapshot {
                println!(
                    "snapshot: index {} term {} ({} bytes) membership {:?}",
                    s.meta.index,
                    s.meta.term,
                    s.data.len(),
                    s.meta.membership
                );
            }
            match (state.entries.first(), state.entries.last()) {
                (Some(a), Some(b)) => println!(
                    "entries: {} ({}..={}), last term {}",
                    state.entries.len(),
                    a.index,
                    b.index,
                    b.term
                ),
                _ => println!("entries: none"),
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
