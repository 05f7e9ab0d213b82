//! The operator's side of canotify: seeding a local warehouse, running the
//! whole pipeline locally in one command, and the figures that show it
//! worked. The binary `canotify` is a thin shell over these modules.

pub mod demo;
pub mod ledger;
pub mod preflight;
pub mod seed;
